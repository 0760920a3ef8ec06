// The logits card's data: next-token top-k of each run at the token of interest, with the target
// and distractor tokens' own logits read exactly (a `logits` capture of just their ids).

import { create } from "@bufbuild/protobuf";
import { api } from "../api/client";
import { CaptureSchema, type TopLogits } from "../gen/tdb/v1/common_pb";
import { F32, interventions, logitPosition, runNames, type DebuggerState } from "../lib/state";
import { ChunkStore } from "../lib/tensor";

export const LOGITS_TOP_K = 25;

export interface Pinned {
  token: string;
  role: "target" | "distractor";
  id?: number;
  /** Why it has no id (not exactly one token). */
  problem?: string;
}

export interface LogitsResult {
  runs: string[];
  position: number;
  tops: TopLogits[];
  pinned: Pinned[];
  /** Each run's whole next-token logit row at the position (float32 [d_vocab]). */
  rows: Float32Array[];
  /** Each run's log-sum-exp of its row, for exact probabilities. */
  lse: number[];
  /** From Ablate: each run's logit difference. */
  logitDiffs?: (number | undefined)[];
}

export function prob(r: LogitsResult, run: number, id: number): number {
  return Math.exp(r.rows[run][id] - r.lse[run]);
}

function logSumExp(xs: Float32Array): number {
  let m = -Infinity;
  for (const x of xs) if (x > m) m = x;
  let s = 0;
  for (const x of xs) s += Math.exp(x - m);
  return m + Math.log(s);
}

export async function fetchLogits(s: DebuggerState, signal: AbortSignal): Promise<LogitsResult> {
  const names = runNames(s);
  const strings = [...s.target, ...s.distractor];
  const pinned: Pinned[] = strings.map((token, i) => ({
    token,
    role: i < s.target.length ? "target" : "distractor",
  }));
  if (strings.length) {
    const tk = await api.model.tokenize({ model: s.model, texts: strings, prependBos: false }, { signal });
    tk.prompts.forEach((p, i) => {
      if (p.tokenIds.length === 1) pinned[i].id = p.tokenIds[0];
      else pinned[i].problem = `${p.tokenIds.length} tokens (${p.tokens.map((t) => JSON.stringify(t)).join(" ")})`;
    });
  }
  const position = logitPosition(s);
  // the whole logit row at the position: every token's logit and its exact probability
  const captures = [create(CaptureSchema, { site: "logits", positions: [position], dtype: F32 })];
  const store = new ChunkStore();
  const iv = interventions(s).list;
  let tops: TopLogits[] = [];
  let logitDiffs: (number | undefined)[] | undefined;
  let captured;
  let absPosition = position;
  if (names.ablated) {
    const stream = api.inference.ablate(
      {
        model: s.model,
        prompt: { input: { case: "text", value: s.prompt } },
        sets: [{ name: "ablated", interventions: iv }],
        position,
        topK: LOGITS_TOP_K,
        captures,
        ...(s.target.length && s.distractor.length && !s.trace
          ? { target: { strings: s.target }, distractor: { strings: s.distractor } }
          : {}),
      },
      { signal },
    );
    for await (const m of stream) {
      if (m.part.case === "header") {
        const h = m.part.value;
        tops = h.rows.map((r) => r.top!);
        logitDiffs = h.rows.map((r) => r.logitDiff);
        captured = h.captures[0];
        absPosition = h.position;
      } else if (m.part.case === "chunk") store.add(m.part.value);
    }
  } else {
    const prompts = [s.prompt, ...(s.prompt2 ? [s.prompt2] : [])].map((text) => ({
      input: { case: "text" as const, value: text },
    }));
    const stream = api.inference.forward(
      { model: s.model, prompts, captures, interventions: iv, logitPositions: [position], topK: LOGITS_TOP_K },
      { signal },
    );
    for await (const m of stream) {
      if (m.part.case === "header") {
        const h = m.part.value;
        tops = h.topLogits.map((p) => p.positions[0]);
        captured = h.captures[0];
        absPosition = tops[0]?.position ?? position;
      } else if (m.part.case === "chunk") store.add(m.part.value);
    }
  }
  const v = store.get(captured!.values!); // [run, 1 position, d_vocab]
  const V = v.shape[2];
  const rows = names.names.map((_, r) => v.data.subarray(r * V, (r + 1) * V));
  return { runs: names.names, position: absPosition, tops, pinned, rows, lse: rows.map(logSumExp), logitDiffs };
}
