// Node keys and selectors: printing and parsing per CONVENTIONS.md (issue 13), so the web app
// prints keys exactly as tdb_core and the other clients do.

import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { NodeSchema } from "../src/gen/tdb/v1/attribution_pb";
import {
  formatAblation,
  formatKey,
  keyKind,
  nodeKey,
  parseAblation,
  parseKey,
  parseSelector,
  shortLabel,
  toIntervention,
  unitKey,
} from "../src/lib/nodekey";

const node = (init: Parameters<typeof create<typeof NodeSchema>>[1]) => create(NodeSchema, init);

describe("nodeKey derives the canonical key from the Node fields", () => {
  it.each([
    [{ family: "embedding", position: 5 }, "blocks.0.hook_resid_pre[pos=5]", "embedding"],
    [{ family: "mlp_neuron", layer: 1, index: 42, position: 5 }, "blocks.1.mlp.hook_post[42,pos=5]", "mlp_neuron"],
    [{ family: "attn_head", layer: 0, index: 3, position: 14 }, "blocks.0.attn.hook_pattern[3,pos=14]", "attn_head"],
    [
      { family: "attn_head_pair", layer: 0, index: 3, position: 14, keyPosition: 2 },
      "blocks.0.attn.hook_pattern[3,pos=14,key=2]",
      "attn_head_pair",
    ],
    [{ family: "sae_latent", layer: 2, index: 7, position: 5, sae: "toy-res" }, "sae.toy-res.hook_sae_acts_post[7,pos=5]", "sae_latent"],
    [{ family: "sae_latent", index: 7, position: 0, sae: "a.b.c" }, "sae.a.b.c.hook_sae_acts_post[7,pos=0]", "sae_latent"],
  ] as const)("%j -> %s", (fields, key, kind) => {
    const k = nodeKey(node(fields));
    expect(k).toBe(key);
    expect(keyKind(k)).toBe(kind);
    expect(formatKey(parseKey(k))).toBe(k);
  });

  it("prefers the server's key when it sends one", () => {
    const n = { ...node({ family: "mlp_neuron", layer: 1, index: 42, position: 5 }), key: "blocks.1.mlp.hook_post[42,pos=6]" };
    expect(nodeKey(n)).toBe("blocks.1.mlp.hook_post[42,pos=6]");
  });

  it("refuses an unknown family", () => {
    expect(() => nodeKey(node({ family: "mystery" }))).toThrow(/unknown node family/);
  });
});

describe("keys", () => {
  it("drops positions for the unit-level key", () => {
    expect(unitKey("blocks.0.attn.hook_pattern[3,pos=14,key=2]")).toBe("blocks.0.attn.hook_pattern[3]");
    expect(unitKey("sae.toy-res.hook_sae_acts_post[7,pos=5]")).toBe("sae.toy-res.hook_sae_acts_post[7]");
  });
  it("classifies other sites", () => {
    expect(keyKind("blocks.2.hook_resid_post[17,pos=5]")).toBe("unit");
    expect(keyKind("blocks.2.hook_resid_post[pos=5]")).toBe("vector");
    expect(keyKind("blocks.1.mlp.hook_post[42]")).toBe("mlp_neuron");
  });
  it("prints short labels", () => {
    expect(shortLabel("blocks.1.mlp.hook_post[42,pos=5]")).toBe("L1 N42 @5");
    expect(shortLabel("blocks.0.attn.hook_pattern[3,pos=14,key=2]")).toBe("L0 H3 @14←2");
    expect(shortLabel("sae.toy-res.hook_sae_acts_post[7,pos=5]")).toBe("toy-res F7 @5");
    expect(shortLabel("blocks.0.hook_resid_pre[pos=5]")).toBe("emb @5");
  });
  it("parses the selector superset: aliases, lists, ranges, negatives", () => {
    expect(parseSelector("blocks.1.attn.hook_z[head=3,pos=-1]")).toEqual({ site: "blocks.1.attn.hook_z", units: [3], positions: [-1] });
    expect(parseSelector("blocks.1.mlp.hook_post[7|9,position=0:3]")).toEqual({
      site: "blocks.1.mlp.hook_post",
      units: [7, 9],
      positions: [0, 1, 2],
    });
    expect(parseSelector("blocks.0.attn.hook_pattern[3,pos=14,key=2]").keyPositions).toEqual([2]);
    expect(parseSelector("logits")).toEqual({ site: "logits" });
    expect(() => parseSelector("blocks.1.mlp.hook_post[bogus=1]")).toThrow(/unknown key/);
    expect(() => parseKey("blocks.1.mlp.hook_post[1|2]")).toThrow(/one unit/);
  });
});

describe("ablations", () => {
  it("round-trip through their URL form", () => {
    for (const text of ["blocks.0.attn.hook_pattern[0,pos=14]", "bwd:blocks.1.mlp.hook_post[3,pos=2]=1.5", "blocks.0.hook_resid_pre=-2"]) {
      expect(formatAblation(parseAblation(text))).toBe(text);
    }
    expect(parseAblation("blocks.1.mlp.hook_post[3]=0.5").op).toEqual({ kind: "set", value: 0.5 });
  });
  it("become interventions; head pairs are approximated until key_positions exists", () => {
    const { intervention, approximated } = toIntervention(parseAblation("blocks.0.attn.hook_pattern[0,pos=14]"));
    expect(intervention.site).toBe("blocks.0.attn.hook_pattern");
    expect(intervention.units).toEqual([0]);
    expect(intervention.positions).toEqual([14]);
    expect(intervention.op.case).toBe("zero");
    expect(approximated).toBe(false);
    const pair = toIntervention(parseAblation("blocks.0.attn.hook_pattern[0,pos=14,key=2]"));
    const has = "keyPositions" in pair.intervention;
    expect(pair.approximated).toBe(!has);
  });
});
