'use strict';
// Node keys against the shared case table tests/data/node_keys.json, which the server
// (tdb_core/nodes.py) and the Python client read too: all three parse and print alike.
// Needs no server and no packages: `node --test test/nodes.test.js`.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const {
  Node, Selector, NodeKeyError, parseNode, parseSelector, GRAMMAR, SELECTOR_GRAMMAR,
} = require('../nodes');

const CASES = JSON.parse(fs.readFileSync(
  path.resolve(__dirname, '..', '..', '..', 'tests', 'data', 'node_keys.json'), 'utf8',
));

// Runs fn with process.emitWarning recorded instead of printed: [result, warnings].
function recordingWarnings(fn) {
  const warnings = [];
  const original = process.emitWarning;
  process.emitWarning = (message, type) => warnings.push({ message, name: type });
  try {
    return [fn(), warnings];
  } finally {
    process.emitWarning = original;
  }
}

test('canonical keys parse to their fields and print back', () => {
  for (const c of CASES.nodes) {
    const n = parseNode(c.key);
    assert.deepEqual({
      key: n.key, site: n.site, unit: n.unit, position: n.position, key_position: n.keyPosition,
      kind: n.kind, layer: n.layer, sae_id: n.saeId, unit_node: n.unitNode().key,
    }, c, c.key);
    assert.equal(String(new Node(c.site, c.unit, c.position, c.key_position)), c.key);
    assert.equal(parseSelector(c.key).node().key, c.key);
  }
});

test('aliases normalize', () => {
  for (const c of CASES.aliases) assert.equal(parseNode(c.input).key, c.key, c.input);
});

test('old display names parse with a deprecation warning', () => {
  for (const c of CASES.legacy) {
    const [n, warnings] = recordingWarnings(() => parseNode(c.input));
    assert.equal(n.key, c.key);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].name, 'DeprecationWarning');
    assert.ok(warnings[0].message.includes(c.key));
  }
});

test('invalid keys are refused with the grammar', () => {
  for (const c of CASES.invalid_nodes) {
    assert.throws(() => parseNode(c.input), (e) => e instanceof NodeKeyError
      && e.message.includes(c.error) && e.message.includes(GRAMMAR), c.input);
  }
});

test('selectors', () => {
  for (const c of CASES.selectors) {
    const s = parseSelector(c.input);
    assert.deepEqual([s.site, s.units, s.positions, s.keyPositions],
      [c.site, c.units, c.positions, c.key_positions], c.input);
    assert.equal(s.key, c.key);
    assert.ok(s instanceof Selector);
  }
  for (const c of CASES.invalid_selectors) {
    assert.throws(() => parseSelector(c.input), (e) => e instanceof NodeKeyError
      && e.message.includes(c.error) && e.message.includes(SELECTOR_GRAMMAR), c.input);
  }
});
