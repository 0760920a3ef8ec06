// The debugger page (TDB's main page): inference parameters, logits, token heatmap, node table.
// Everything is in the URL; opening a link with a prompt runs it.

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { api } from "../api/client";
import { useServerInfo } from "../api/serverInfo";
import { useCall } from "../api/useCall";
import { Busy, Card, Empty, ErrorBox } from "../components/ui";
import type { AttributeResponse } from "../gen/tdb/v1/attribution_pb";
import { tok } from "../lib/color";
import { type Ablation, formatAblation, HAS_KEY_POSITIONS, keyKind, parseSelector, shortLabel } from "../lib/nodekey";
import {
  attributeRequest,
  DEFAULTS,
  interventions,
  readState,
  runNames,
  runSignature,
  type DebuggerState,
  type ThroughName,
} from "../lib/state";
import { navigate, useQuery, withParams } from "../lib/url";
import { fetchLogits, type LogitsResult } from "./logits";
import { LogitsCard } from "./LogitsCard";
import { METRICS, NodeTable, type MetricId, type Sort } from "./NodeTable";
import { HEATMAP_TOP_K, TokenHeatmapCard } from "./TokenHeatmapCard";

/** Run timings for the benchmark: window.__tdb.runs[i] = {start, tableDrawn}. */
declare global {
  interface Window {
    __tdb?: { runs: { start: number; tableDrawn?: number }[] };
  }
}
window.__tdb ??= { runs: [] };

const join = (xs: string[]) => xs.join("|");
const split = (s: string) => s.split("|").filter((x) => x.length > 0);

function readSort(q: URLSearchParams): Sort {
  const m = (q.get("sort") ?? "direct_effect") as MetricId;
  const metric = METRICS.some((x) => x.id === m) ? m : "direct_effect";
  const r = q.get("sortrun") ?? "0";
  return { metric, run: r === "diff" ? "diff" : Number(r) || 0, asc: q.get("dir") === "asc" };
}

export function DebuggerPage() {
  const q = useQuery();
  const s = readState(q);
  const sig = runSignature(s);
  const info = useServerInfo();
  const attr = useCall<AttributeResponse>();
  const logits = useCall<LogitsResult>();
  const heat = useCall<AttributeResponse>();
  const [formError, setFormError] = useState<string>();
  const [runId, setRunId] = useState(-1);

  const run = useCallback(
    (st: DebuggerState) => {
      setFormError(undefined);
      let req;
      try {
        req = attributeRequest(st);
      } catch (e) {
        setFormError((e as Error).message);
        attr.reset();
        logits.reset();
        return;
      }
      const id = window.__tdb!.runs.push({ start: performance.now() }) - 1;
      setRunId(id);
      void attr.run((signal) => api.attribution.attribute(req, { signal }));
      void logits.run((signal) => fetchLogits(st, signal));
    },
    [attr.run, logits.run], // eslint-disable-line react-hooks/exhaustive-deps
  );

  // a URL with a prompt runs its query (on load, on Run, on back/forward, on an action)
  useEffect(() => {
    if (s.prompt) run(s);
  }, [sig]); // eslint-disable-line react-hooks/exhaustive-deps

  // the heatmap (one more Attribute, top/bottom 1000 nodes) runs with each run while it is on
  useEffect(() => {
    if (!s.heat || !s.prompt || runId < 0) return heat.reset();
    try {
      const req = attributeRequest(s, { topK: HEATMAP_TOP_K, nodeTokens: 0 });
      void heat.run((signal) => api.attribution.attribute(req, { signal }));
    } catch {
      /* the form error is shown by run() */
    }
  }, [runId, s.heat]); // eslint-disable-line react-hooks/exhaustive-deps

  // benchmark: the table is drawn once React committed this run's rows
  useEffect(() => {
    const r = window.__tdb!.runs[runId];
    if (attr.data && !attr.loading && r && r.tableDrawn === undefined) requestAnimationFrame(() => (r.tableDrawn = performance.now()));
  }, [attr.data, attr.loading, runId]);

  const cancelAll = useCallback(() => {
    attr.cancel();
    logits.cancel();
    heat.cancel();
  }, [attr.cancel, logits.cancel, heat.cancel]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") cancelAll();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [cancelAll]);

  const set = (updates: Record<string, string | string[] | undefined>, replace = false) => navigate(withParams(q, updates), replace);
  const names = runNames(s);
  const sort = readSort(q);
  const linkParams = {
    prompt: s.prompt,
    prompt2: s.prompt2 || undefined,
    target: s.target,
    distractor: s.distractor,
    model: s.model || undefined,
    abl: s.ablations.map(formatAblation),
  };
  const ablatedKeys = useMemo(() => new Set(s.ablations.map((a) => a.selector)), [sig]); // eslint-disable-line react-hooks/exhaustive-deps
  const models = info.data?.models ?? [];
  const model = models.find((m) => m.name === s.model) ?? models.find((m) => m.isDefault) ?? models[0];
  const tokens = attr.data?.prompts[0]?.tokens;
  const anyLoading = attr.loading || logits.loading || heat.loading;

  const addAblation = (a: Ablation) => {
    if (s.ablations.some((x) => formatAblation(x) === formatAblation(a))) return;
    set({ abl: [...s.ablations, a].map(formatAblation) });
  };

  return (
    <div className="page debugger">
      <ParamsCard
        s={s}
        modelNames={models.map((m) => m.name)}
        defaultModel={info.data?.defaultModel}
        saes={model?.saes.map((x) => x.id) ?? []}
        infoError={info.error}
        onRun={(st) => {
          const url = withParams(q, {
            prompt: st.prompt,
            prompt2: st.prompt2 || undefined,
            target: st.target,
            distractor: st.distractor,
            k: st.k !== DEFAULTS.k ? String(st.k) : undefined,
          });
          if (runSignature(readState(new URLSearchParams(url.split("?")[1]))) === sig) run(readState(new URLSearchParams(url.split("?")[1])));
          else navigate(url);
        }}
        onSet={set}
        onAdd={addAblation}
        formError={formError}
        tokens={tokens}
        busy={
          <Busy
            loading={anyLoading}
            started={attr.started ?? logits.started ?? heat.started}
            label={attr.loading ? "Attribute" : logits.loading ? "Logits" : "Token heatmap"}
            onCancel={cancelAll}
          />
        }
      />
      {(attr.cancelled || logits.cancelled) && !anyLoading && <div className="note">Cancelled. Press Run to run the query again.</div>}
      <ErrorBox error={attr.error} what="Attribute" />
      {logits.error?.message !== attr.error?.message && <ErrorBox error={logits.error} what="Logits (Forward/Ablate)" />}
      {!s.prompt ? (
        <Empty>Type a prompt and press Run (Ctrl+Enter).</Empty>
      ) : (
        <>
          <div className="row2">
            <LogitsCard
              data={logits.data}
              lossValues={attr.data?.lossValues}
              lossLabel={s.trace ? `Traced: ${shortLabel(s.trace)}` : "Logit difference (target − distractor)"}
              tokens={tokens}
            />
            <Card
              title="Tokens"
              tip="The prompt's tokens as the model saw them; the token of interest is outlined."
              actions={
                <label className="switch" title="Per-token summed activation × gradient (one more Attribute call, top/bottom 1000 nodes)">
                  <input type="checkbox" checked={s.heat} onChange={(e) => set({ heat: e.target.checked ? "1" : undefined }, true)} /> Token heatmap
                </label>
              }
            >
              {attr.data ? (
                <PromptTokens data={attr.data} names={names.names} />
              ) : (
                <Empty>…</Empty>
              )}
              {attr.data && (
                <div className="muted small pad-t">
                  {Number(attr.data.nodesRanked).toLocaleString()} nodes ranked · {attr.data.rows.length} rows · bias direct effect{" "}
                  {attr.data.biasDirectEffect.map((v) => v.toFixed(3)).join(" / ")}
                </div>
              )}
            </Card>
          </div>
          {s.heat && <TokenHeatmapCard data={heat.data} run={runId} />}
          <ErrorBox error={heat.error} what="Token heatmap (Attribute)" />
          <Card
            title="Node table"
            id="nodes"
            tip="The union of each column's top-k and bottom-k (top only for activation and write magnitude) over every layer, position and node family. Sorted by direct effect by default."
            actions={
              attr.data && (
                <span className="muted small">
                  {names.names.length > 1 ? `${names.names.join(" / ")} / Diff (${names.names[1]} − ${names.names[0]})` : ""}
                </span>
              )
            }
          >
            {attr.data ? (
              <NodeTable
                data={attr.data}
                runs={names.names}
                sort={sort}
                onSort={(x) => set({ sort: x.metric, sortrun: String(x.run), dir: x.asc ? "asc" : undefined }, true)}
                actions={{
                  ablate: (key) => addAblation({ selector: key, op: { kind: "zero" }, backward: false }),
                  trace: (key, through?: ThroughName) => set({ trace: key, through }),
                }}
                saeFilter={s.sae}
                linkParams={linkParams}
                ablated={ablatedKeys}
                runId={runId}
              />
            ) : (
              <Empty>{attr.loading ? "Ranking nodes…" : "No table yet."}</Empty>
            )}
          </Card>
        </>
      )}
    </div>
  );
}

function PromptTokens({ data, names }: { data: AttributeResponse; names: string[] }) {
  const same = data.prompts.length > 1 && data.prompts[1].tokens.join("\u0000") === data.prompts[0].tokens.join("\u0000");
  const shown = same ? data.prompts.slice(0, 1) : data.prompts;
  return (
    <>
      {shown.map((p, r) => (
        <div key={r} className="tokrow" data-testid={`tokens-${r}`}>
          {shown.length > 1 && <span className="muted small">{names[r]}</span>}
          {p.tokens.map((t, i) => (
            <span key={i} className={`tokcell ${i === data.lossPosition ? "hl" : ""}`} title={`${i}: id ${p.tokenIds[i]}`}>
              {tok(t)}
              <sub>{i}</sub>
            </span>
          ))}
        </div>
      ))}
    </>
  );
}

function ParamsCard(props: {
  s: DebuggerState;
  modelNames: string[];
  defaultModel?: string;
  saes: string[];
  infoError?: { code: string; message: string };
  onRun: (s: DebuggerState) => void;
  onSet: (u: Record<string, string | string[] | undefined>, replace?: boolean) => void;
  onAdd: (a: Ablation) => void;
  formError?: string;
  busy: React.ReactNode;
  tokens?: string[];
}) {
  const { s } = props;
  const [prompt, setPrompt] = useState(s.prompt || DEFAULTS.prompt);
  const [prompt2, setPrompt2] = useState(s.prompt2);
  const [two, setTwo] = useState(!!s.prompt2);
  const [target, setTarget] = useState(join(s.target));
  const [distractor, setDistractor] = useState(join(s.distractor));
  const [k, setK] = useState(String(s.k));
  const promptRef = useRef<HTMLTextAreaElement>(null);
  // the URL wins when it changes (back/forward, links)
  useEffect(() => {
    setPrompt(s.prompt || DEFAULTS.prompt);
    setPrompt2(s.prompt2);
    setTwo(!!s.prompt2);
    setTarget(join(s.target));
    setDistractor(join(s.distractor));
    setK(String(s.k));
  }, [s.prompt, s.prompt2, join(s.target), join(s.distractor), s.k]); // eslint-disable-line react-hooks/exhaustive-deps

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "/" && !(e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement)) {
        e.preventDefault();
        promptRef.current?.focus();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);

  const submit = () =>
    props.onRun({
      ...s,
      prompt,
      prompt2: two ? prompt2 : "",
      target: split(target),
      distractor: split(distractor),
      k: Math.max(1, Math.min(1000, Number(k) || DEFAULTS.k)),
    });
  const onKeyDown = (e: React.KeyboardEvent) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      submit();
    }
  };
  const approx = interventions(s).approximated;

  return (
    <Card title="Inference parameters" id="params" actions={props.busy}>
      {props.infoError && <div className="error small">ServerInfo failed: {props.infoError.code}: {props.infoError.message}</div>}
      <form
        className="params"
        onSubmit={(e) => {
          e.preventDefault();
          submit();
        }}
      >
        <div className="field-row">
          <label className="field">
            <span title="Model (from ServerInfo)">Model</span>
            <select value={s.model} onChange={(e) => props.onSet({ model: e.target.value || undefined })} data-testid="model">
              <option value="">{props.defaultModel ? `${props.defaultModel} (default)` : "default"}</option>
              {props.modelNames
                .filter((m) => m !== props.defaultModel)
                .map((m) => (
                  <option key={m} value={m}>
                    {m}
                  </option>
                ))}
            </select>
          </label>
          <label className="field">
            <span title="Rank this SAE's latents in the node table too (TDB's 'use autoencoders' switch)">SAE latents</span>
            <select value={s.sae} onChange={(e) => props.onSet({ sae: e.target.value || undefined })} data-testid="sae">
              <option value="">none</option>
              {props.saes.map((x) => (
                <option key={x} value={x}>
                  {x}
                </option>
              ))}
            </select>
          </label>
          <label className="field narrow">
            <span title="Top-k and bottom-k per column of the node table">k</span>
            <input value={k} onChange={(e) => setK(e.target.value)} inputMode="numeric" onKeyDown={onKeyDown} />
          </label>
        </div>
        <div className="prompts">
          <label className="field grow">
            <span>{two ? "Left prompt" : "Prompt"}</span>
            <textarea ref={promptRef} rows={2} value={prompt} onChange={(e) => setPrompt(e.target.value)} onKeyDown={onKeyDown} data-testid="prompt" />
          </label>
          {two && (
            <>
              <button
                type="button"
                className="btn swap"
                title="Swap the prompts"
                onClick={() => {
                  setPrompt(prompt2);
                  setPrompt2(prompt);
                }}
              >
                ⇄
              </button>
              <label className="field grow">
                <span title="Second prompt (same number of tokens); ranked with aligned nodes">Right prompt</span>
                <textarea rows={2} value={prompt2} onChange={(e) => setPrompt2(e.target.value)} onKeyDown={onKeyDown} data-testid="prompt2" />
              </label>
            </>
          )}
        </div>
        <div className="field-row">
          <label className="field">
            <span title="Target tokens, separated by |; each must be one token (leading spaces matter)">Target tokens</span>
            <input value={target} onChange={(e) => setTarget(e.target.value)} onKeyDown={onKeyDown} data-testid="target" className="mono" />
          </label>
          <label className="field">
            <span title="Distractor tokens, separated by |; each must be one token">Distractor tokens</span>
            <input value={distractor} onChange={(e) => setDistractor(e.target.value)} onKeyDown={onKeyDown} data-testid="distractor" className="mono" />
          </label>
          <label className="switch">
            <input type="checkbox" checked={two} onChange={(e) => setTwo(e.target.checked)} /> Second prompt
          </label>
          <span className="grow" />
          <button type="submit" className="btn primary" data-testid="run" title="Run (Ctrl+Enter)">
            Run
          </button>
        </div>
      </form>
      {props.formError && (
        <div className="error" role="alert" data-testid="form-error">
          {props.formError}
        </div>
      )}
      <div className="subgrid">
        <Ablations s={s} onSet={props.onSet} onAdd={props.onAdd} approx={approx} />
        <Trace s={s} onSet={props.onSet} />
      </div>
    </Card>
  );
}

function Ablations(props: {
  s: DebuggerState;
  onSet: (u: Record<string, string | string[] | undefined>) => void;
  onAdd: (a: Ablation) => void;
  approx: boolean;
}) {
  const [sel, setSel] = useState("");
  const [op, setOp] = useState<"zero" | "set">("zero");
  const [val, setVal] = useState("0");
  const [bwd, setBwd] = useState(false);
  const [err, setErr] = useState<string>();
  const list = props.s.ablations;
  const add = () => {
    try {
      parseSelector(sel);
    } catch (e) {
      setErr((e as Error).message);
      return;
    }
    if (op === "set" && !isFinite(Number(val))) {
      setErr(`not a number: ${val}`);
      return;
    }
    setErr(undefined);
    props.onAdd({ selector: sel.trim(), op: op === "zero" ? { kind: "zero" } : { kind: "set", value: Number(val) }, backward: bwd });
    setSel("");
  };
  return (
    <div className="sub" data-testid="ablations">
      <h3 title="Interventions applied to a copy of the prompt (baseline vs ablated), or to both prompts. Stored in the URL as abl=[bwd:]SELECTOR[=VALUE].">Active ablations</h3>
      {list.length ? (
        <table className="grid compact">
          <thead>
            <tr>
              <th>Node / selector</th>
              <th>Value</th>
              <th>Pass</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.map((a, i) => {
              let kind = "";
              try {
                kind = keyKind(a.selector);
              } catch {
                kind = "selector";
              }
              return (
                <tr key={i} data-abl={formatAblation(a)}>
                  <td>
                    <code>{a.selector}</code>
                    {kind === "attn_head_pair" && !HAS_KEY_POSITIONS && (
                      <span className="warn small" title="Intervention.key_positions is not in the contract yet: the whole head is zeroed at the query position">
                        {" "}
                        ≈ whole head at query
                      </span>
                    )}
                  </td>
                  <td>{a.op.kind === "zero" ? "0" : a.op.value}</td>
                  <td>{a.backward ? "backward" : "forward"}</td>
                  <td>
                    <button
                      className="btn small"
                      aria-label={`Remove ${a.selector}`}
                      onClick={() => props.onSet({ abl: list.filter((_, j) => j !== i).map(formatAblation) })}
                    >
                      ✕
                    </button>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      ) : (
        <div className="muted small">None. Add one here or with a row's Ablate action.</div>
      )}
      <form
        className="inline-form"
        onSubmit={(e) => {
          e.preventDefault();
          add();
        }}
      >
        <input
          className="mono grow"
          placeholder="blocks.0.attn.hook_pattern[0,pos=14]"
          value={sel}
          onChange={(e) => setSel(e.target.value)}
          aria-label="Selector to ablate"
          data-testid="ablation-selector"
        />
        <select value={op} onChange={(e) => setOp(e.target.value as "zero" | "set")} aria-label="Operation">
          <option value="zero">zero</option>
          <option value="set">set to</option>
        </select>
        {op === "set" && <input className="narrow" value={val} onChange={(e) => setVal(e.target.value)} aria-label="Value" />}
        <select value={bwd ? "bwd" : "fwd"} onChange={(e) => setBwd(e.target.value === "bwd")} aria-label="Pass">
          <option value="fwd">forward</option>
          <option value="bwd">backward</option>
        </select>
        <button className="btn" type="submit" data-testid="ablation-add">
          Add
        </button>
        {list.length > 0 && (
          <button className="btn ghost" type="button" onClick={() => props.onSet({ abl: undefined })}>
            Clear all
          </button>
        )}
      </form>
      {err && <div className="error small">{err}</div>}
      {props.approx && <div className="warn small">Head-pair ablations zero the whole head at the query position until the contract has Intervention.key_positions.</div>}
    </div>
  );
}

function Trace(props: { s: DebuggerState; onSet: (u: Record<string, string | string[] | undefined>) => void }) {
  const { s } = props;
  const [key, setKey] = useState(s.trace);
  const [through, setThrough] = useState<ThroughName>(s.through);
  useEffect(() => {
    setKey(s.trace);
    setThrough(s.through);
  }, [s.trace, s.through]);
  let kind = "";
  try {
    kind = s.trace ? keyKind(s.trace) : "";
  } catch {
    kind = "";
  }
  const isHead = kind === "attn_head" || kind === "attn_head_pair";
  return (
    <div className="sub" data-testid="trace">
      <h3 title="Attribute to an internal node instead of the logit difference: a neuron's or latent's pre-activation, a head's attention score (through Q, K or both) or its write (through V).">
        Trace upstream
      </h3>
      {s.trace ? (
        <div className="trace-now">
          Tracing <code>{s.trace}</code>
          {isHead && <> through <strong>{s.through.toUpperCase()}</strong></>}
          <button className="btn small" onClick={() => props.onSet({ trace: undefined, through: undefined })}>
            Stop tracing
          </button>
        </div>
      ) : (
        <div className="muted small">Off: the loss is the logit difference at the last token.</div>
      )}
      <form
        className="inline-form"
        onSubmit={(e) => {
          e.preventDefault();
          props.onSet({ trace: key.trim() || undefined, through: key.trim() ? through : undefined });
        }}
      >
        <input className="mono grow" placeholder="blocks.1.mlp.hook_post[42,pos=14]" value={key} onChange={(e) => setKey(e.target.value)} aria-label="Node key to trace" />
        <select value={through} onChange={(e) => setThrough(e.target.value as ThroughName)} aria-label="Through (heads)" title="Heads only">
          <option value="q">through Q</option>
          <option value="k">through K</option>
          <option value="qk">through Q and K</option>
          <option value="v">through V</option>
        </select>
        <button className="btn" type="submit">
          Trace
        </button>
      </form>
    </div>
  );
}
