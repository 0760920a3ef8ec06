// The logits card's data: next-token top-k of each run at the token of interest, with the target
// and distractor tokens' own logits read exactly (a `logits` capture of just their ids).

import { create } from "@bufbuild/protobuf";
import { api } from "../api/client";
import { CaptureSchema, type TopLogits } from "../gen/tdb/v1/common_pb";
import { F32, interventions, logitPosition, runNames, type DebuggerState } from "../lib/state";
import { at, ChunkStore } from "../lib/tensor";

export const LOGITS_TOP_K = 25;

export interface Pinned {
  token: string;
  role: "target" | "distractor";
  id?: number;
  /** Why it has no id (not exactly one token). */
  problem?: string;
  logits: number[];
}

export interface LogitsResult {
  runs: string[];
  position: number;
  tops: TopLogits[];
  pinned: Pinned[];
  /** From Ablate: each run's logit difference. */
  logitDiffs?: (number | undefined)[];
}

export async function fetchLogits(s: DebuggerState, signal: AbortSignal): Promise<LogitsResult> {
  const names = runNames(s);
  const strings = [...s.target, ...s.distractor];
  const pinned: Pinned[] = strings.map((token, i) => ({
    token,
    role: i < s.target.length ? "target" : "distractor",
    logits: [],
  }));
  if (strings.length) {
    const tk = await api.model.tokenize({ model: s.model, texts: strings, prependBos: false }, { signal });
    tk.prompts.forEach((p, i) => {
      if (p.tokenIds.length === 1) pinned[i].id = p.tokenIds[0];
      else pinned[i].problem = `${p.tokenIds.length} tokens (${p.tokens.map((t) => JSON.stringify(t)).join(" ")})`;
    });
  }
  const ids = [...new Set(pinned.filter((p) => p.id !== undefined).map((p) => p.id!))];
  const position = logitPosition(s);
  const captures = ids.length
    ? [create(CaptureSchema, { site: "logits", positions: [position], units: ids, dtype: F32 })]
    : [];
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
  if (captured?.values) {
    const v = store.get(captured.values); // [run, 1 position, unit]
    for (const p of pinned) {
      if (p.id === undefined) continue;
      const u = ids.indexOf(p.id);
      p.logits = names.names.map((_, r) => at(v, r, 0, u));
    }
  }
  return { runs: names.names, position: absPosition, tops, pinned, logitDiffs };
}
