// The app shell: top bar (views, server, token, request/response panel) and the view chosen by
// the URL's `view` key (debugger when absent), so every page is one static index.html.

import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { getToken, serverUrl, setToken } from "./api/client";
import { useServerInfo } from "./api/serverInfo";
import { CallsPanel } from "./components/CallsPanel";
import { AttentionPage } from "./pages/AttentionPage";
import { DebuggerPage } from "./pages/Debugger";
import { NodePage } from "./pages/NodePage";
import { PatchPage } from "./pages/PatchPage";
import { href, onLinkClick, useQuery } from "./lib/url";
import "./styles.css";

const VIEWS = {
  debugger: { label: "Debugger", page: DebuggerPage },
  node: { label: "Node", page: NodePage },
  attention: { label: "Attention", page: AttentionPage },
  patch: { label: "Patching", page: PatchPage },
} as const;
type View = keyof typeof VIEWS;

function App() {
  const q = useQuery();
  const v = (q.get("view") ?? "debugger") as View;
  const view: View = v in VIEWS ? v : "debugger";
  const Page = VIEWS[view].page;
  const [calls, setCalls] = useState(false);
  const [tokenOpen, setTokenOpen] = useState(false);
  const info = useServerInfo();
  useEffect(() => {
    document.title = `TDB · ${VIEWS[view].label}`;
  }, [view]);
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") setCalls(false);
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);
  const keep = { prompt: q.get("prompt") ?? undefined, model: q.get("model") ?? undefined };
  return (
    <>
      <nav className="topbar">
        <span className="brand" title="Transformer Debugger over gRPC-Web">
          TDB
        </span>
        {(["debugger", "attention", "patch"] as View[]).map((k) => (
          <a key={k} className={`navlink ${view === k ? "active" : ""}`} href={href(k === "debugger" ? keep : { view: k, ...keep })} onClick={onLinkClick}>
            {VIEWS[k].label}
          </a>
        ))}
        {view === "node" && <span className="navlink active">Node</span>}
        <span className="grow" />
        <span className="muted small" title={`gRPC-Web endpoint: ${serverUrl()}`} data-testid="server-status">
          {info.data ? `tdb ${info.data.version} · ${info.data.models.map((m) => `${m.name} (${m.device})`).join(", ")}` : info.error ? `server: ${info.error.code}` : "connecting…"}
        </span>
        {(info.data?.features?.auth || info.error?.code === "UNAUTHENTICATED" || getToken()) && (
          <button className="btn small ghost" onClick={() => setTokenOpen(!tokenOpen)}>
            Token{getToken() ? " ✓" : ""}
          </button>
        )}
        <button className={`btn small ${calls ? "primary" : "ghost"}`} onClick={() => setCalls(!calls)} data-testid="calls-toggle" title="Show every RPC's request and response as JSON">
          Requests / responses
        </button>
      </nav>
      {tokenOpen && (
        <form
          className="tokenbar"
          onSubmit={(e) => {
            e.preventDefault();
            const t = new FormData(e.currentTarget).get("token");
            setToken(String(t ?? ""));
            window.location.reload();
          }}
        >
          <label>
            Bearer token (kept in this tab's session storage, never in the URL){" "}
            <input name="token" type="password" defaultValue={getToken()} autoComplete="off" />
          </label>
          <button className="btn small primary">Save</button>
        </form>
      )}
      <main className={calls ? "with-calls" : ""}>
        <Page key={view} />
      </main>
      <CallsPanel open={calls} onClose={() => setCalls(false)} />
    </>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
