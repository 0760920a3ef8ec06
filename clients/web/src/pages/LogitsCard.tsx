// Logits card: top-k next tokens at the token of interest, target/distractor pinned on top,
// one column per run (and their difference with two runs).

import { Fragment } from "react";
import { Card, Empty } from "../components/ui";
import { diverging, fmt, maxAbs, tok } from "../lib/color";
import { prob, type LogitsResult } from "./logits";

interface Row {
  token: string;
  id?: number;
  role?: "target" | "distractor";
  logits: (number | undefined)[];
  probs: (number | undefined)[];
  problem?: string;
}

function fmtProb(p: number): string {
  return p >= 0.001 || p === 0 ? p.toFixed(3) : p.toExponential(0);
}

export function LogitsCard(props: {
  data?: LogitsResult;
  lossValues?: number[];
  lossLabel: string;
  busy?: React.ReactNode;
  tokens?: string[];
}) {
  const d = props.data;
  const two = (d?.runs.length ?? 1) > 1;
  const rows: Row[] = [];
  if (d) {
    const row = (token: string, id: number | undefined): Row => ({
      token,
      id,
      logits: d.runs.map((_, r) => (id === undefined ? undefined : d.rows[r][id])),
      probs: d.runs.map((_, r) => (id === undefined ? undefined : prob(d, r, id))),
    });
    for (const p of d.pinned) rows.push({ ...row(p.token, p.id), role: p.role, problem: p.problem });
    const pinnedIds = new Set(d.pinned.map((p) => p.id));
    const seen = new Map<number, string>();
    for (const t of d.tops) t.tokenIds.forEach((id, i) => !pinnedIds.has(id) && seen.set(id, t.tokens[i]));
    const others = [...seen].map(([id, token]) => row(token, id));
    others.sort((a, b) => (b.logits[0] ?? -Infinity) - (a.logits[0] ?? -Infinity));
    rows.push(...others);
  }
  const ref = rows.find((r) => r.role === "target")?.logits;
  const diffs = rows.map((r) => (two && r.logits[0] !== undefined && r.logits[1] !== undefined ? r.logits[1]! - r.logits[0]! : undefined));
  const dMax = maxAbs(diffs.filter((x): x is number => x !== undefined));
  const lv = props.lossValues;
  const posToken = d && props.tokens ? props.tokens[d.position] : undefined;
  return (
    <Card
      title="Logits"
      id="logits"
      tip="Next-token logits at the token of interest (the last token, or the traced node's). Target and distractor tokens are pinned on top; 'rel.' is the logit relative to the first target token, as in TDB."
      actions={props.busy}
    >
      {lv && lv.length > 0 && (
        <div className="lossbar" data-testid="logit-diff" data-values={JSON.stringify(lv)}>
          <span className="muted">{props.lossLabel}</span>
          {lv.map((v, i) => (
            <span key={i} className="lossval">
              {d && two ? <span className="muted">{d.runs[i]} </span> : null}
              <strong>{fmt(v)}</strong>
            </span>
          ))}
          {lv.length === 2 && (
            <span className={`lossval ${lv[1] - lv[0] < 0 ? "neg" : "pos"}`} data-testid="logit-diff-change">
              Δ <strong>{fmt(lv[1] - lv[0])}</strong>
            </span>
          )}
        </div>
      )}
      {!d ? (
        <Empty>Run a prompt to see its next-token logits.</Empty>
      ) : (
        <div className="scroll-y" style={{ maxHeight: 420 }}>
          {posToken !== undefined && (
            <div className="muted small pad-b">
              after token {d.position} <span className="tok">{tok(posToken)}</span>
            </div>
          )}
          <table className="grid logits" data-testid="logits-table">
            <thead>
              <tr>
                <th title="Next token">Token</th>
                {d.runs.map((r) => (
                  <Fragment key={r}>
                    <th className="num" title={`${two ? r + ": " : ""}logit`}>
                      {two ? `${r} logit` : "Logit"}
                    </th>
                    <th className="num" title="Logit minus the first target token's logit (TDB's display)">
                      rel.
                    </th>
                    <th className="num" title="Probability (softmax over the whole vocabulary)">
                      p
                    </th>
                  </Fragment>
                ))}
                {two && (
                  <th className="num" title={`${d.runs[1]} − ${d.runs[0]} logit`}>
                    Diff
                  </th>
                )}
              </tr>
            </thead>
            <tbody>
              {rows.map((r, i) => (
                <tr key={`${r.role ?? "top"}${r.id ?? r.token}${i}`} className={r.role ? `pinned ${r.role}` : ""} data-token={r.token}>
                  <td>
                    {r.role && (
                      <span className={`badge ${r.role}`} title={r.role}>
                        {r.role === "target" ? "T" : "D"}
                      </span>
                    )}
                    <span className="tok">{tok(r.token)}</span>
                    {r.problem && <span className="warn small"> not one token: {r.problem}</span>}
                  </td>
                  {d.runs.map((_, k) => (
                    <Fragment key={k}>
                      <td className="num">{fmt(r.logits[k], 2)}</td>
                      <td className="num muted">{ref?.[k] !== undefined && r.logits[k] !== undefined ? fmt(r.logits[k]! - ref[k]!, 2) : "–"}</td>
                      <td className="num muted">{r.probs[k] !== undefined ? fmtProb(r.probs[k]!) : "–"}</td>
                    </Fragment>
                  ))}
                  {two && (
                    <td className="num" style={{ background: diffs[i] !== undefined ? diverging(diffs[i]!, dMax) : undefined }}>
                      {fmt(diffs[i], 2)}
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Card>
  );
}
