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
}

export interface ForwardOptions {
  model?: string;
  capture?: Array<string | Record<string, unknown>>;
  positions?: number[];
  topK?: number;
  interventions?: Array<Record<string, unknown>>;
  prependBos?: boolean;
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
