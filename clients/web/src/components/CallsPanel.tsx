// The request / response panel: every RPC the page made, with its JSON, duration and outcome.

import { useEffect, useState } from "react";
import { clearCalls, subscribeCalls, type CallRecord } from "../api/client";

const MAX_CHARS = 200_000;

function pretty(v: unknown): string {
  const s = JSON.stringify(v, null, 2) ?? "null";
  return s.length > MAX_CHARS ? `${s.slice(0, MAX_CHARS)}\n… (${s.length - MAX_CHARS} more characters)` : s;
}

export function CallsPanel({ open, onClose }: { open: boolean; onClose: () => void }) {
  const [calls, setCalls] = useState<CallRecord[]>([]);
  const [sel, setSel] = useState<number | null>(null);
  useEffect(() => subscribeCalls(setCalls), []);
  if (!open) return null;
  const cur = calls.find((c) => c.id === sel) ?? calls[0];
  return (
    <aside className="calls" aria-label="Requests and responses" data-testid="calls-panel">
      <header className="calls-head">
        <strong>Requests / responses</strong>
        <span className="muted">gRPC-Web, shown as JSON</span>
        <span className="grow" />
        <button className="btn small" onClick={clearCalls}>
          Clear
        </button>
        <button className="btn small" onClick={onClose} title="Close (Esc)">
          Close
        </button>
      </header>
      <div className="calls-body">
        <ul className="calls-list">
          {calls.map((c) => (
            <li key={c.id}>
              <button className={`call ${cur?.id === c.id ? "sel" : ""}`} onClick={() => setSel(c.id)}>
                <span className={`dot ${c.status}`} aria-label={c.status} />
                <span className="call-method">{c.method}</span>
                <span className="muted">{c.ms !== undefined ? `${c.ms.toFixed(0)} ms` : "…"}</span>
              </button>
            </li>
          ))}
          {!calls.length && <li className="muted pad">No calls yet.</li>}
        </ul>
        {cur && (
          <div className="calls-json">
            {cur.error && <div className="error-msg">{cur.error}</div>}
            <h3>Request</h3>
            <pre>{pretty(cur.request())}</pre>
            <h3>Response{cur.responses.length > 1 ? `s (${cur.responses.length} messages)` : ""}</h3>
            <pre>{pretty(cur.responses.length === 1 ? cur.responses[0]() : cur.responses.map((r) => r()))}</pre>
          </div>
        )}
      </div>
    </aside>
  );
}
