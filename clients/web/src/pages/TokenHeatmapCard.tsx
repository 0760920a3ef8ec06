// Token heatmap: per-token summed activation x gradient (estimated total effect) of the
// embeddings (exact: the server's token attribution), each MLP layer, and attention by the token
// attended from and the token attended to.

import { Card, Empty } from "../components/ui";
import { TokenHeatmap } from "../components/heatmaps";
import type { AttributeResponse } from "../gen/tdb/v1/attribution_pb";
import { maxAbs } from "../lib/color";

export const HEATMAP_TOP_K = 1000;

export function TokenHeatmapCard(props: { data?: AttributeResponse; busy?: React.ReactNode; run: number }) {
  const d = props.data;
  let body: React.ReactNode = <Empty>Loading…</Empty>;
  if (d && d.prompts.length) {
    const runs = d.prompts.map((p, r) => {
      const n = p.tokens.length;
      const mlp = new Map<number, Float64Array>();
      const from = new Float64Array(n);
      const to = new Float64Array(n);
      for (const row of d.rows) {
        const node = row.node!;
        const v = row.values[r]?.totalEffect ?? 0;
        if (node.family === "mlp_neuron") {
          const L = node.layer ?? 0;
          if (!mlp.has(L)) mlp.set(L, new Float64Array(n));
          mlp.get(L)![node.position] += v;
        } else if (node.family === "attn_head_pair" && node.keyPosition !== undefined) {
          from[node.position] += v;
          to[node.keyPosition] += v;
        }
      }
      const emb = d.tokenAttribution[r]?.values ?? [];
      const lines: [string, ArrayLike<number>][] = [
        ["Embeddings", emb],
        ...[...mlp.keys()].sort((a, b) => a - b).map((L) => [`MLP L${L}`, mlp.get(L)!] as [string, Float64Array]),
        ["Attention, attended from", from],
        ["Attention, attended to", to],
      ];
      return { tokens: p.tokens, lines };
    });
    const scale = maxAbs(runs.flatMap((x) => x.lines.flatMap(([, v]) => Array.from(v))));
    body = (
      <div data-testid="token-heatmap">
        {runs.map((x, r) => (
          <div key={r} className="heat-run">
            {runs.length > 1 && <div className="muted small">Row {r + 1}</div>}
            {x.lines.map(([label, values]) => (
              <TokenHeatmap key={label} label={label} tokens={x.tokens} values={values} scale={scale} highlight={d.lossPosition} />
            ))}
          </div>
        ))}
        <div className="muted small">
          Blue raises the loss (logit difference), red lowers it; one colour scale for every line (|max| {scale.toFixed(3)}).
          MLP and attention lines sum the {d.rows.length.toLocaleString()} nodes ranked in the top/bottom {HEATMAP_TOP_K} of
          some column (of {Number(d.nodesRanked).toLocaleString()}); embeddings are exact.
        </div>
      </div>
    );
  }
  return (
    <Card
      title="Token heatmap"
      id="heatmap"
      tip="Per-token summed activation × gradient (estimated total effect): embeddings, each MLP layer, and attention by the token attended from and attended to."
      actions={props.busy}
    >
      {body}
    </Card>
  );
}
