// Small shared pieces: cards, the server-error box, progress with cancel, token chips.

import type { ReactNode } from "react";
import type { RpcError } from "../api/client";
import { useElapsed } from "../api/useCall";
import { fmt, tok } from "../lib/color";

export function Card(props: {
  title: ReactNode;
  tip?: string;
  actions?: ReactNode;
  children: ReactNode;
  id?: string;
  className?: string;
}) {
  return (
    <section className={`card ${props.className ?? ""}`} id={props.id} aria-label={typeof props.title === "string" ? props.title : undefined}>
      <header className="card-head">
        <h2 title={props.tip}>{props.title}</h2>
        <div className="card-actions">{props.actions}</div>
      </header>
      <div className="card-body">{props.children}</div>
    </section>
  );
}

export function ErrorBox({ error, what }: { error?: RpcError; what?: string }) {
  if (!error) return null;
  return (
    <div className="error" role="alert" data-testid="server-error">
      <div className="error-head">
        {what ? `${what} failed` : "The server refused the request"} · <code>{error.code}</code>
        {error.requestId && <span className="muted"> · request {error.requestId}</span>}
      </div>
      <div className="error-msg">{error.message}</div>
    </div>
  );
}

export function Busy(props: {
  loading: boolean;
  started?: number;
  label: string;
  onCancel?: () => void;
  detail?: ReactNode;
  fraction?: number;
}) {
  const s = useElapsed(props.loading, props.started);
  if (!props.loading) return null;
  return (
    <div className="busy" role="status" aria-live="polite" data-testid="busy">
      <span className="spinner" aria-hidden />
      <span>
        {props.label} <span className="muted">{s.toFixed(1)} s</span>
      </span>
      {props.detail && <span className="muted">{props.detail}</span>}
      {props.fraction !== undefined && (
        <progress max={1} value={props.fraction} aria-label={`${props.label} progress`} />
      )}
      {props.onCancel && (
        <button className="btn small" onClick={props.onCancel} title="Cancel the call (Esc)">
          Cancel
        </button>
      )}
    </div>
  );
}

export function Chip({ token, score, tone }: { token: string; score?: number; tone?: "up" | "down" | "in" }) {
  return (
    <span className={`chip ${tone ?? ""}`} title={score !== undefined ? `${JSON.stringify(token)}: ${fmt(score)}` : JSON.stringify(token)}>
      <span className="tok">{tok(token)}</span>
      {score !== undefined && <span className="chip-score">{fmt(score, 2)}</span>}
    </span>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="empty">{children}</div>;
}

/** Comma/newline separated list input for token lists: keeps leading spaces (" Mary"). */
export function splitList(text: string): string[] {
  return text.split("|").filter((t) => t.length > 0);
}
