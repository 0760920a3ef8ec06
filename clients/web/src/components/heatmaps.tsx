// Heatmaps: a row of tokens coloured by a value each, and a matrix (query x key attention,
// layer x position patching) with labels and a colour scale.

import { diverging, fmt, inkFor, maxAbs, sequential, tok } from "../lib/color";

export function TokenHeatmap(props: {
  tokens: string[];
  values: ArrayLike<number>;
  scale?: number;
  signed?: boolean;
  highlight?: number;
  label?: string;
  testid?: string;
}) {
  const vals = Array.from(props.values);
  const m = props.scale ?? maxAbs(vals);
  return (
    <div className="tokmap" data-testid={props.testid} aria-label={props.label}>
      {props.label && <span className="tokmap-label">{props.label}</span>}
      {props.tokens.map((t, i) => {
        const v = vals[i] ?? 0;
        const bg = props.signed === false ? sequential(v, m) : diverging(v, m);
        return (
          <span
            key={i}
            className={`tokcell ${props.highlight === i ? "hl" : ""}`}
            style={{ background: bg, color: inkFor(v, m) }}
            title={`${i}: ${JSON.stringify(t)}  ${fmt(v, 4)}`}
          >
            {t.replace(/\n/g, "⏎")}
          </span>
        );
      })}
    </div>
  );
}

export function Legend({ max, signed, label }: { max: number; signed: boolean; label?: string }) {
  const stops = signed ? [-1, -0.5, 0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1];
  const grad = stops
    .map((s, i) => `${signed ? diverging(s * max, max) : sequential(s * max, max)} ${(i / (stops.length - 1)) * 100}%`)
    .join(", ");
  return (
    <div className="legend" aria-label="colour scale">
      {label && <span className="muted">{label}</span>}
      <span>{fmt(signed ? -max : 0, 2)}</span>
      <span className="legend-bar" style={{ background: `linear-gradient(to right, ${grad})` }} />
      <span>{fmt(max, 2)}</span>
    </div>
  );
}

/** rows x cols matrix as SVG; values row-major. Masked cells (NaN / -inf) are blank. */
export function MatrixHeatmap(props: {
  rowLabels: string[];
  colLabels: string[];
  values: ArrayLike<number>;
  signed: boolean;
  max?: number;
  rowTitle?: string;
  colTitle?: string;
  testid?: string;
  cell?: number;
}) {
  const R = props.rowLabels.length;
  const C = props.colLabels.length;
  const vals = Array.from(props.values);
  const m = props.max ?? maxAbs(vals);
  const cell = props.cell ?? Math.max(12, Math.min(34, Math.floor(720 / Math.max(C, 1))));
  const left = 8 + 7 * Math.min(18, Math.max(...props.rowLabels.map((l) => l.length), 1));
  const top = 8 + 6.5 * Math.min(18, Math.max(...props.colLabels.map((l) => l.length), 1));
  const W = left + C * cell + 4;
  const H = top + R * cell + 4;
  const showValues = cell >= 30;
  return (
    <div className="matrix" data-testid={props.testid}>
      <svg width={W} height={H} role="img" aria-label={`${props.rowTitle ?? "rows"} by ${props.colTitle ?? "columns"} heatmap`}>
        {props.colLabels.map((l, j) => (
          <text key={`c${j}`} className="axis" transform={`translate(${left + j * cell + cell / 2 + 4},${top - 6}) rotate(-60)`}>
            {tok(l).slice(0, 18)}
          </text>
        ))}
        {props.rowLabels.map((l, i) => (
          <text key={`r${i}`} className="axis" x={left - 6} y={top + i * cell + cell / 2 + 4} textAnchor="end">
            {tok(l).slice(0, 18)}
          </text>
        ))}
        {vals.map((v, k) => {
          const i = Math.floor(k / C);
          const j = k % C;
          if (!isFinite(v)) return null;
          const fill = props.signed ? diverging(v, m) : sequential(v, m);
          return (
            <g key={k}>
              <rect x={left + j * cell} y={top + i * cell} width={cell - 1} height={cell - 1} fill={fill} className="mcell">
                <title>{`${props.rowTitle ?? "row"} ${props.rowLabels[i]} · ${props.colTitle ?? "col"} ${JSON.stringify(props.colLabels[j])}: ${fmt(v, 4)}`}</title>
              </rect>
              {showValues && Math.abs(v) >= m * 0.005 && (
                <text x={left + j * cell + cell / 2} y={top + i * cell + cell / 2 + 3} className="mval" textAnchor="middle" fill={inkFor(v, m) ?? "#334"}>
                  {fmt(v, 2)}
                </text>
              )}
            </g>
          );
        })}
        <rect x={left - 0.5} y={top - 0.5} width={C * cell} height={R * cell} fill="none" stroke="#d5d9e0" />
      </svg>
      <Legend max={m} signed={props.signed} />
    </div>
  );
}
