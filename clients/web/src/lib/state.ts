// The debugger's state as read from the URL, and the requests it turns into.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type AttributeRequest,
  AttributeRequestSchema,
  Through,
} from "../gen/tdb/v1/attribution_pb";
import { DType } from "../gen/tdb/v1/common_pb";
import { type Ablation, keyKind, parseAblation, parseKey, siteLayer, siteSae, toIntervention } from "./nodekey";
import type { Query } from "./url";

/** TDB's defaults are GPT-2's; these are the embedded toy model's IOI example. */
export const DEFAULTS = {
  prompt: "When Mary and John went to the store, John gave a drink to",
  target: [" Mary"],
  distractor: [" John"],
  k: 10,
};

export const THROUGH = { q: Through.Q, k: Through.K, qk: Through.QK, v: Through.V } as const;
export type ThroughName = keyof typeof THROUGH;

export interface DebuggerState {
  model: string;
  sae: string;
  prompt: string;
  prompt2: string;
  target: string[];
  distractor: string[];
  ablations: Ablation[];
  trace: string;
  through: ThroughName;
  k: number;
  heat: boolean;
}

/** URL keys of the debugger (prompt, target, distractor are TDB's). */
export const KEYS = ["model", "sae", "prompt", "prompt2", "target", "distractor", "abl", "trace", "through", "k"] as const;

export function readState(q: Query): DebuggerState {
  const list = (k: string, d: string[]) => (q.has(k) ? q.getAll(k).filter((x) => x !== "") : d);
  const th = (q.get("through") ?? "qk").toLowerCase();
  return {
    model: q.get("model") ?? "",
    sae: q.get("sae") ?? "",
    prompt: q.get("prompt") ?? "",
    prompt2: q.get("prompt2") ?? "",
    target: list("target", DEFAULTS.target),
    distractor: list("distractor", DEFAULTS.distractor),
    ablations: q.getAll("abl").filter(Boolean).map(parseAblation),
    trace: q.get("trace") ?? "",
    through: (th in THROUGH ? th : "qk") as ThroughName,
    k: Math.max(1, Math.min(1000, Number(q.get("k")) || DEFAULTS.k)),
    heat: q.get("heat") === "1",
  };
}

/** A string that changes exactly when the query to run changes. */
export function runSignature(s: DebuggerState): string {
  return JSON.stringify([s.model, s.sae, s.prompt, s.prompt2, s.target, s.distractor, s.ablations, s.trace, s.through, s.k]);
}

export interface RunNames {
  names: string[];
  /** Whether runs are a baseline and an ablated copy (else two prompts). */
  ablated: boolean;
}

export function runNames(s: DebuggerState): RunNames {
  if (s.prompt2) return { names: ["Left", "Right"], ablated: false };
  if (s.ablations.length) return { names: ["Baseline", "Ablated"], ablated: true };
  return { names: ["Value"], ablated: false };
}

export const BASE_FAMILIES = ["embedding", "mlp_neuron", "attn_head", "attn_head_pair"];

export function interventions(s: DebuggerState) {
  const out = s.ablations.map(toIntervention);
  return { list: out.map((o) => o.intervention), approximated: out.some((o) => o.approximated) };
}

type AttributeInit = MessageInitShape<typeof AttributeRequestSchema>;

/** The loss: the logit difference, or a trace upstream from a node. Throws on a bad trace key. */
export function traceLoss(s: DebuggerState): AttributeInit["loss"] {
  if (!s.trace)
    return { case: "logitDiff", value: { target: { strings: s.target }, distractor: { strings: s.distractor } } };
  const k = parseKey(s.trace);
  const L = siteLayer(k.site) ?? 0;
  switch (keyKind(s.trace)) {
    case "mlp_neuron":
      return { case: "neuron", value: { layer: L, neuron: k.unit!, position: k.position } };
    case "attn_head":
    case "attn_head_pair":
      return {
        case: "head",
        value: { layer: L, head: k.unit!, queryPosition: k.position, keyPosition: k.keyPosition, through: THROUGH[s.through] },
      };
    case "sae_latent":
      return { case: "latent", value: { sae: siteSae(k.site)!, latent: k.unit!, position: k.position } };
    default:
      throw new Error(
        `cannot trace ${JSON.stringify(s.trace)}: trace a neuron (blocks.L.mlp.hook_post[N,pos=P]), ` +
          `a head (blocks.L.attn.hook_pattern[H,pos=Q,key=K]) or an SAE latent (sae.ID.hook_sae_acts_post[I,pos=P])`,
      );
  }
}

export function attributeRequest(s: DebuggerState, extra: Omit<AttributeInit, "$typeName"> = {}): AttributeRequest {
  return create(AttributeRequestSchema, {
    model: s.model,
    prompt: { input: { case: "text", value: s.prompt } },
    secondPrompt: s.prompt2 ? { input: { case: "text", value: s.prompt2 } } : undefined,
    interventions: interventions(s).list,
    topK: s.k,
    families: s.sae ? [...BASE_FAMILIES, "sae_latent"] : BASE_FAMILIES,
    loss: traceLoss(s),
    ...extra,
  });
}

/** The position whose next-token logits the logits card shows. */
export function logitPosition(s: DebuggerState): number {
  if (!s.trace) return -1;
  try {
    return parseKey(s.trace).position ?? -1;
  } catch {
    return -1;
  }
}

export const F32 = DType.DTYPE_FLOAT32;
