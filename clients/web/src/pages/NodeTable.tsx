// The node table: TDB's four columns for every ranked node, one sub-column per run (and their
// difference), cells coloured by value relative to the column's largest magnitude. Every row
// expands to actions, stored explanations and token chips.

import { Fragment, useEffect, useMemo, useRef, useState } from "react";
import { api, toRpcError, type RpcError } from "../api/client";
import { Chip, ErrorBox } from "../components/ui";
import type { AttributeResponse, NodeRow } from "../gen/tdb/v1/attribution_pb";
import type { Explanation } from "../gen/tdb/v1/explain_pb";
import { diverging, fmt, inkFor, maxAbs, tok } from "../lib/color";
import { keyKind, nodeKey, parseKey, shortLabel, unitKey } from "../lib/nodekey";
import type { ThroughName } from "../lib/state";
import { href, onLinkClick } from "../lib/url";

export const METRICS = [
  {
    id: "activation",
    label: "Activation",
    tip: "Neuron post-activation; head-pair attention weight; head ‖z‖; latent value; embedding 1.",
  },
  {
    id: "write_magnitude",
    label: "Write magnitude",
    tip: "Size of what the node writes to the residual stream: neuron activation × ‖W_out[n]‖ (signed), head ‖write‖, latent value × ‖W_dec[i]‖, embedding ‖resid_pre₀‖. Loss-independent.",
  },
  {
    id: "direct_effect",
    label: "Direct effect",
    tip: "The node's write · the loss gradient at the final residual stream (the residual before the traced node when tracing), norm scale held constant: the path straight to the output. Default sort.",
  },
  {
    id: "total_effect",
    label: "Estimated total effect",
    tip: "Activation × gradient: first-order estimate of the loss change from removing the node, through every path.",
  },
] as const;
export type MetricId = (typeof METRICS)[number]["id"];

const FIELD: Record<MetricId, "activation" | "writeMagnitude" | "directEffect" | "totalEffect"> = {
  activation: "activation",
  write_magnitude: "writeMagnitude",
  direct_effect: "directEffect",
  total_effect: "totalEffect",
};

export interface Sort {
  metric: MetricId;
  /** run index, or "diff" */
  run: number | "diff";
  asc: boolean;
}

export function value(row: NodeRow, metric: MetricId, run: number | "diff"): number | undefined {
  const f = FIELD[metric];
  if (run === "diff") {
    if (row.values.length < 2) return undefined;
    return row.values[1][f] - row.values[0][f];
  }
  return row.values[run]?.[f];
}

export interface RowActions {
  ablate: (key: string) => void;
  trace: (key: string, through?: ThroughName) => void;
}

export function NodeTable(props: {
  data: AttributeResponse;
  runs: string[];
  sort: Sort;
  onSort: (s: Sort) => void;
  actions: RowActions;
  saeFilter: string;
  linkParams: Record<string, string | string[] | undefined>;
  ablated: Set<string>;
  runId: number;
}) {
  const { data, runs } = props;
  const two = runs.length > 1;
  const cols: (number | "diff")[] = two ? [0, 1, "diff"] : [0];
  const tokens = data.prompts[0]?.tokens ?? [];
  const tokens2 = data.prompts[1]?.tokens;
  const [open, setOpen] = useState<string | null>(null);

  const rows = useMemo(() => {
    const rs = data.rows.filter((r) => r.node?.family !== "sae_latent" || !props.saeFilter || r.node.sae === props.saeFilter);
    const { metric, run, asc } = props.sort;
    return [...rs].sort((a, b) => {
      const va = value(a, metric, run) ?? -Infinity;
      const vb = value(b, metric, run) ?? -Infinity;
      return asc ? va - vb : vb - va;
    });
  }, [data, props.sort, props.saeFilter]);

  // heads: the key positions of the same head at the same query position, from its pair rows
  const attendedTo = useMemo(() => {
    const m = new Map<string, { k: number; w: number }[]>();
    for (const r of data.rows) {
      const n = r.node!;
      if (n.family !== "attn_head_pair" || n.keyPosition === undefined) continue;
      const id = `${n.layer}/${n.index}/${n.position}`;
      m.set(id, [...(m.get(id) ?? []), { k: n.keyPosition, w: r.values[0]?.activation ?? 0 }]);
    }
    for (const v of m.values()) v.sort((a, b) => b.w - a.w);
    return m;
  }, [data]);

  const scales = useMemo(() => {
    const out: Record<string, number> = {};
    for (const m of METRICS) for (const c of cols) out[`${m.id}/${c}`] = maxAbs(rows.map((r) => value(r, m.id, c) ?? 0));
    return out;
  }, [rows]); // eslint-disable-line react-hooks/exhaustive-deps

  const tbody = useRef<HTMLTableSectionElement>(null);
  const onRowKey = (e: React.KeyboardEvent<HTMLTableRowElement>, key: string) => {
    if (e.target !== e.currentTarget) return;
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      setOpen(open === key ? null : key);
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp" || e.key === "j" || e.key === "k") {
      e.preventDefault();
      const all = Array.from(tbody.current?.querySelectorAll<HTMLTableRowElement>("tr.noderow") ?? []);
      const i = all.indexOf(e.currentTarget);
      all[Math.max(0, Math.min(all.length - 1, i + (e.key === "ArrowDown" || e.key === "j" ? 1 : -1)))]?.focus();
    } else if (e.key === "a") {
      props.actions.ablate(key);
    }
  };

  const header = (m: (typeof METRICS)[number], c: number | "diff") => {
    const active = props.sort.metric === m.id && props.sort.run === c;
    const label = c === "diff" ? "Diff" : two ? runs[c] : "";
    return (
      <th key={`${m.id}/${c}`} className={`num sortable ${active ? "sorted" : ""}`} aria-sort={active ? (props.sort.asc ? "ascending" : "descending") : "none"}>
        <button
          className="th-btn"
          data-sort={`${m.id}/${c}`}
          title={`${m.tip}${c === "diff" ? ` Diff = ${runs[1]} − ${runs[0]}.` : ""} Click to sort (again to reverse). Rows beyond the first k of another column may not be its top.`}
          onClick={() => props.onSort({ metric: m.id, run: c, asc: active ? !props.sort.asc : false })}
        >
          {two ? label : m.label}
          <span className="sort-ind">{active ? (props.sort.asc ? "▲" : "▼") : ""}</span>
        </button>
      </th>
    );
  };

  return (
    <div className="scroll-x">
      <table className="grid nodetable" data-testid="node-table" data-run-id={props.runId} data-rows={rows.length}>
        <thead>
          {two && (
            <tr>
              <th colSpan={3} />
              {METRICS.map((m) => (
                <th key={m.id} colSpan={cols.length} className="group" title={m.tip}>
                  {m.label}
                </th>
              ))}
            </tr>
          )}
          <tr>
            <th title="The node: a neuron, a head (at a query position; ← key position for a head pair), an SAE latent or a token's embedding. Click for its node page; click the row for actions.">
              Name
            </th>
            <th title="Heads: the key tokens the head attends to at this query (top by attention weight). Head pairs: their key token.">Attended to</th>
            <th title="The token the node acts at (the query token for heads); bold when it is the token of interest.">Attended from</th>
            {METRICS.map((m) => cols.map((c) => header(m, c)))}
          </tr>
        </thead>
        <tbody ref={tbody}>
          {rows.map((r) => {
            const n = r.node!;
            const key = nodeKey(n);
            const kind = keyKind(key);
            const isOpen = open === key;
            const toKeys =
              kind === "attn_head_pair"
                ? [{ k: n.keyPosition!, w: r.values[0]?.activation ?? 0 }]
                : kind === "attn_head"
                  ? (attendedTo.get(`${n.layer}/${n.index}/${n.position}`) ?? []).slice(0, 3)
                  : [];
            return (
              <Fragment key={key}>
                <tr
                  className={`noderow ${isOpen ? "open" : ""} ${props.ablated.has(key) ? "ablated" : ""}`}
                  tabIndex={0}
                  data-key={key}
                  data-kind={kind}
                  aria-expanded={isOpen}
                  onClick={(e) => {
                    if ((e.target as HTMLElement).closest("a,button")) return;
                    setOpen(isOpen ? null : key);
                  }}
                  onKeyDown={(e) => onRowKey(e, key)}
                >
                  <td className="name">
                    <span className={`kind k-${kind}`} title={kind} />
                    <a href={href({ view: "node", node: key, ...props.linkParams })} onClick={onLinkClick} title={key}>
                      {shortLabel(key)}
                    </a>
                  </td>
                  <td className="toks">
                    {toKeys.map(({ k }) => (
                      <span key={k} className="tok" title={`key position ${k}`}>
                        {tok(tokens[k] ?? "?")}
                        <sub>{k}</sub>
                      </span>
                    ))}
                  </td>
                  <td className={`toks ${n.position === data.lossPosition ? "focus" : ""}`}>
                    <span className="tok" title={`position ${n.position}`}>
                      {tok(tokens[n.position] ?? "?")}
                      <sub>{n.position}</sub>
                    </span>
                    {tokens2 && tokens2[n.position] !== tokens[n.position] && (
                      <span className="tok alt" title={`${runs[1]}: position ${n.position}`}>
                        {tok(tokens2[n.position] ?? "?")}
                      </span>
                    )}
                  </td>
                  {METRICS.map((m) =>
                    cols.map((c) => {
                      const v = value(r, m.id, c);
                      const s = scales[`${m.id}/${c}`];
                      return (
                        <td
                          key={`${m.id}/${c}`}
                          className="num"
                          data-col={`${m.id}/${c}`}
                          data-value={v}
                          style={{ background: v !== undefined ? diverging(v, s) : undefined, color: v !== undefined ? inkFor(v, s) : undefined }}
                        >
                          {fmt(v)}
                        </td>
                      );
                    }),
                  )}
                </tr>
                {isOpen && (
                  <tr className="detail">
                    <td colSpan={3 + METRICS.length * cols.length}>
                      <RowDetail row={r} nodeKeyText={key} actions={props.actions} linkParams={props.linkParams} />
                    </td>
                  </tr>
                )}
              </Fragment>
            );
          })}
        </tbody>
      </table>
      {!rows.length && <div className="empty">No nodes.</div>}
    </div>
  );
}

function RowDetail(props: {
  row: NodeRow;
  nodeKeyText: string;
  actions: RowActions;
  linkParams: Record<string, string | string[] | undefined>;
}) {
  const { row } = props;
  const key = props.nodeKeyText;
  const kind = keyKind(key);
  const unit = kind === "embedding" ? key : unitKey(key);
  const [expl, setExpl] = useState<{ list?: Explanation[]; error?: RpcError }>({});
  useEffect(() => {
    if (kind === "embedding") return;
    const c = new AbortController();
    api.explain
      .listExplanations({ node: unit, limit: 20 }, { signal: c.signal })
      .then((r) => setExpl({ list: r.explanations }))
      .catch((e) => !c.signal.aborted && setExpl({ error: toRpcError(e) }));
    return () => c.abort();
  }, [unit, kind]);
  const hasKey = parseKey(key).keyPosition !== undefined;
  const head = kind === "attn_head" || kind === "attn_head_pair";
  const layer = row.node?.layer;
  const explanations = expl.list ?? (row.explanation ? [row.explanation] : []);
  return (
    <div className="rowdetail">
      <div className="actions" role="group" aria-label="Actions">
        <strong className="muted">Actions</strong>
        <button
          className="btn"
          data-action="ablate"
          onClick={() => props.actions.ablate(key)}
          title={
            kind === "attn_head_pair"
              ? "Zero this head pair (until the contract has Intervention.key_positions, the whole head is zeroed at the query position)"
              : "Zero this node (a zero intervention on its key); shortcut: a on the row"
          }
        >
          Ablate
        </button>
        {(kind === "mlp_neuron" || kind === "sae_latent") && (
          <button className="btn" data-action="trace" onClick={() => props.actions.trace(key)} title="Attribute to this node's pre-activation instead of the logits">
            Trace
          </button>
        )}
        {head &&
          (["q", "k", "qk", "v"] as const).map((t) => (
            <button
              key={t}
              className="btn"
              data-action={`trace-${t}`}
              disabled={t !== "v" && !hasKey}
              onClick={() => props.actions.trace(key, t)}
              title={
                t !== "v" && !hasKey
                  ? "Tracing through Q/K needs a key position: use a head-pair row (L H @q←k)"
                  : { q: "Trace the attention score through the query only", k: "Trace the score through the key only", qk: "Trace the score through query and key", v: "Trace the head's write through the values only" }[t]
              }
            >
              Trace through {t.toUpperCase()}
            </button>
          ))}
        <a className="btn ghost" href={href({ view: "node", node: key, ...props.linkParams })} onClick={onLinkClick}>
          Node page
        </a>
        {head && layer !== undefined && (
          <a
            className="btn ghost"
            href={href({ view: "attention", layer: String(layer), head: String(row.node!.index), prompt: props.linkParams.prompt })}
            onClick={onLinkClick}
          >
            Attention pattern
          </a>
        )}
        <code className="muted small keytext" title="Canonical node key">
          {key}
        </code>
      </div>
      <div className="detail-cols">
        <div>
          <h4>Explanations</h4>
          <ErrorBox error={expl.error} what="ListExplanations" />
          {explanations.length ? (
            <ul className="expl">
              {explanations.map((e, i) => (
                <li key={i}>
                  <span className="score" title={e.score === undefined ? e.scoreReason : "score (correlation; ROC AUC for heads)"}>
                    {e.score === undefined ? "–" : e.score.toFixed(2)}
                  </span>
                  <span>{e.explanation}</span>
                  <span className="muted small"> {e.method}</span>
                </li>
              ))}
            </ul>
          ) : (
            <div className="muted small">{expl.list ? "None stored." : kind === "embedding" ? "Embeddings are not explained." : "…"}</div>
          )}
        </div>
        <div>
          <h4 title="Output tokens the node's write pushes up (write · final-norm gain · unembedding, mean-subtracted)">Upvoted output tokens</h4>
          <div className="chips">{row.upvoted.map((t, i) => <Chip key={i} token={t.token} score={t.score} tone="up" />)}</div>
          <h4 title="Output tokens the node's write pushes down">Downvoted output tokens</h4>
          <div className="chips">{row.downvoted.map((t, i) => <Chip key={i} token={t.token} score={t.score} tone="down" />)}</div>
          {row.inputTokens.length > 0 && (
            <>
              <h4 title="Tokens whose embedding most drives the node">Input tokens that upvote it</h4>
              <div className="chips">{row.inputTokens.map((t, i) => <Chip key={i} token={t.token} score={t.score} tone="in" />)}</div>
            </>
          )}
        </div>
      </div>
    </div>
  );
}
