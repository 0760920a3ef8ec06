'use strict';
/**
 * Node.js client for the TDB interpretability service.
 *
 * The .proto files are loaded at runtime from the repository's protos/ directory (or
 * `options.protoRoot`), so this client follows the contract without generated code.
 *
 *   const { TdbClient } = require('tdb-client');
 *   const c = new TdbClient('localhost:50051');
 *   const out = await c.forward(['When Mary and John went to the store'],
 *                               { capture: ['blocks.0.attn.hook_pattern'] });
 *   out.activations['blocks.0.attn.hook_pattern'].data;   // Float32Array
 *   out.activations['blocks.0.attn.hook_pattern'].shape;  // [1, 4, 9, 9]
 *   c.close();
 *
 * Node keys (`blocks.1.mlp.hook_post[42,pos=5]`, ...) parse and print as on the server:
 *   parseNode('blocks.0.attn.hook_pattern[head=3,pos=14,key=2]').key  // '...[3,pos=14,key=2]'
 *   parseSelector(key).toIntervention()  // {site, units, positions, keyPositions} for `zero: {}`
 *
 * Stored explanations, every page followed (up to `limit`):
 *   const list = await c.listExplanations({ nodePrefix: 'blocks.1.mlp.hook_post[', limit: 500 });
 *
 * Several replicas: `new TdbClient(['h1:50051', 'h2:50051'])` or a target such as
 * 'dns:///tdb.default.svc.cluster.local:50051'; calls are balanced round-robin and retried on
 * UNAVAILABLE (every RPC except LoadSae), like the Python client.
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['model', 'inference', 'attribution', 'sae', 'explain', 'server']
  .map((n) => `tdb/v1/${n}.proto`);
const NOT_RETRIED = new Set(['tdb.v1.SaeService/LoadSae']);
const MAX_ATTEMPTS = 5;
/** The most explanations one ListExplanations request may ask for (the server's bound). */
const MAX_LIST_PAGE = 10000;

/** An RPC failure: `code` is the gRPC status code number, `codeName` its name. */
class TdbClientError extends Error {
  constructor(err) {
    const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || 'UNKNOWN';
    super(`${codeName}: ${err.details || err.message}`);
    this.name = 'TdbClientError';
    this.code = err.code;
    this.codeName = codeName;
    this.details = err.details || err.message;
    const rid = err.metadata && err.metadata.get('x-request-id');
    this.requestId = rid && rid.length ? String(rid[0]) : undefined;
  }
}

const BYTES_PER_ELEMENT = {
  DTYPE_FLOAT32: 4, DTYPE_FLOAT16: 2, DTYPE_BFLOAT16: 2, DTYPE_FLOAT64: 8,
  DTYPE_INT64: 8, DTYPE_INT32: 4, DTYPE_BOOL: 1,
};

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/**
 * Decode a Tensor's bytes (little-endian, C order) into a typed array.
 * float16 and bfloat16 widen to Float32Array (exactly); int64 becomes BigInt64Array.
 */
function decodeTensor(dtype, shape, bytes, owned = false) {
  const n = shape.reduce((a, b) => a * b, 1);
  const width = BYTES_PER_ELEMENT[dtype];
  if (width === undefined) throw new Error(`unknown dtype ${dtype}`);
  if (bytes.length !== n * width) {
    throw new Error(`tensor of shape [${shape}] and ${dtype} needs ${n * width} bytes, got ${bytes.length}`);
  }
  // A buffer of our own (a reassembled stream) is used in place; other bytes are copied into a
  // fresh, aligned buffer: a Buffer's offset need not be a multiple of the width.
  let buf;
  if (owned && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength) {
    buf = bytes.buffer;
  } else {
    buf = new ArrayBuffer(bytes.length);
    new Uint8Array(buf).set(bytes);
  }
  const view = new DataView(buf);
  switch (dtype) {
    case 'DTYPE_FLOAT32': return new Float32Array(buf);
    case 'DTYPE_FLOAT64': return new Float64Array(buf);
    case 'DTYPE_INT32': return new Int32Array(buf);
    case 'DTYPE_INT64': return new BigInt64Array(buf);
    case 'DTYPE_BOOL': return new Uint8Array(buf);
    case 'DTYPE_FLOAT16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i += 1) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return out;
    }
    case 'DTYPE_BFLOAT16': {
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i += 1) bits[i] = view.getUint16(2 * i, true) << 16;
      return new Float32Array(bits.buffer);
    }
    default: throw new Error(`unknown dtype ${dtype}`);
  }
}

/** Every Tensor message (an object with dtype, shape and data) inside a decoded message. */
function* tensorsOf(msg) {
  if (msg === null || typeof msg !== 'object' || ArrayBuffer.isView(msg)) return;
  if (Array.isArray(msg)) {
    for (const m of msg) yield* tensorsOf(m);
    return;
  }
  if ('dtype' in msg && 'shape' in msg && 'data' in msg) {
    yield msg;
    return;
  }
  for (const v of Object.values(msg)) yield* tensorsOf(v);
}

/**
 * Reassembles the tensors a header streams as TensorChunk messages: each is allocated once at
 * its size (from its shape and dtype) and every chunk is copied into place. A stream that
 * overruns its tensor, or ends short of it, is an error rather than a wrong array.
 */
class StreamAssembler {
  constructor(header) {
    this.header = header;
    this.streams = new Map(); // stream id -> {bytes, filled}
    for (const t of tensorsOf(header)) {
      if (!t.streamId) continue; // ids start at 1; unset means the data is inline
      const width = BYTES_PER_ELEMENT[t.dtype];
      if (width === undefined) throw new Error(`unknown dtype ${t.dtype}`);
      const n = t.shape.reduce((a, b) => a * Number(b), 1);
      this.streams.set(t.streamId, { bytes: new Uint8Array(n * width), filled: 0 });
    }
  }

  /** Copy a chunk ({streamId, data}) into its tensor. */
  add(chunk) {
    const s = this.streams.get(chunk.streamId);
    if (!s) throw new Error(`chunk for unknown stream id ${chunk.streamId}`);
    const end = s.filled + chunk.data.length;
    if (end > s.bytes.length) {
      throw new Error(`stream ${chunk.streamId} sent ${end} bytes for a tensor of ${s.bytes.length}`);
    }
    s.bytes.set(chunk.data, s.filled);
    s.filled = end;
  }

  /** A header Tensor as {data: typed array, shape}, from its stream or its inline bytes. */
  tensor(t) {
    const s = t.streamId ? this.streams.get(t.streamId) : undefined;
    if (!s) return { data: decodeTensor(t.dtype, t.shape, t.data), shape: t.shape.slice() };
    if (s.filled !== s.bytes.length) {
      throw new Error(`stream ${t.streamId} ended after ${s.filled} of ${s.bytes.length} bytes`);
    }
    return { data: decodeTensor(t.dtype, t.shape, s.bytes, true), shape: t.shape.slice() };
  }
}

/** Encode a Float32Array (or number[]) as a float32 Tensor message. */
function float32Tensor(values, shape) {
  const arr = values instanceof Float32Array ? values : Float32Array.from(values);
  return { dtype: 'DTYPE_FLOAT32', shape: shape || [arr.length],
           data: Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength) };
}

function promptMessage(p) {
  return typeof p === 'string' ? { text: p } : { tokenIds: { ids: Array.from(p) } };
}

function serviceConfig(pkg) {
  const names = [];
  for (const svc of ['ModelService', 'InferenceService', 'AttributionService', 'SaeService',
    'ExplainService', 'ServerService']) {
    for (const method of Object.keys(pkg[svc].service)) {
      const rpc = pkg[svc].service[method];
      if (rpc.originalName !== method) continue; // each RPC appears twice (camelCase alias)
      const full = `tdb.v1.${svc}/${method}`;
      if (!NOT_RETRIED.has(full)) names.push({ service: `tdb.v1.${svc}`, method });
    }
  }
  return JSON.stringify({
    loadBalancingConfig: [{ round_robin: {} }],
    methodConfig: [{
      name: names,
      retryPolicy: {
        maxAttempts: MAX_ATTEMPTS, initialBackoff: '0.05s', maxBackoff: '2s',
        backoffMultiplier: 2, retryableStatusCodes: ['UNAVAILABLE'],
      },
    }],
  });
}

function channelTarget(target) {
  const list = Array.isArray(target) ? target
    : (typeof target === 'string' && target.includes(',') && !target.includes('://')
      && !/^ipv[46]:/.test(target)) ? target.split(',') : null;
  if (!list) return target;
  // grpc-js resolves each name of an ipv4:/ipv6: list verbatim, so only IP literals go there.
  const v6 = list.every((a) => a.trim().startsWith('['));
  return `${v6 ? 'ipv6' : 'ipv4'}:${list.map((a) => a.trim()).join(',')}`;
}

class TdbClient {
  /**
   * @param {string|string[]} target 'host:port', a gRPC target URI, or several 'ip:port' replicas.
   * @param {object} [options]
   * @param {number} [options.timeout=60] per-call deadline, seconds.
   * @param {string} [options.token] bearer token (sent as `authorization: Bearer <token>`).
   * @param {boolean|object} [options.tls] true for TLS with system roots, or
   *   {rootCa, clientCert, clientKey} (PEM Buffers) for a private CA and mutual TLS.
   * @param {string} [options.protoRoot] directory holding tdb/v1/*.proto.
   */
  constructor(target = 'localhost:50051', options = {}) {
    this.timeout = options.timeout ?? 60;
    this.metadata = new grpc.Metadata();
    if (options.token) this.metadata.set('authorization', `Bearer ${options.token}`);
    const def = protoLoader.loadSync(PROTO_FILES, {
      includeDirs: [options.protoRoot || DEFAULT_PROTO_ROOT],
      keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true,
    });
    const pkg = grpc.loadPackageDefinition(def).tdb.v1;
    let creds = grpc.credentials.createInsecure();
    if (options.tls) {
      const t = options.tls === true ? {} : options.tls;
      creds = grpc.credentials.createSsl(t.rootCa || null, t.clientKey || null, t.clientCert || null);
    }
    const channelOptions = {
      'grpc.service_config': serviceConfig(pkg),
      'grpc.enable_retries': 1,
      ...(options.channelOptions || {}),
    };
    const address = channelTarget(target);
    this.models = new pkg.ModelService(address, creds, channelOptions);
    const channel = this.models.getChannel();
    const shared = { ...channelOptions, channelOverride: channel };
    this.inference = new pkg.InferenceService(address, creds, shared);
    this.attribution = new pkg.AttributionService(address, creds, shared);
    this.saes = new pkg.SaeService(address, creds, shared);
    this.explain = new pkg.ExplainService(address, creds, shared);
    this.server = new pkg.ServerService(address, creds, shared);
  }

  close() {
    this.models.close();
  }

  _deadline(timeout) {
    return new Date(Date.now() + 1000 * (timeout ?? this.timeout));
  }

  _unary(stub, method, request, timeout) {
    return new Promise((resolve, reject) => {
      stub[method](request, this.metadata, { deadline: this._deadline(timeout) }, (err, res) => {
        if (err) reject(new TdbClientError(err)); else resolve(res);
      });
    });
  }

  /** Read a header-then-chunks stream; returns {header, tensor(msg) -> typed array}. */
  _stream(stub, method, request, timeout) {
    return new Promise((resolve, reject) => {
      const call = stub[method](request, this.metadata, { deadline: this._deadline(timeout) });
      let assembler = null;
      let failed = false;
      call.on('data', (msg) => {
        if (failed) return;
        try {
          if (msg.part === 'header') assembler = new StreamAssembler(msg.header);
          else if (msg.part === 'chunk') {
            if (!assembler) throw new Error('chunk before header in response stream');
            assembler.add(msg.chunk);
          }
        } catch (err) {
          failed = true;
          call.cancel();
          reject(err);
        }
      });
      call.on('error', (err) => { if (!failed) reject(new TdbClientError(err)); });
      call.on('end', () => {
        if (failed) return;
        if (!assembler) { reject(new Error('the stream ended without a header')); return; }
        resolve({ header: assembler.header, tensor: (t) => assembler.tensor(t) });
      });
    });
  }

  // -- ServerService / ModelService
  /** Version, models with limits and SAEs, enabled features, services and RPCs. */
  serverInfo(timeout) {
    return this._unary(this.server, 'ServerInfo', {}, timeout);
  }

  /** [{name, architecture, source, isDefault}] */
  async listModels(timeout) {
    return (await this._unary(this.models, 'ListModels', {}, timeout)).models;
  }

  /** A model's sizes and node schema (every hook site with dims and sizes). */
  modelInfo(model = '', timeout) {
    return this._unary(this.models, 'GetModelInfo', { model }, timeout);
  }

  /** Token ids of each text: number[][]. */
  async tokenize(texts, { model = '', prependBos } = {}, timeout) {
    const req = { model, texts: Array.isArray(texts) ? texts : [texts] };
    if (prependBos !== undefined) req.prependBos = prependBos;
    const res = await this._unary(this.models, 'Tokenize', req, timeout);
    return res.prompts.map((p) => p.tokenIds);
  }

  // -- ExplainService
  /**
   * One page of stored and shipped explanations (ListExplanations as it is):
   * {explanations, methods, defaultMethod, datasets, nextOffset}. `nextOffset` is the `offset`
   * of the next page when more explanations match (the page ended at `limit` or at the server's
   * response limit), 0 on the last page. Filters (empty: everything): model, sae, node (a node
   * key or Node; a positioned key matches its unit), nodePrefix, method, minScore; `limit`
   * (server default 100, at most 10000) and `offset`. An explanation without a score has
   * `score: null` (and says why in `scoreReason`).
   */
  async listExplanationsPage({ model = '', sae = '', node = '', nodePrefix = '', method = '',
    minScore, limit, offset = 0 } = {}, timeout) {
    const req = {
      model, sae, node: typeof node === 'string' ? node : node.key, nodePrefix, method, offset,
    };
    if (minScore !== undefined && minScore !== null) req.minScore = minScore;
    if (limit !== undefined) req.limit = limit;
    const r = await this._unary(this.explain, 'ListExplanations', req, timeout);
    return {
      explanations: r.explanations.map(explanationOf), methods: r.methods,
      defaultMethod: r.defaultMethod, datasets: r.datasets, nextOffset: r.nextOffset,
    };
  }

  /**
   * Every explanation matching the filters (those of `listExplanationsPage`), up to `limit`
   * (default 100) after `offset`, following the server's pages by `nextOffset` as the Python
   * client's `list_explanations` does. `pageSize` caps each request (default and most: the
   * server's 10000; the server still ends a page early at its response limit).
   * @returns {Promise<object[]>} Explanation messages, in the catalog's order.
   */
  async listExplanations({ limit = 100, offset = 0, pageSize, ...filters } = {}, timeout) {
    if (!Number.isInteger(limit) || limit < 0) throw new Error('limit must be an integer >= 0');
    if (!Number.isInteger(offset) || offset < 0) throw new Error('offset must be an integer >= 0');
    if (pageSize !== undefined && (!Number.isInteger(pageSize) || pageSize < 1)) {
      throw new Error('pageSize must be an integer >= 1');
    }
    const out = [];
    if (limit === 0) return out;
    let next = offset;
    for (;;) {
      const want = limit - out.length;
      const page = await this.listExplanationsPage(
        { ...filters, offset: next, limit: Math.min(pageSize ?? MAX_LIST_PAGE, MAX_LIST_PAGE, want) },
        timeout);
      out.push(...page.explanations);
      next = page.nextOffset;
      if (!next || out.length >= limit || !page.explanations.length) return out;
    }
  }

  // -- InferenceService
  /**
   * Run prompts (strings or token-id arrays) and read activations.
   * @returns {Promise<{model, tokens, tokenIds, topLogits, activations, positions, dims}>}
   *   activations[site] = {data: Float32Array, shape: number[]}.
   */
  async forward(prompts, { model = '', capture = [], positions = [], topK = 10,
    interventions = [], prependBos, loss, grad = [], freezeNormScale } = {}, timeout) {
    const list = typeof prompts === 'string' || (prompts.length && typeof prompts[0] === 'number')
      ? [prompts] : prompts;
    const asCapture = (c) => (typeof c === 'string' ? { site: c, positions } : c);
    const req = {
      model, prompts: list.map(promptMessage), topK, interventions,
      captures: capture.map(asCapture),
      gradCaptures: grad.map(asCapture),
    };
    if (loss !== undefined) req.loss = loss;
    if (freezeNormScale !== undefined) req.freezeNormScale = freezeNormScale;
    if (prependBos !== undefined) req.prependBos = prependBos;
    const { header, tensor } = await this._stream(this.inference, 'Forward', req, timeout);
    const out = {
      model: header.model,
      tokens: header.prompts.map((p) => p.tokens),
      tokenIds: header.prompts.map((p) => p.tokenIds),
      topLogits: header.topLogits.map((p) => p.positions),
      activations: {}, positions: {}, dims: {},
    };
    for (const c of header.captures) {
      out.activations[c.site] = tensor(c.values);
      out.positions[c.site] = tensor(c.positions);
      out.dims[c.site] = c.dims;
    }
    out.grads = {};
    for (const c of header.gradCaptures || []) out.grads[c.site] = tensor(c.values);
    out.lossValues = header.lossValues || [];
    return out;
  }

  /**
   * Logit lens: the residual at each layer and position read through the final norm (`scale`
   * 'recomputed' or 'frozen') and the unembedding.
   * @returns {Promise<{model, site, scale, tokens, layers, positions, grid}>} grid[i][j] is the
   *   cell {layer, position, tokenIds, tokens, logits, probs} of layers[i] at positions[j].
   */
  async logitLens(prompt, { model = '', layers = [], positions = [], topK = 5,
    scale = 'recomputed', site = 'hook_resid_post', prependBos } = {}, timeout) {
    const scales = { recomputed: 'LENS_SCALE_RECOMPUTED', frozen: 'LENS_SCALE_FROZEN' };
    if (!scales[scale]) throw new Error("scale must be 'recomputed' or 'frozen'");
    const req = { model, prompt: promptMessage(prompt), layers, positions, topK, site,
      scale: scales[scale] };
    if (prependBos !== undefined) req.prependBos = prependBos;
    const r = await this._unary(this.inference, 'LogitLens', req, timeout);
    const n = r.positions.length;
    return {
      model: r.model, site: r.site, scale: r.scale === 'LENS_SCALE_FROZEN' ? 'frozen' : 'recomputed',
      tokens: r.prompt.tokens, layers: r.layers, positions: r.positions,
      grid: r.layers.map((_, i) => r.cells.slice(i * n, (i + 1) * n)),
    };
  }

  /**
   * Parameters by TransformerLens name or glob ('W_E', 'blocks.0.attn.W_Q', '*'), sliced by
   * `heads`/`neurons`, and folded `views` ({kind: 'neuron_logits'|'head_ov'|'head_qk', layer,
   * unit, sourceToken?, destinationToken?}).
   * @returns {Promise<{model, values, dims, kept}>} values[name] = {data, shape}.
   */
  async weights(names = [], { model = '', heads = [], neurons = [], dtype, views = [] } = {},
    timeout) {
    const kinds = { neuron_logits: 'WEIGHT_VIEW_KIND_NEURON_LOGITS',
      head_ov: 'WEIGHT_VIEW_KIND_HEAD_OV', head_qk: 'WEIGHT_VIEW_KIND_HEAD_QK' };
    const dtypes = { float32: 'DTYPE_FLOAT32', float16: 'DTYPE_FLOAT16', bfloat16: 'DTYPE_BFLOAT16' };
    const req = {
      model, names: typeof names === 'string' ? [names] : names, heads, neurons,
      dtype: dtype ? dtypes[dtype] : 'DTYPE_UNSPECIFIED',
      views: views.map((v) => {
        if (!kinds[v.kind]) throw new Error('view kind must be neuron_logits, head_ov or head_qk');
        return { ...v, kind: kinds[v.kind] };
      }),
    };
    if (dtype && !dtypes[dtype]) throw new Error('dtype must be float32, float16 or bfloat16');
    const { header, tensor } = await this._stream(this.models, 'GetWeights', req, timeout);
    const out = { model: header.model, values: {}, dims: {}, kept: {} };
    for (const w of header.weights) {
      out.values[w.name] = tensor(w.values);
      out.dims[w.name] = w.dims;
      if (w.kept.length) out.kept[w.name] = w.kept;
    }
    return out;
  }

  /**
   * Generate from one prompt for a baseline and intervention sets side by side (one batch on the
   * server, KV-cached). `sets` maps a name to edits: an Intervention message object (e.g.
   * `{site: 'blocks.0.attn.hook_z', units: [1], zero: {}}`, or `parseSelector(key).toIntervention()`
   * with an op), `{steerLatent: {sae, latent, coeff}}` or `{clampLatent: {sae, latent, value}}`;
   * add `scope: 'generated'` (positions index generated tokens; none: every one) or `'prompt'`.
   * `onEvent(event)` sees each event as it streams: {start}, {step}, {finish}.
   * Returns a Promise of {start, steps, finish, texts} with a `cancel()` method that stops the
   * server before its next step. A step's rows[i] is null once row i has stopped; each row's
   * captures are {site: {data, shape}}.
   */
  generate(prompt, { model = '', sets = {}, maxNewTokens = 32, temperature = 0, topK = 0, topP,
    repetitionPenalty, seed, stop = [], stopTokenIds = [], stopAtEos = true, alternatives = 5,
    capture = [], prependBos, onEvent } = {}, timeout) {
    const sampling = { temperature, topK };
    if (topP !== undefined) sampling.topP = topP;
    if (repetitionPenalty !== undefined) sampling.repetitionPenalty = repetitionPenalty;
    if (seed !== undefined) sampling.seed = seed;
    const req = {
      model, prompt: promptMessage(prompt), maxNewTokens, sampling, stopStrings: stop,
      stopTokenIds, stopAtEos, topK: alternatives,
      sets: Object.entries(sets).map(([name, edits]) => ({ name, edits: edits.map(generateEdit) })),
      captures: capture.map((c) => (typeof c === 'string' ? { site: c } : c)),
    };
    if (prependBos !== undefined) req.prependBos = prependBos;
    const call = this.inference.Generate(req, this.metadata, { deadline: this._deadline(timeout) });
    const out = { start: null, steps: [], finish: null, texts: {} };
    const done = new Promise((resolve, reject) => {
      call.on('data', (msg) => {
        let event;
        if (msg.event === 'start') {
          out.start = msg.start;
          event = { start: msg.start };
        } else if (msg.event === 'step') {
          const step = {
            step: msg.step.step, position: msg.step.position,
            rows: msg.step.rows.map((r) => (r.active ? {
              token: r.token, top: r.top, finished: r.finished,
              captures: Object.fromEntries(r.captures.map((c) => [c.site, {
                data: decodeTensor(c.values.dtype, c.values.shape.map(Number), c.values.data),
                shape: c.values.shape.map(Number),
              }])),
            } : null)),
          };
          out.steps.push(step);
          event = { step };
        } else {
          out.finish = msg.finish;
          for (const r of msg.finish.rows) out.texts[r.name] = r.text;
          event = { finish: msg.finish };
        }
        if (onEvent) onEvent(event);
      });
      call.on('error', (err) => reject(new TdbClientError(err)));
      call.on('end', () => resolve(out));
    });
    done.cancel = () => call.cancel();
    return done;
  }
}

/** An Explanation message as decoded, with `score: null` where it is unset (proto3 optional). */
function explanationOf(e) {
  const { _score: has, ...rest } = e;
  return { ...rest, score: has === 'score' ? e.score : null };
}

const SCOPES = { all: 'GENERATE_SCOPE_ALL', prompt: 'GENERATE_SCOPE_PROMPT',
  generated: 'GENERATE_SCOPE_GENERATED' };

/** A GenerateEdit message from an intervention or a steering helper (see `generate`). */
function generateEdit(edit) {
  const { scope = 'all', ...rest } = edit;
  const enumScope = SCOPES[scope] || scope;
  if ('steerLatent' in rest || 'clampLatent' in rest || 'intervention' in rest) {
    return { scope: enumScope, ...rest };
  }
  return { scope: enumScope, intervention: rest };
}

/** Token lists for losses: strings (one token each) and ids. */
function tokensMessage(t) {
  const items = Array.isArray(t) ? t : [t];
  return { strings: items.filter((x) => typeof x === 'string'),
    ids: items.filter((x) => typeof x !== 'string') };
}

/** Loss messages for `forward({loss, grad})` (the tdb.v1.Loss oneof). */
const losses = {
  logitDiff: (target, distractor, position = -1) => ({
    logitDiff: { target: tokensMessage(target), distractor: tokensMessage(distractor), position },
  }),
  logProb: (target, position = -1) => ({ logProb: { target: tokensMessage(target), position } }),
  neuron: (layer, neuron, position = -1) => ({ neuron: { layer, neuron, position } }),
  direction: (site, vector, position = -1) => ({
    direction: { site, vector: float32Tensor(vector), position },
  }),
};

const nodes = require('./nodes');

module.exports = {
  TdbClient, TdbClientError, StreamAssembler, decodeTensor, float32Tensor, halfToFloat, losses,
  // node keys (nodes.js): parse and print as the server does
  Node: nodes.Node, NodeKind: nodes.NodeKind, NodeKeyError: nodes.NodeKeyError,
  Selector: nodes.Selector, parseNode: nodes.parseNode, parseSelector: nodes.parseSelector,
};
