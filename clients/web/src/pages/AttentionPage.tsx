// Attention view: one head's pattern (query x key) on a prompt, with every head of the layer a
// click away.

import { create } from "@bufbuild/protobuf";
import { useEffect, useState } from "react";
import { api } from "../api/client";
import { useServerInfo } from "../api/serverInfo";
import { useCall } from "../api/useCall";
import { MatrixHeatmap } from "../components/heatmaps";
import { Busy, Card, Empty, ErrorBox } from "../components/ui";
import { CaptureSchema } from "../gen/tdb/v1/common_pb";
import { formatKey } from "../lib/nodekey";
import { DEFAULTS, F32 } from "../lib/state";
import { ChunkStore, type NdArray } from "../lib/tensor";
import { href, navigate, onLinkClick, useQuery, withParams } from "../lib/url";

export function AttentionPage() {
  const q = useQuery();
  const layer = Number(q.get("layer") ?? 0) || 0;
  const head = Number(q.get("head") ?? 0) || 0;
  const prompt = q.get("prompt") || DEFAULTS.prompt;
  const model = q.get("model") ?? "";
  const info = useServerInfo();
  const m = info.data?.models.find((x) => x.name === model) ?? info.data?.models.find((x) => x.isDefault);
  const [draft, setDraft] = useState(prompt);
  useEffect(() => setDraft(prompt), [prompt]);
  const call = useCall<{ tokens: string[]; values: NdArray; nHeads: number }>();
  useEffect(() => {
    void call.run(async (signal) => {
      const store = new ChunkStore();
      let header;
      const site = `blocks.${layer}.attn.hook_pattern`;
      for await (const msg of api.inference.forward(
        {
          model,
          prompts: [{ input: { case: "text", value: prompt } }],
          captures: [create(CaptureSchema, { site, dtype: F32 })],
          topK: 0,
        },
        { signal },
      )) {
        if (msg.part.case === "header") header = msg.part.value;
        else if (msg.part.case === "chunk") store.add(msg.part.value);
      }
      const values = store.get(header!.captures[0].values!); // [1, head, q, k]
      return { tokens: header!.prompts[0].tokens, values, nHeads: values.shape[1] };
    });
  }, [layer, prompt, model]); // eslint-disable-line react-hooks/exhaustive-deps
  const d = call.data;
  const set = (u: Record<string, string | undefined>) => navigate(withParams(q, u));
  let body: React.ReactNode = <Empty>…</Empty>;
  if (d) {
    const n = d.tokens.length;
    const h = Math.min(head, d.nHeads - 1);
    const vals = new Float32Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) vals[i * n + j] = j <= i ? d.values.data[h * n * n + i * n + j] : NaN;
    body = <MatrixHeatmap rowLabels={d.tokens} colLabels={d.tokens} values={vals} signed={false} max={1} rowTitle="query" colTitle="key" testid="attention-pattern" />;
  }
  const nLayers = m?.nLayers ?? layer + 1;
  return (
    <div className="page">
      <Card
        title={`Attention pattern · L${layer} H${head}`}
        tip="blocks.L.attn.hook_pattern for one head: row = query (attended from), column = key (attended to); each row sums to 1."
        actions={<Busy loading={call.loading} started={call.started} label="Forward" onCancel={call.cancel} />}
      >
        <form
          className="inline-form pad-b"
          onSubmit={(e) => {
            e.preventDefault();
            set({ prompt: draft });
          }}
        >
          <input className="grow" value={draft} onChange={(e) => setDraft(e.target.value)} aria-label="Prompt" />
          <label className="field inline">
            <span>Layer</span>
            <select value={layer} onChange={(e) => set({ layer: e.target.value })}>
              {Array.from({ length: nLayers }, (_, i) => (
                <option key={i} value={i}>
                  {i}
                </option>
              ))}
            </select>
          </label>
          <button className="btn primary" type="submit">
            Run
          </button>
        </form>
        {d && (
          <div className="headtabs" role="tablist" aria-label="Heads">
            {Array.from({ length: d.nHeads }, (_, i) => (
              <button key={i} role="tab" aria-selected={i === head} className={`btn small ${i === head ? "primary" : ""}`} onClick={() => set({ head: String(i) })}>
                H{i}
              </button>
            ))}
            <a className="btn ghost small" href={href({ view: "node", node: formatKey({ site: `blocks.${layer}.attn.hook_pattern`, unit: head }), prompt, model: model || undefined })} onClick={onLinkClick}>
              Node page
            </a>
          </div>
        )}
        <ErrorBox error={call.error} what="Forward" />
        {body}
      </Card>
    </div>
  );
}
