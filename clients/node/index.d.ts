// Type declarations for the TDB Node.js client (index.js).

export interface TlsOptions {
  rootCa?: Buffer;
  clientCert?: Buffer;
  clientKey?: Buffer;
}

export interface ClientOptions {
  /** Per-call deadline in seconds (default 60). */
  timeout?: number;
  /** Bearer token, sent as `authorization: Bearer <token>`. */
  token?: string;
  /** true: TLS with the system's roots; or a private CA and a client certificate. */
  tls?: boolean | TlsOptions;
  /** Directory holding tdb/v1/*.proto (default: the repository's protos/). */
  protoRoot?: string;
  channelOptions?: Record<string, unknown>;
}

export interface TensorArray {
  data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;
  shape: number[];
}

export interface ModelSummary {
  name: string;
  architecture: string;
  source: string;
  isDefault: boolean;
}

export interface TopLogits {
  position: number;
  tokenIds: number[];
  tokens: string[];
  logits: number[];
  probs: number[];
}

export interface ForwardResult {
  model: string;
  tokens: string[][];
  tokenIds: number[][];
  topLogits: TopLogits[][];
  activations: Record<string, TensorArray>;
  positions: Record<string, TensorArray>;
  dims: Record<string, string[]>;
  /** With a loss: d(loss)/d(site) per grad capture, and each prompt's loss. */
  grads: Record<string, TensorArray>;
  lossValues: number[];
}

export interface LensCell {
  layer: number;
  position: number;
  tokenIds: number[];
  tokens: string[];
  logits: number[];
  probs: number[];
}

export interface LensResult {
  model: string;
  site: string;
  scale: 'recomputed' | 'frozen';
  tokens: string[];
  layers: number[];
  positions: number[];
  grid: LensCell[][];
}

export interface WeightView {
  kind: 'neuron_logits' | 'head_ov' | 'head_qk';
  layer: number;
  unit: number;
  sourceToken?: number;
  destinationToken?: number;
}

export interface WeightsResult {
  model: string;
  values: Record<string, TensorArray>;
  dims: Record<string, string[]>;
  kept: Record<string, number[]>;
}

/** A tdb.v1.Loss message (one variant set), as built by `losses`. */
export type Loss = Record<string, unknown>;

export const losses: {
  logitDiff(target: string | number | Array<string | number>,
            distractor: string | number | Array<string | number>, position?: number): Loss;
  logProb(target: string | number | Array<string | number>, position?: number): Loss;
  neuron(layer: number, neuron: number, position?: number): Loss;
  direction(site: string, vector: Float32Array | number[], position?: number): Loss;
};

export interface ForwardOptions {
  model?: string;
  capture?: Array<string | Record<string, unknown>>;
  positions?: number[];
  topK?: number;
  interventions?: Array<Record<string, unknown>>;
  prependBos?: boolean;
  /** Gradients: a loss (see `losses`) and the sites whose d(loss)/d(site) is returned. */
  loss?: Loss;
  grad?: Array<string | Record<string, unknown>>;
  freezeNormScale?: boolean;
}

/** A stored or shipped explanation (tdb.v1.Explanation). */
export interface Explanation {
  model: string;
  /** SAE id for latents, else empty. */
  sae: string;
  /** The unit-level node key, e.g. "blocks.1.mlp.hook_post[42]". */
  node: string;
  method: string;
  explainer: string;
  explanation: string;
  /** Pooled correlation (neurons, latents) or ROC AUC (heads); null when it could not be scored. */
  score: number | null;
  /** Why there is no score. */
  scoreReason: string;
  scoresJson: string;
  recordsUsedJson: string;
  /** Unix times. */
  createdAt: number;
  updatedAt: number;
}

/** ListExplanations filters; empty fields match everything. */
export interface ExplanationFilters {
  model?: string;
  sae?: string;
  /** A node key or Node; a positioned key matches its unit's explanations. */
  node?: string | Node;
  nodePrefix?: string;
  method?: string;
  minScore?: number;
}

export interface ExplanationPage {
  explanations: Explanation[];
  /** Methods the server can run (for ExplainNode) and its default. */
  methods: string[];
  defaultMethod: string;
  /** Datasets registered on the server. */
  datasets: string[];
  /** The offset of the next page when more explanations match; 0 on the last page. */
  nextOffset: number;
}

export class TdbClientError extends Error {
  code: number;
  codeName: string;
  details: string;
  requestId?: string;
}

export class TdbClient {
  constructor(target?: string | string[], options?: ClientOptions);
  close(): void;
  serverInfo(timeout?: number): Promise<Record<string, any>>;
  listModels(timeout?: number): Promise<ModelSummary[]>;
  modelInfo(model?: string, timeout?: number): Promise<Record<string, any>>;
  tokenize(texts: string | string[], options?: { model?: string; prependBos?: boolean },
           timeout?: number): Promise<number[][]>;
  forward(prompts: string | number[] | Array<string | number[]>, options?: ForwardOptions,
          timeout?: number): Promise<ForwardResult>;
  logitLens(prompt: string | number[], options?: { model?: string; layers?: number[];
            positions?: number[]; topK?: number; scale?: 'recomputed' | 'frozen'; site?: string;
            prependBos?: boolean }, timeout?: number): Promise<LensResult>;
  weights(names?: string | string[], options?: { model?: string; heads?: number[];
          neurons?: number[]; dtype?: 'float32' | 'float16' | 'bfloat16'; views?: WeightView[] },
          timeout?: number): Promise<WeightsResult>;
  /** One ListExplanations page as the server returns it (`limit`: server default 100, at most
   *  10000); `nextOffset` is where the next page starts, 0 on the last. */
  listExplanationsPage(options?: ExplanationFilters & { limit?: number; offset?: number },
                       timeout?: number): Promise<ExplanationPage>;
  /** Every matching explanation up to `limit` (default 100) after `offset`, following the
   *  server's pages by `nextOffset`; `pageSize` caps each request (at most and by default 10000). */
  listExplanations(options?: ExplanationFilters & { limit?: number; offset?: number;
                   pageSize?: number }, timeout?: number): Promise<Explanation[]>;
  /** Generate under interventions, a baseline and each set side by side; `cancel()` stops it. */
  generate(prompt: string | number[], options?: GenerateOptions, timeout?: number):
    Promise<GenerateResult> & { cancel(): void };
}

/** An edit of a generation set: an Intervention message's fields, or a steering helper. */
export type GenerateEdit = Record<string, any> & { scope?: 'all' | 'prompt' | 'generated' };

export interface GenerateOptions {
  model?: string;
  /** name -> edits, e.g. {zero: [{site: 'blocks.0.attn.hook_z', units: [1], zero: {}}]},
   *  {steer: [{steerLatent: {sae: 'toy-res', latent: 467, coeff: 48}}]} */
  sets?: Record<string, GenerateEdit[]>;
  maxNewTokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  seed?: number;
  stop?: string[];
  stopTokenIds?: number[];
  stopAtEos?: boolean;
  /** Alternatives reported per token (default 5). */
  alternatives?: number;
  capture?: Array<string | Record<string, any>>;
  prependBos?: boolean;
  onEvent?: (event: { start?: any; step?: GenerateStep; finish?: any }) => void;
}

export interface TokenChoice { tokenId: number; token: string; logprob: number }

export interface GenerateStep {
  step: number;
  position: number;
  /** One per row (baseline first); null once the row has stopped. */
  rows: Array<{ token: TokenChoice; top: TokenChoice[]; finished: string;
    captures: Record<string, { data: Float32Array | Float64Array | Int32Array | BigInt64Array
      | Uint8Array; shape: number[] }> } | null>;
}

export interface GenerateResult {
  start: { model: string; prompt: { tokenIds: number[]; tokens: string[] }; names: string[];
    seed?: number };
  steps: GenerateStep[];
  finish: { rows: Array<{ name: string; tokenIds: number[]; text: string; stopReason: string }>;
    steps: number; seconds: number };
  /** Each row's final text by name ("baseline" first). */
  texts: Record<string, string>;
}

export function decodeTensor(dtype: string, shape: number[], bytes: Uint8Array, owned?: boolean):
  Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array;

/** Reassembles a header's streamed tensors; overrunning or short streams throw. */
export class StreamAssembler {
  constructor(header: Record<string, any>);
  header: Record<string, any>;
  add(chunk: { streamId: number; data: Uint8Array }): void;
  tensor(t: { dtype: string; shape: number[]; data: Uint8Array; streamId?: number | null }):
    { data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array; shape: number[] };
}
export function float32Tensor(values: Float32Array | number[], shape?: number[]):
  { dtype: string; shape: number[]; data: Buffer };
export function halfToFloat(bits: number): number;

// -- node keys (nodes.js): parsed and printed exactly as the server and the Python client do

export type NodeKindValue = 'embedding' | 'mlp_neuron' | 'attn_head' | 'attn_head_pair'
  | 'sae_latent' | 'unit' | 'vector';

export const NodeKind: Readonly<{
  EMBEDDING: 'embedding'; MLP_NEURON: 'mlp_neuron'; ATTN_HEAD: 'attn_head';
  ATTN_HEAD_PAIR: 'attn_head_pair'; SAE_LATENT: 'sae_latent'; UNIT: 'unit'; VECTOR: 'vector';
}>;

/** A key or selector that does not parse; the message shows the grammar. */
export class NodeKeyError extends Error {}

/** A site (or glob) and the units, positions and key positions selected on it (null: all). */
export class Selector {
  constructor(site: string, units?: number[] | null, positions?: number[] | null,
              keyPositions?: number[] | null);
  readonly site: string;
  readonly units: number[] | null;
  readonly positions: number[] | null;
  readonly keyPositions: number[] | null;
  /** The canonical text, e.g. "blocks.1.attn.hook_z[3,pos=-1]". */
  readonly key: string;
  /** The node this selector names; throws NodeKeyError if it selects several. */
  node(): Node;
  /** Fields of an Intervention message. */
  toIntervention(): { site: string; units: number[]; positions: number[]; keyPositions: number[] };
}

/** A node: (site, unit, position, keyPosition); its key is SITE[UNIT,pos=P,key=K]. */
export class Node {
  constructor(site: string, unit?: number | null, position?: number | null,
              keyPosition?: number | null);
  readonly site: string;
  readonly unit: number | null;
  readonly position: number | null;
  readonly keyPosition: number | null;
  readonly key: string;
  readonly kind: NodeKindValue;
  readonly layer: number | null;
  readonly saeId: string | null;
  /** The node without its positions: what explanations describe. */
  unitNode(): Node;
  at(position: number, key?: number | null): Node;
  selector(): Selector;
}

/** Parse a node key (or, deprecated, an old display name such as "mlp_L1_N42@5"). */
export function parseNode(text: string): Node;
/** Parse a selector (lists 7|9, ranges 0:4, aliases head=, pos=, key=; a node key is one). */
export function parseSelector(text: string): Selector;
