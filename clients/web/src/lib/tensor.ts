// Tensors off the wire: Tensor{dtype, shape, data} (little-endian, C order), with streamed data
// reassembled from TensorChunk messages by stream id.

import { DType, type Tensor, type TensorChunk } from "../gen/tdb/v1/common_pb";

export interface NdArray {
  shape: number[];
  data: Float32Array;
}

function f16(bits: number): number {
  const s = bits & 0x8000 ? -1 : 1;
  const e = (bits >> 10) & 0x1f;
  const f = bits & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** Decode a tensor to float32 (float16/bfloat16/float64/ints converted). */
export function decode(t: Tensor, data: Uint8Array = t.data): NdArray {
  const shape = t.shape.map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out = new Float32Array(n);
  const read: Record<number, [number, (i: number) => number]> = {
    [DType.DTYPE_FLOAT32]: [4, (o) => view.getFloat32(o, true)],
    [DType.DTYPE_UNSPECIFIED]: [4, (o) => view.getFloat32(o, true)],
    [DType.DTYPE_FLOAT16]: [2, (o) => f16(view.getUint16(o, true))],
    [DType.DTYPE_BFLOAT16]: [2, (o) => new Float32Array(new Uint32Array([view.getUint16(o, true) << 16]).buffer)[0]],
    [DType.DTYPE_FLOAT64]: [8, (o) => view.getFloat64(o, true)],
    [DType.DTYPE_INT64]: [8, (o) => Number(view.getBigInt64(o, true))],
    [DType.DTYPE_INT32]: [4, (o) => view.getInt32(o, true)],
    [DType.DTYPE_BOOL]: [1, (o) => view.getUint8(o)],
  };
  const [size, get] = read[t.dtype] ?? read[DType.DTYPE_FLOAT32];
  if (data.byteLength !== n * size)
    throw new Error(`tensor of shape [${shape}] has ${data.byteLength} bytes, expected ${n * size}`);
  for (let i = 0; i < n; i++) out[i] = get(i * size);
  return { shape, data: out };
}

/** Collects streamed chunks by id; `get` decodes a tensor whether streamed or inline. */
export class ChunkStore {
  private parts = new Map<number, Uint8Array[]>();

  add(chunk: TensorChunk) {
    const list = this.parts.get(chunk.streamId) ?? [];
    list.push(chunk.data);
    this.parts.set(chunk.streamId, list);
  }

  get(t: Tensor): NdArray {
    if (t.streamId === undefined) return decode(t);
    const list = this.parts.get(t.streamId) ?? [];
    const total = list.reduce((a, b) => a + b.byteLength, 0);
    const buf = new Uint8Array(total);
    let off = 0;
    for (const p of list) {
      buf.set(p, off);
      off += p.byteLength;
    }
    return decode(t, buf);
  }
}

/** Element at a multi-index of a C-order array. */
export function at(a: NdArray, ...idx: number[]): number {
  let flat = 0;
  for (let i = 0; i < a.shape.length; i++) flat = flat * a.shape[i] + (idx[i] ?? 0);
  return a.data[flat];
}
