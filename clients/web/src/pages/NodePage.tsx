// The node page: one node's live activations on the prompts of interest, its stored
// explanations, dataset examples (top and random records), output/input tokens, an Explain
// button streaming ExplainNode, and a box to score a typed explanation.

import { create } from "@bufbuild/protobuf";
import { useEffect, useState } from "react";
import { api } from "../api/client";
import { useCatalogMeta } from "../api/serverInfo";
import { useCall } from "../api/useCall";
import { MatrixHeatmap, TokenHeatmap } from "../components/heatmaps";
import { Busy, Card, Chip, Empty, ErrorBox } from "../components/ui";
import type { NodeRow } from "../gen/tdb/v1/attribution_pb";
import { CaptureSchema } from "../gen/tdb/v1/common_pb";
import type { ActivationRecord, ExplainProgress, Explanation, NodeRecords } from "../gen/tdb/v1/explain_pb";
import { maxAbs } from "../lib/color";
import { formatAblation, keyKind, nodeKey, parseKey, shortLabel, siteLayer, unitKey, type NodeKind } from "../lib/nodekey";
import { attributeRequest, F32, readState } from "../lib/state";
import { ChunkStore, type NdArray } from "../lib/tensor";
import { href, onLinkClick, useQuery } from "../lib/url";

const KIND_LABEL: Record<NodeKind, string> = {
  embedding: "embedding",
  mlp_neuron: "MLP neuron",
  attn_head: "attention head",
  attn_head_pair: "attention head pair",
  sae_latent: "SAE latent",
  unit: "unit",
  vector: "vector",
};

export function NodePage() {
  const q = useQuery();
  const key = q.get("node") ?? "";
  const s = readState(q);
  let kind: NodeKind | undefined;
  let parseError: string | undefined;
  try {
    kind = keyKind(key);
  } catch (e) {
    parseError = (e as Error).message;
  }
  const back = href({
    prompt: s.prompt || undefined,
    prompt2: s.prompt2 || undefined,
    target: s.target,
    distractor: s.distractor,
    model: s.model || undefined,
    abl: s.ablations.map(formatAblation),
  });
  if (!key || parseError || !kind)
    return (
      <div className="page">
        <div className="error" role="alert">
          {parseError ?? "No node given: open a node page from a node-table row, or add ?view=node&node=KEY."}
        </div>
      </div>
    );
  const unit = kind === "embedding" || kind === "vector" ? key : unitKey(key);
  const p = parseKey(key);
  const head = kind === "attn_head" || kind === "attn_head_pair";
  const prompts = [s.prompt, s.prompt2].filter(Boolean);
  return (
    <div className="page nodepage" data-testid="node-page">
      <header className="nodehead">
        <a href={back} onClick={onLinkClick} className="btn ghost small">
          ← Debugger
        </a>
        <h1>
          {shortLabel(unit)} <span className="muted kindlabel">{KIND_LABEL[kind]}</span>
        </h1>
        <code className="keytext" title="Canonical node key">
          {unit}
        </code>
        {unit !== key && (
          <span className="muted small">
            from row <code>{key}</code>
          </span>
        )}
        {head && (
          <a
            className="btn ghost small"
            href={href({ view: "attention", layer: String(siteLayer(p.site)), head: String(p.unit), prompt: s.prompt || undefined, model: s.model || undefined })}
            onClick={onLinkClick}
          >
            Attention view
          </a>
        )}
      </header>
      <LiveActivations nodeKey={key} kind={kind} prompts={prompts} model={s.model} />
      <div className="row2">
        <Explanations unit={unit} kind={kind} model={s.model} />
        {kind === "mlp_neuron" || kind === "sae_latent" || head ? <NodeTokens nodeKey={key} q={q} /> : null}
      </div>
      {kind !== "embedding" && kind !== "vector" && <Records unit={unit} model={s.model} />}
    </div>
  );
}

function captureFor(key: string, kind: NodeKind) {
  const p = parseKey(key);
  if (kind === "embedding" || kind === "vector") return undefined;
  return create(CaptureSchema, { site: p.site, units: [p.unit!], dtype: F32 });
}

function LiveActivations(props: { nodeKey: string; kind: NodeKind; prompts: string[]; model: string }) {
  const [extra, setExtra] = useState<string[]>([]);
  const [draft, setDraft] = useState("");
  const call = useCall<{ tokens: string[][]; values: NdArray }>();
  const prompts = [...props.prompts, ...extra];
  const cap = captureFor(props.nodeKey, props.kind);
  const sig = JSON.stringify([props.nodeKey, prompts, props.model]);
  useEffect(() => {
    if (!cap || !prompts.length) return;
    void call.run(async (signal) => {
      const store = new ChunkStore();
      let header;
      for await (const m of api.inference.forward(
        { model: props.model, prompts: prompts.map((t) => ({ input: { case: "text", value: t } })), captures: [cap], topK: 0 },
        { signal },
      )) {
        if (m.part.case === "header") header = m.part.value;
        else if (m.part.case === "chunk") store.add(m.part.value);
      }
      return { tokens: header!.prompts.map((x) => x.tokens), values: store.get(header!.captures[0].values!) };
    });
  }, [sig]); // eslint-disable-line react-hooks/exhaustive-deps
  const head = props.kind === "attn_head" || props.kind === "attn_head_pair";
  const p = parseKey(props.nodeKey);
  let body: React.ReactNode = null;
  const d = call.data;
  if (!cap) body = <Empty>An embedding is a vector node: it has no scalar activation to show.</Empty>;
  else if (!prompts.length) body = <Empty>No prompts of interest: open this page from the debugger, or add a prompt below.</Empty>;
  else if (d) {
    const [B] = d.values.shape;
    if (head) {
      // [batch, 1 head, q, k]
      const [, , Q, K] = d.values.shape;
      body = d.tokens.map((toks, b) => {
        const n = toks.length;
        const vals = new Float32Array(n * n);
        for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) vals[i * n + j] = j <= i ? d.values.data[b * Q * K + i * K + j] : NaN;
        return (
          <div key={b} className="pad-b">
            <div className="muted small">{prompts[b]}</div>
            <MatrixHeatmap rowLabels={toks} colLabels={toks} values={vals} signed={false} max={1} rowTitle="query" colTitle="key" testid="live-pattern" />
          </div>
        );
      });
    } else {
      const P = d.values.shape[1];
      const all = Array.from(d.values.data);
      const scale = maxAbs(all);
      body = (
        <div data-testid="live-activations">
          {Array.from({ length: B }, (_, b) => (
            <TokenHeatmap
              key={b}
              tokens={d.tokens[b]}
              values={Array.from(d.values.data.slice(b * P, b * P + d.tokens[b].length))}
              scale={scale}
              highlight={b === 0 ? p.position : undefined}
            />
          ))}
          <div className="muted small">One colour scale for every prompt (|max| {scale.toFixed(3)}); hover a token for its value.</div>
        </div>
      );
    }
  }
  return (
    <Card
      title="Prompts of interest"
      tip="The node's activations, live, on the debugger's prompts (without its ablations) and any prompt added here."
      actions={<Busy loading={call.loading} started={call.started} label="Forward" onCancel={call.cancel} />}
    >
      <ErrorBox error={call.error} what="Forward" />
      {body}
      {cap && (
        <form
          className="inline-form pad-t"
          onSubmit={(e) => {
            e.preventDefault();
            if (draft.trim()) setExtra([...extra, draft]);
            setDraft("");
          }}
        >
          <input className="grow" placeholder="Add a prompt…" value={draft} onChange={(e) => setDraft(e.target.value)} aria-label="Add a prompt" />
          <button className="btn" type="submit">
            Add
          </button>
        </form>
      )}
    </Card>
  );
}

/** Explanations per ListExplanations request; "Show more" reads the next page (next_offset). */
const EXPLANATIONS_PAGE = 50;

function Explanations(props: { unit: string; kind: NodeKind; model: string }) {
  const list = useCall<Explanation[]>(); // the first page
  const more = useCall<Explanation[]>(); // a further page
  // what is shown: the pages read so far, and where the next one starts (0: none left)
  const [shown, setShown] = useState<{ items: Explanation[]; next: number }>();
  const explain = useCall<Explanation[]>();
  const score = useCall<Explanation>();
  const meta = useCatalogMeta();
  const [progress, setProgress] = useState<ExplainProgress>();
  const [text, setText] = useState("");
  const [method, setMethod] = useState("");
  const page = (offset: number, signal: AbortSignal) =>
    api.explain.listExplanations({ node: props.unit, model: props.model, limit: EXPLANATIONS_PAGE, offset }, { signal });
  const load = () => {
    more.reset();
    return list.run(async (signal) => {
      const r = await page(0, signal);
      if (!signal.aborted) setShown({ items: r.explanations, next: r.nextOffset });
      return r.explanations;
    });
  };
  const showMore = (from: { items: Explanation[]; next: number }) =>
    more.run(async (signal) => {
      const r = await page(from.next, signal);
      if (!signal.aborted) setShown({ items: [...from.items, ...r.explanations], next: r.nextOffset });
      return r.explanations;
    });
  useEffect(() => {
    if (props.kind !== "embedding" && props.kind !== "vector") void load();
  }, [props.unit]); // eslint-disable-line react-hooks/exhaustive-deps
  if (props.kind === "embedding" || props.kind === "vector") return <Card title="Explanations"><Empty>Only units (neurons, heads, latents) are explained.</Empty></Card>;
  const runExplain = () =>
    explain.run(async (signal) => {
      const out: Explanation[] = [];
      setProgress(undefined);
      for await (const m of api.explain.explainNode({ model: props.model, nodes: [props.unit], method }, { signal })) {
        if (m.event.case === "progress") setProgress(m.event.value);
        else if (m.event.case === "result") out.push(m.event.value);
      }
      void load();
      return out;
    });
  const methods = meta.data?.methods ?? [];
  return (
    <Card
      title="Explanations"
      tip="Stored explanations of this unit with their scores (pooled correlation for neurons and latents, ROC AUC for heads)."
      actions={
        <>
          {methods.length > 1 && (
            <select value={method} onChange={(e) => setMethod(e.target.value)} aria-label="Explainer method">
              <option value="">{meta.data?.defaultMethod || "default"}</option>
              {methods.filter((m) => m !== meta.data?.defaultMethod).map((m) => (
                <option key={m}>{m}</option>
              ))}
            </select>
          )}
          <button className="btn primary" onClick={runExplain} disabled={explain.loading} data-testid="explain">
            Explain
          </button>
        </>
      }
    >
      <Busy
        loading={explain.loading}
        started={explain.started}
        label={`ExplainNode${progress ? `: ${progress.phase}` : ""}`}
        detail={progress ? `${progress.done}/${progress.total}${progress.message ? ` · ${progress.message}` : ""}` : "starting"}
        fraction={progress && progress.total ? progress.done / progress.total : undefined}
        onCancel={explain.cancel}
      />
      <ErrorBox error={explain.error} what="ExplainNode" />
      {explain.data?.map((e, i) => (
        <div key={i} className="note" data-testid="explain-result">
          New: <strong>{e.score === undefined ? "unscored" : e.score.toFixed(2)}</strong> {e.explanation}
          {e.scoreReason && <span className="muted small"> ({e.scoreReason})</span>}
        </div>
      ))}
      <ErrorBox error={list.error} what="ListExplanations" />
      {list.data && !list.data.length && <div className="muted small">None stored yet.</div>}
      <ul className="expl" data-testid="explanations">
        {(list.data ? (shown?.items ?? []) : []).map((e, i) => (
          <li key={i}>
            <span className="score" title={e.score === undefined ? e.scoreReason : "score"}>
              {e.score === undefined ? "–" : e.score.toFixed(2)}
            </span>
            <span>{e.explanation}</span>
            <span className="muted small">
              {" "}
              {e.method}
              {e.explainer && e.explainer !== e.method ? ` · ${e.explainer}` : ""}
            </span>
          </li>
        ))}
      </ul>
      {list.data && shown && shown.next > 0 && (
        <button className="btn" onClick={() => void showMore(shown)} disabled={more.loading} data-testid="explanations-more">
          Show more
        </button>
      )}
      <Busy loading={more.loading} started={more.started} label="ListExplanations" onCancel={more.cancel} />
      <ErrorBox error={more.error} what="ListExplanations" />
      <form
        className="scorebox"
        onSubmit={(e) => {
          e.preventDefault();
          if (text.trim()) void score.run((signal) => api.explain.scoreExplanation({ model: props.model, node: props.unit, explanation: text, method }, { signal }).then((r) => r.result!));
        }}
      >
        <label className="field grow">
          <span title="For the baseline method an explanation is a rule list, e.g.: the token &quot; to&quot; (7.9); the token &quot; and&quot; after &quot; Mary&quot; (6.7)">
            Score an explanation
          </span>
          <textarea rows={2} value={text} onChange={(e) => setText(e.target.value)} placeholder='the token " to" (7.9); the token " and" after " Mary" (6.7)' data-testid="score-text" />
        </label>
        <button className="btn" type="submit" disabled={score.loading} data-testid="score">
          Score
        </button>
      </form>
      <Busy loading={score.loading} started={score.started} label="ScoreExplanation" onCancel={score.cancel} />
      <ErrorBox error={score.error} what="ScoreExplanation" />
      {score.data && (
        <div className="note" data-testid="score-result">
          Score <strong>{score.data.score === undefined ? "undefined" : score.data.score.toFixed(3)}</strong>
          {score.data.scoreReason && <span className="muted"> ({score.data.scoreReason})</span>}
        </div>
      )}
    </Card>
  );
}

const TOKENS_TOP_K = 200;

/** The node-table family of a key (head pairs are read off their head's row). */
function kindFamily(key: string): string {
  const k = keyKind(key);
  return k === "attn_head_pair" ? "attn_head" : k;
}

/** Output/input tokens come with node-table rows: re-run the debugger's Attribute and find the node. */
function NodeTokens(props: { nodeKey: string; q: URLSearchParams }) {
  const s = readState(props.q);
  const call = useCall<{ row?: NodeRow; from?: string }>();
  useEffect(() => {
    if (!s.prompt) return;
    void call.run(async (signal) => {
      const res = await api.attribution.attribute(attributeRequest({ ...s, ablations: [], prompt2: "", trace: "" }, { topK: TOKENS_TOP_K, families: [kindFamily(props.nodeKey)] }), { signal });
      const unit = unitKey(props.nodeKey);
      const exact = res.rows.find((r) => nodeKey(r.node!) === props.nodeKey);
      if (exact) return { row: exact, from: props.nodeKey };
      const same = res.rows.find((r) => unitKey(nodeKey(r.node!)) === unit);
      return same ? { row: same, from: nodeKey(same.node!) } : {};
    });
  }, [props.nodeKey, s.prompt]); // eslint-disable-line react-hooks/exhaustive-deps
  const r = call.data?.row;
  return (
    <Card
      title="Output and input tokens"
      tip="Output tokens the node's write pushes up and down (write · final-norm gain · unembedding, mean-subtracted) and, for neurons and latents, the tokens whose embedding most drives it; read off the prompt's node table."
      actions={<Busy loading={call.loading} started={call.started} label="Attribute" onCancel={call.cancel} />}
    >
      <ErrorBox error={call.error} what="Attribute" />
      {!s.prompt && <Empty>Open from the debugger: the tokens come with the prompt's node table.</Empty>}
      {call.data && !r && <Empty>This node is not among the prompt's top-{TOKENS_TOP_K} nodes of its kind, so its tokens were not computed.</Empty>}
      {r && (
        <div data-testid="node-tokens">
          {call.data?.from !== props.nodeKey && <div className="muted small">from row {call.data?.from}</div>}
          <h4>Upvoted</h4>
          <div className="chips">{r.upvoted.map((t, i) => <Chip key={i} token={t.token} score={t.score} tone="up" />)}</div>
          <h4>Downvoted</h4>
          <div className="chips">{r.downvoted.map((t, i) => <Chip key={i} token={t.token} score={t.score} tone="down" />)}</div>
          {r.inputTokens.length > 0 && (
            <>
              <h4>Input tokens</h4>
              <div className="chips">{r.inputTokens.map((t, i) => <Chip key={i} token={t.token} score={t.score} tone="in" />)}</div>
            </>
          )}
        </div>
      )}
    </Card>
  );
}

function recordValues(rec: ActivationRecord, kind: string): number[] {
  if (kind !== "token_pair") return rec.activations;
  // pairs flattened (query, key <= query), query-major: show each query token's strongest pair
  const out: number[] = [];
  let o = 0;
  for (let qi = 0; qi < rec.tokens.length; qi++) {
    let m = -Infinity;
    for (let k = 0; k <= qi; k++) m = Math.max(m, rec.activations[o++] ?? -Infinity);
    out.push(m);
  }
  return out;
}

function Records(props: { unit: string; model: string }) {
  const meta = useCatalogMeta();
  const [dataset, setDataset] = useState("");
  const call = useCall<NodeRecords>();
  const datasets = meta.data?.datasets ?? [];
  const load = () =>
    call.run(async (signal) => {
      const r = await api.explain.getActivationRecords(
        { model: props.model, nodes: [props.unit], dataset: dataset ? { source: { case: "name", value: dataset } } : undefined },
        { signal },
      );
      return r.records[0];
    });
  useEffect(() => {
    void load();
  }, [props.unit, dataset]); // eslint-disable-line react-hooks/exhaustive-deps
  const d = call.data;
  const section = (title: string, recs: ActivationRecord[], id: string) => {
    const scale = d ? Math.max(d.maxActivation, 1e-9) : 1;
    return (
      <div data-testid={id}>
        <h4>
          {title} <span className="muted small">({recs.length})</span>
        </h4>
        {recs.map((rec, i) => (
          <TokenHeatmap key={i} tokens={rec.tokens} values={recordValues(rec, d!.kind)} scale={scale} signed={false} />
        ))}
      </div>
    );
  };
  return (
    <Card
      title="Dataset examples"
      tip="Top-activating and random windows mined from a dataset (GetActivationRecords); colour is the activation relative to the largest seen. For heads, each query token shows its strongest attention pair."
      actions={
        <>
          {datasets.length > 0 && (
            <select value={dataset} onChange={(e) => setDataset(e.target.value)} aria-label="Dataset">
              <option value="">default dataset</option>
              {datasets.map((x) => (
                <option key={x}>{x}</option>
              ))}
            </select>
          )}
          <Busy loading={call.loading} started={call.started} label="Mining records" onCancel={call.cancel} />
          {!call.loading && call.cancelled && (
            <button className="btn small" onClick={() => void load()}>
              Mine again
            </button>
          )}
        </>
      }
    >
      <ErrorBox error={call.error} what="GetActivationRecords" />
      {call.loading && !d && <Empty>Mining the dataset for this node's top-activating windows (a few seconds on the toy model)…</Empty>}
      {d && (
        <>
          <div className="muted small pad-b">
            max activation {d.maxActivation.toFixed(3)} · density {(d.density * 100).toFixed(1)}% · {Number(d.nPositions).toLocaleString()}{" "}
            {d.kind === "token_pair" ? "pairs" : "tokens"} read
          </div>
          <div className="row2">
            {section("Top", d.top, "records-top")}
            {section("Random", d.random, "records-random")}
          </div>
        </>
      )}
    </Card>
  );
}
