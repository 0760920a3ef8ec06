'use strict';
// The Node.js client against a real server.
//
// With TDB_SERVER set (host:port), the tests use that server, with TDB_TOKEN and TDB_TLS_CA
// (a PEM path) when it is secured; TDB_EXPECTED names a JSON file with the Python client's
// activations for the same request, to compare against. Without TDB_SERVER a server is started:
// `python -m services.cli serve --port 0` from the repository root (TDB_PYTHON, default
// .venv/bin/python; TDB_SERVE_ARGS adds flags, e.g. "--model tiny=/path"). The explanation tests
// need at least 9 explanations in the served catalog (the toy model ships 2,354).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const readline = require('node:readline');

const {
  TdbClient, TdbClientError, StreamAssembler, decodeTensor, float32Tensor, losses,
} = require('..');

const ROOT = path.resolve(__dirname, '..', '..', '..');
let server = null;

function startServer() {
  const python = process.env.TDB_PYTHON || path.join(ROOT, '.venv', 'bin', 'python');
  const extra = (process.env.TDB_SERVE_ARGS || '').split(' ').filter(Boolean);
  const proc = spawn(python, ['-m', 'services.cli', 'serve', '--port', '0', ...extra], {
    cwd: ROOT, env: { ...process.env, TDB_LOG_FORMAT: 'json' }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stderr });
    const timer = setTimeout(() => reject(new Error('server did not start')), 120000);
    lines.on('line', (line) => {
      try {
        const event = JSON.parse(line);
        if (event.event === 'serving') { clearTimeout(timer); resolve({ proc, address: event.address }); }
      } catch { /* not a JSON line */ }
    });
    proc.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
}

async function client() {
  let address = process.env.TDB_SERVER;
  if (!address) {
    server = server || await startServer();
    address = server.address;
  }
  const options = { timeout: 60 };
  if (process.env.TDB_TOKEN) options.token = process.env.TDB_TOKEN;
  if (process.env.TDB_TLS_CA) options.tls = { rootCa: fs.readFileSync(process.env.TDB_TLS_CA) };
  return new TdbClient(address, options);
}

test.after(() => { if (server) server.proc.kill('SIGTERM'); });

test('streamed tensors reassemble in place; overrunning or short streams are errors', () => {
  const values = Float32Array.from({ length: 1000 }, (_, i) => i * 0.5 - 7);
  const bytes = Buffer.from(values.buffer);
  const streamed = { dtype: 'DTYPE_FLOAT32', shape: [10, 100], data: Buffer.alloc(0), streamId: 1 };
  const inline = {
    dtype: 'DTYPE_INT64', shape: [1], data: Buffer.from(new BigInt64Array([3n]).buffer), streamId: null,
  };
  const header = { captures: [{ site: 'x', values: streamed, positions: inline }] };
  const chunks = [];
  for (let i = 0; i < bytes.length; i += 1500) {
    chunks.push({ streamId: 1, data: bytes.subarray(i, i + 1500) });
  }
  const asm = new StreamAssembler(header);
  for (const c of chunks) asm.add(c);
  const got = asm.tensor(header.captures[0].values);
  assert.deepEqual(got.shape, [10, 100]);
  assert.deepEqual(Array.from(got.data), Array.from(values));
  assert.deepEqual(Array.from(asm.tensor(header.captures[0].positions).data), [3n]);
  const short = new StreamAssembler(header);
  for (const c of chunks.slice(0, -1)) short.add(c);
  assert.throws(() => short.tensor(header.captures[0].values), /ended after 3000 of 4000 bytes/);
  const over = new StreamAssembler(header);
  for (const c of chunks) over.add(c);
  assert.throws(() => over.add(chunks[0]), /sent 5500 bytes for a tensor of 4000/);
  assert.throws(() => over.add({ streamId: 9, data: Buffer.alloc(1) }), /unknown stream id 9/);
});

test('decodeTensor reads little-endian float32, float16, bfloat16 and int64', () => {
  const f32 = float32Tensor([1.5, -2, 0.25], [3]);
  assert.deepEqual(Array.from(decodeTensor(f32.dtype, f32.shape, f32.data)), [1.5, -2, 0.25]);
  // 1.0, -2.0, 0.5 in IEEE half precision: 0x3C00, 0xC000, 0x3800.
  const half = Buffer.from([0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38]);
  assert.deepEqual(Array.from(decodeTensor('DTYPE_FLOAT16', [3], half)), [1, -2, 0.5]);
  // bfloat16 is the upper half of a float32: 1.0 = 0x3F80, -3.0 = 0xC040.
  const bf = Buffer.from([0x80, 0x3f, 0x40, 0xc0]);
  assert.deepEqual(Array.from(decodeTensor('DTYPE_BFLOAT16', [2], bf)), [1, -3]);
  const i64 = Buffer.alloc(16);
  i64.writeBigInt64LE(-5n, 0); i64.writeBigInt64LE(7n, 8);
  assert.deepEqual(Array.from(decodeTensor('DTYPE_INT64', [2], i64)), [-5n, 7n]);
  assert.throws(() => decodeTensor('DTYPE_FLOAT32', [2], Buffer.alloc(4)), /needs 8 bytes/);
});

test('ListModels, GetModelInfo and ServerInfo describe the server', async () => {
  const c = await client();
  try {
    const models = await c.listModels();
    assert.ok(models.length >= 1);
    assert.equal(models.filter((m) => m.isDefault).length, 1);
    const info = await c.modelInfo(models[0].name);
    assert.ok(info.nLayers >= 1 && info.dModel >= 1);
    assert.ok(info.sites.some((s) => s.name === 'blocks.0.mlp.hook_post'));
    const server = await c.serverInfo();
    assert.ok(server.services.some((s) => s.name === 'tdb.v1.InferenceService'));
    assert.equal(server.models[0].name, models[0].name);
  } finally { c.close(); }
});

test('Forward reassembles captured activations into typed arrays', async () => {
  const c = await client();
  try {
    const prompt = 'When Mary and John went to the store, John gave a drink to';
    const site = 'blocks.0.mlp.hook_post';
    const out = await c.forward(prompt, { capture: [site, 'blocks.0.attn.hook_pattern'], topK: 5 });
    const info = await c.modelInfo(out.model);
    const n = out.tokenIds[0].length;
    const act = out.activations[site];
    assert.ok(act.data instanceof Float32Array);
    assert.deepEqual(act.shape, [1, n, info.dMlp]);
    assert.deepEqual(out.dims[site], ['batch', 'pos', 'd_mlp']);
    assert.ok(act.data.every(Number.isFinite));
    // Attention patterns are probabilities: each row sums to 1.
    const pat = out.activations['blocks.0.attn.hook_pattern'];
    const rows = pat.data.length / n;
    for (let r = 0; r < rows; r += 1) {
      const sum = pat.data.subarray(r * n, (r + 1) * n).reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(sum - 1) < 1e-5, `row ${r} sums to ${sum}`);
    }
    const top = out.topLogits[0][0];
    assert.equal(top.tokenIds.length, 5);
    for (let i = 1; i < 5; i += 1) assert.ok(top.logits[i - 1] >= top.logits[i]);
    if (process.env.TDB_EXPECTED) { // the Python client's numbers for the same request
      const expected = JSON.parse(fs.readFileSync(process.env.TDB_EXPECTED, 'utf8'));
      assert.deepEqual(out.tokenIds[0], expected.token_ids);
      assert.deepEqual(act.shape, expected.shape);
      expected.values.forEach((v, i) => assert.ok(Math.abs(act.data[i] - v) <= 1e-6 * (1 + Math.abs(v)),
        `element ${i}: ${act.data[i]} != ${v}`));
      assert.deepEqual(top.tokenIds, expected.top_ids);
    }
  } finally { c.close(); }
});

test('errors carry the status code', async () => {
  const c = await client();
  try {
    await assert.rejects(c.forward('hi', { model: 'no-such-model' }), (err) => {
      assert.ok(err instanceof TdbClientError);
      assert.equal(err.codeName, 'NOT_FOUND');
      assert.match(err.details, /no-such-model/);
      return true;
    });
  } finally { c.close(); }
});

test('Forward returns gradients of a loss; logits are unchanged', async () => {
  const c = await client();
  try {
    const prompt = 'When Mary and John went to the store, John gave a drink to';
    const site = 'blocks.0.hook_resid_pre';
    const plain = await c.forward(prompt, { capture: ['logits'], topK: 3 });
    const out = await c.forward(prompt, {
      capture: ['logits'], topK: 3, loss: losses.logitDiff(' Mary', ' John'), grad: [site],
    });
    assert.deepEqual(Array.from(out.activations.logits.data), Array.from(plain.activations.logits.data));
    const n = out.tokenIds[0].length;
    const g = out.grads[site];
    assert.equal(g.shape[0], 1);
    assert.equal(g.shape[1], n);
    assert.ok(g.data.some((x) => x !== 0) && g.data.every(Number.isFinite));
    assert.equal(out.lossValues.length, 1);
    // the loss is the logit difference the logits give
    const info = await c.modelInfo(out.model);
    const ids = await c.tokenize([' Mary', ' John'], { prependBos: false });
    const v = info.dVocab;
    const last = out.activations.logits.data.subarray((n - 1) * v, n * v);
    assert.ok(Math.abs(out.lossValues[0] - (last[ids[0][0]] - last[ids[1][0]])) < 1e-4);
    await assert.rejects(c.forward(prompt, { grad: [site] }), (err) => {
      assert.equal(err.codeName, 'INVALID_ARGUMENT');
      return true;
    });
  } finally { c.close(); }
});

test('LogitLens and GetWeights', async () => {
  const c = await client();
  try {
    const prompt = 'When Mary and John went to the store, John gave a drink to';
    const info = await c.modelInfo();
    const lens = await c.logitLens(prompt, { positions: [-1], topK: 2 });
    assert.equal(lens.layers.length, info.nLayers);
    assert.equal(lens.grid.length, info.nLayers);
    const fwd = await c.forward(prompt, { topK: 1 });
    // the last layer's recomputed lens is the model's own next-token prediction
    assert.equal(lens.grid[info.nLayers - 1][0].tokenIds[0], fwd.topLogits[0][0].tokenIds[0]);
    const w = await c.weights(['W_E', 'blocks.0.attn.W_Q'], {
      heads: [1], views: [{ kind: 'neuron_logits', layer: 0, unit: 3 }],
    });
    assert.deepEqual(w.values.W_E.shape, [info.dVocab, info.dModel]);
    assert.deepEqual(w.values['blocks.0.attn.W_Q'].shape, [1, info.dModel, info.dHead]);
    assert.deepEqual(w.kept['blocks.0.attn.W_Q'], [1]);
    assert.deepEqual(w.values['neuron_logits[blocks.0.mlp.W_out[3]]'].shape, [info.dVocab]);
    await assert.rejects(c.weights('W_Q'), (err) => err.codeName === 'NOT_FOUND');
  } finally { c.close(); }
});

test('Generate streams a baseline and an intervention set side by side', async () => {
  const c = await client();
  try {
    const seen = [];
    const out = await c.generate('When Mary and John went to the store', {
      sets: { zero: [{ site: 'blocks.0.attn.hook_z', units: [1], zero: {} }],
        late: [{ site: 'blocks.0.hook_resid_pre', scale: { factor: 0 }, scope: 'generated' }] },
      maxNewTokens: 3, alternatives: 2, stopAtEos: false,
      capture: [{ site: 'blocks.0.hook_resid_post', topK: { k: 3 } }],
      onEvent: (e) => seen.push(Object.keys(e)[0]),
    });
    assert.deepEqual(seen, ['start', 'step', 'step', 'step', 'finish']);
    assert.deepEqual(out.start.names, ['baseline', 'zero', 'late']);
    assert.equal(out.steps.length, 3);
    // the 'generated' scope starts at the first generated position: the first token is the baseline's
    assert.equal(out.steps[0].rows[2].token.tokenId, out.steps[0].rows[0].token.tokenId);
    for (const [i, row] of out.finish.rows.entries()) {
      assert.deepEqual(row.tokenIds, out.steps.map((s) => s.rows[i].token.tokenId));
      assert.equal(row.stopReason, 'STOP_REASON_MAX_NEW_TOKENS');
      assert.equal(out.texts[row.name], row.text);
    }
    const step = out.steps[0].rows[0];
    assert.equal(step.top.length, 2);
    assert.ok(step.token.logprob <= 0);
    assert.deepEqual(step.captures['blocks.0.hook_resid_post'].shape, [1, 1, 3]);
    await assert.rejects(c.generate('hi', { maxNewTokens: -1 }), (err) => {
      assert.equal(err.codeName, 'INVALID_ARGUMENT');
      return true;
    });
  } finally { c.close(); }
});

test('listExplanations follows nextOffset up to its limit; pages equal one long request', async () => {
  const c = await client();
  try {
    const first = await c.listExplanationsPage({ limit: 4 });
    assert.equal(first.explanations.length, 4, 'the served catalog needs at least 9 explanations');
    assert.equal(first.nextOffset, 4);
    assert.ok(first.methods.includes(first.defaultMethod));
    const all = await c.listExplanations({ limit: 30 });
    const n = all.length; // min(30, what the catalog holds)
    assert.ok(n >= 9, `${n} explanations served`);
    assert.deepEqual(all.slice(0, 4), first.explanations);
    for (const e of all) assert.ok(e.score === null || Number.isFinite(e.score), e.node);
    const second = await c.listExplanationsPage({ limit: 4, offset: 4 });
    assert.deepEqual(second.explanations, all.slice(4, 8));
    assert.equal(second.nextOffset, 8);
    // pages of 4: the same list, one request per page
    const pages = [];
    const page = c.listExplanationsPage.bind(c);
    c.listExplanationsPage = (req, t) => { pages.push([req.offset, req.limit]); return page(req, t); };
    assert.deepEqual(await c.listExplanations({ limit: 30, pageSize: 4 }), all);
    assert.equal(pages.length, Math.ceil(n / 4));
    assert.deepEqual(pages.slice(0, 2), [[0, 4], [4, 4]]);
    pages.length = 0;
    assert.deepEqual(await c.listExplanations({ offset: 3, limit: 6, pageSize: 4 }), all.slice(3, 9));
    assert.deepEqual(pages, [[3, 4], [7, 2]]);
    c.listExplanationsPage = page;
    const past = await c.listExplanationsPage({ offset: 50000, limit: 5 });
    assert.deepEqual([past.explanations, past.nextOffset], [[], 0]);
    // filters: a positioned key matches its unit's explanations
    const unit = all[0].node;
    const mine = await c.listExplanations({ node: `${unit.slice(0, -1)},pos=3]` });
    assert.ok(mine.length >= 1 && mine.every((e) => e.node === unit));
    assert.deepEqual(mine, all.filter((e) => e.node === unit && e.model === all[0].model
      && e.sae === all[0].sae));
    assert.deepEqual(await c.listExplanations({ limit: 0 }), []);
    // a limit over the server's 10000 per request is asked for in pages it accepts
    assert.deepEqual((await c.listExplanations({ limit: 25000 })).slice(0, n), all);
    await assert.rejects(c.listExplanations({ pageSize: 0 }), /pageSize must be an integer >= 1/);
    await assert.rejects(c.listExplanationsPage({ limit: 10001 }), (err) => {
      assert.equal(err.codeName, 'INVALID_ARGUMENT');
      return true;
    });
  } finally { c.close(); }
});
