// Canonical node keys and selectors, as /work/notes/CONVENTIONS.md (issue 13) defines them.
//
// A node is (site, unit, position, key_position). Its key prints as SITE[PARTS] with PARTS, in
// order, the unit as a bare integer, `pos=P`, `key=K`; absent parts are left out. A selector is
// the superset used by interventions: lists `7|9`, ranges `0:4` (end exclusive), negative
// positions, unit aliases (head=, neuron=, unit=, latent=, channel=, token=) and `position=`.
//
// nodeKey() is the one place the app turns a Node message into a key: it returns `node.key` when
// the server sends it (the field arrives with the node-vocabulary change) and otherwise derives
// it from the older fields (family, layer, index, position, key_position, sae).

import { create } from "@bufbuild/protobuf";
import type { Node } from "../gen/tdb/v1/attribution_pb";
import { type Intervention, InterventionSchema, Pass } from "../gen/tdb/v1/common_pb";

export type NodeKind =
  | "embedding"
  | "mlp_neuron"
  | "attn_head"
  | "attn_head_pair"
  | "sae_latent"
  | "unit"
  | "vector";

export interface ParsedKey {
  site: string;
  unit?: number;
  position?: number;
  keyPosition?: number;
}

export const UNIT_ALIASES = ["unit", "neuron", "head", "channel", "latent", "token"] as const;
const SAE_SUFFIX = ".hook_sae_acts_post";

/** The fields a Node message has on every version of the contract. */
type NodeFields = Pick<Node, "family" | "layer" | "position" | "index" | "keyPosition" | "sae"> & {
  key?: string;
};

/** Print a node key: SITE[unit,pos=P,key=K], absent parts left out. */
export function formatKey(k: ParsedKey): string {
  const parts: string[] = [];
  if (k.unit !== undefined) parts.push(String(k.unit));
  if (k.position !== undefined) parts.push(`pos=${k.position}`);
  if (k.keyPosition !== undefined) parts.push(`key=${k.keyPosition}`);
  return parts.length ? `${k.site}[${parts.join(",")}]` : k.site;
}

/** The canonical key of a node-table node (the server's `key` when it sends one). */
export function nodeKey(node: NodeFields): string {
  if (node.key) return node.key;
  return formatKey(keyParts(node));
}

/** The node's key without positions: what explanations and activation records are keyed by. */
export function unitKey(key: string): string {
  const k = parseKey(key);
  return formatKey({ site: k.site, unit: k.unit });
}

function keyParts(node: NodeFields): ParsedKey {
  const L = node.layer ?? 0;
  switch (node.family) {
    case "embedding":
      return { site: "blocks.0.hook_resid_pre", position: node.position };
    case "mlp_neuron":
      return { site: `blocks.${L}.mlp.hook_post`, unit: node.index, position: node.position };
    case "attn_head":
      return { site: `blocks.${L}.attn.hook_pattern`, unit: node.index, position: node.position };
    case "attn_head_pair":
      return {
        site: `blocks.${L}.attn.hook_pattern`,
        unit: node.index,
        position: node.position,
        keyPosition: node.keyPosition,
      };
    case "sae_latent":
      return { site: `sae.${node.sae}${SAE_SUFFIX}`, unit: node.index, position: node.position };
    default:
      throw new Error(`unknown node family ${JSON.stringify(node.family)}`);
  }
}

/** The kind of the node a key names. */
export function keyKind(key: string): NodeKind {
  const k = parseKey(key);
  if (k.site === "blocks.0.hook_resid_pre" && k.unit === undefined) return "embedding";
  if (/^blocks\.\d+\.mlp\.hook_post$/.test(k.site) && k.unit !== undefined) return "mlp_neuron";
  if (/^blocks\.\d+\.attn\.hook_pattern$/.test(k.site) && k.unit !== undefined)
    return k.keyPosition === undefined ? "attn_head" : "attn_head_pair";
  if (k.site.startsWith("sae.") && k.site.endsWith(SAE_SUFFIX) && k.unit !== undefined)
    return "sae_latent";
  return k.unit === undefined ? "vector" : "unit";
}

/** Layer of a blocks.L.* site, else undefined. */
export function siteLayer(site: string): number | undefined {
  const m = /^blocks\.(\d+)\./.exec(site);
  return m ? Number(m[1]) : undefined;
}

/** SAE id of an sae.ID.hook_* site (ids may contain dots: split from the right). */
export function siteSae(site: string): string | undefined {
  if (!site.startsWith("sae.")) return undefined;
  const i = site.lastIndexOf(".hook_");
  return i > 4 ? site.slice(4, i) : undefined;
}

/** A short label: L1 N42 @5, L0 H3 @14←2, toy-res F7 @5, emb @5. */
export function shortLabel(key: string): string {
  const k = parseKey(key);
  const at = k.position !== undefined ? ` @${k.position}` : "";
  const L = siteLayer(k.site);
  switch (keyKind(key)) {
    case "embedding":
      return `emb${at}`;
    case "mlp_neuron":
      return `L${L} N${k.unit}${at}`;
    case "attn_head":
      return `L${L} H${k.unit}${at}`;
    case "attn_head_pair":
      return `L${L} H${k.unit}${at}←${k.keyPosition}`;
    case "sae_latent":
      return `${siteSae(k.site)} F${k.unit}${at}`;
    default:
      return key;
  }
}

// ---------------------------------------------------------------------------------------------
// Selectors

export interface Selector {
  site: string;
  units?: number[];
  positions?: number[];
  keyPositions?: number[];
}

const SELECTOR = /^\s*([^[\]\s]+)\s*(?:\[(.*)\])?\s*$/;

function ints(text: string): number[] {
  const out: number[] = [];
  for (const raw of text.split("|")) {
    const part = raw.trim();
    const range = /^(-?\d+):(-?\d+)$/.exec(part);
    if (range) {
      for (let i = Number(range[1]); i < Number(range[2]); i++) out.push(i);
    } else if (/^-?\d+$/.test(part)) {
      out.push(Number(part));
    } else {
      throw new Error(`not an integer, range or list: ${JSON.stringify(part)}`);
    }
  }
  return out;
}

/** Parse SITE[entries]; throws an Error naming the accepted syntax. */
export function parseSelector(text: string): Selector {
  const m = SELECTOR.exec(text);
  if (!m) throw new Error(`cannot parse ${JSON.stringify(text)}: expected SITE or SITE[3,pos=-1]`);
  const sel: Selector = { site: m[1] };
  if (m[2] === undefined) return sel;
  try {
    for (const raw of m[2].split(",")) {
      const entry = raw.trim();
      if (!entry) continue;
      const eq = entry.lastIndexOf("=");
      const name = eq < 0 ? "unit" : entry.slice(0, eq).trim() || "unit";
      const values = ints(eq < 0 ? entry : entry.slice(eq + 1));
      if ((UNIT_ALIASES as readonly string[]).includes(name))
        sel.units = [...(sel.units ?? []), ...values];
      else if (name === "pos" || name === "position" || name === "positions")
        sel.positions = [...(sel.positions ?? []), ...values];
      else if (name === "key") sel.keyPositions = [...(sel.keyPositions ?? []), ...values];
      else throw new Error(`unknown key ${JSON.stringify(name)}`);
    }
  } catch (e) {
    throw new Error(
      `cannot parse ${JSON.stringify(text)} (${(e as Error).message}); keys: ` +
        `${UNIT_ALIASES.join(", ")}, pos, key; values: 3, 0:4 or 1|3`,
    );
  }
  return sel;
}

/** Parse a canonical node key (one unit, at most one position and one key position). */
export function parseKey(text: string): ParsedKey {
  const s = parseSelector(text);
  const one = (xs: number[] | undefined, what: string) => {
    if (xs === undefined) return undefined;
    if (xs.length !== 1) throw new Error(`a node key names one ${what}: ${JSON.stringify(text)}`);
    return xs[0];
  };
  return {
    site: s.site,
    unit: one(s.units, "unit"),
    position: one(s.positions, "position"),
    keyPosition: one(s.keyPositions, "key position"),
  };
}

// ---------------------------------------------------------------------------------------------
// Interventions from selectors

export type AblationOp = { kind: "zero" } | { kind: "set"; value: number };

/** One entry of the active-ablations list, as stored in the URL. */
export interface Ablation {
  selector: string;
  op: AblationOp;
  backward: boolean;
}

/** Whether the contract has Intervention.key_positions (it arrives with issue 13). */
export const HAS_KEY_POSITIONS = "keyPositions" in create(InterventionSchema);

/**
 * The Intervention for an ablation. Head pairs (key=K) need Intervention.key_positions; until the
 * contract has it, the whole head is ablated at its query position and `approximated` says so.
 */
export function toIntervention(a: Ablation): { intervention: Intervention; approximated: boolean } {
  const sel = parseSelector(a.selector);
  const msg = create(InterventionSchema, {
    site: sel.site,
    positions: sel.positions ?? [],
    units: sel.units ?? [],
    pass: a.backward ? Pass.BACKWARD : Pass.FORWARD,
    op:
      a.op.kind === "zero"
        ? { case: "zero", value: {} }
        : { case: "setValue", value: { value: a.op.value } },
  });
  let approximated = false;
  if (sel.keyPositions?.length) {
    if (HAS_KEY_POSITIONS) (msg as unknown as { keyPositions: number[] }).keyPositions = sel.keyPositions;
    else approximated = true;
  }
  return { intervention: msg, approximated };
}

/** URL form of an ablation: [bwd:]SELECTOR[=VALUE] (no value: zero). */
export function formatAblation(a: Ablation): string {
  const v = a.op.kind === "set" ? `=${a.op.value}` : "";
  return `${a.backward ? "bwd:" : ""}${a.selector}${v}`;
}

export function parseAblation(text: string): Ablation {
  let rest = text.trim();
  const backward = rest.startsWith("bwd:");
  if (backward) rest = rest.slice(4);
  const m = /^(.*\])\s*=\s*(-?[\d.]+(?:e-?\d+)?)$/i.exec(rest) ?? /^([^[\]=]+)=(-?[\d.]+(?:e-?\d+)?)$/i.exec(rest);
  if (m) return { selector: m[1], op: { kind: "set", value: Number(m[2]) }, backward };
  return { selector: rest, op: { kind: "zero" }, backward };
}
