'use strict';
/**
 * Node keys and selectors, parsed and printed exactly as the server does (tdb_core/nodes.py; the
 * Python client's tdb_client/nodes.py is the same). The shared case table
 * tests/data/node_keys.json holds all three to the same behaviour.
 *
 * A node is (site, unit, position, keyPosition); its key is SITE[PARTS], PARTS in this order: the
 * unit as a bare integer, pos=P, key=K (absent parts left out):
 *
 *   blocks.1.mlp.hook_post[42]                  neuron 42 (what explanations describe)
 *   blocks.1.mlp.hook_post[42,pos=5]            neuron 42 at token 5 (a node-table row)
 *   blocks.0.attn.hook_pattern[3,pos=14,key=2]  head 3, query 14, key 2 (a head pair)
 *   sae.toy-res.hook_sae_acts_post[7,pos=5]     SAE latent 7 at token 5
 *   blocks.0.hook_resid_pre[pos=5]              the embedding at token 5
 *
 * Selectors are the superset: lists 7|9, ranges 0:4 (end excluded), negative positions, unit
 * aliases (head=, neuron=, unit=, latent=, channel=, token=), pos= (or position=), key= and
 * site globs. Old display names (mlp_L1_N42@5, attn_L0_H0@14<-2, ...) still parse, with a
 * deprecation warning (process.emitWarning).
 */

const NodeKind = Object.freeze({
  EMBEDDING: 'embedding',
  MLP_NEURON: 'mlp_neuron',
  ATTN_HEAD: 'attn_head',
  ATTN_HEAD_PAIR: 'attn_head_pair',
  SAE_LATENT: 'sae_latent',
  UNIT: 'unit',
  VECTOR: 'vector',
});

const GRAMMAR = "a node key is SITE or SITE[UNIT,pos=P,key=K] (parts optional, in this order), e.g. "
  + "'blocks.1.mlp.hook_post[42,pos=5]' or 'blocks.0.attn.hook_pattern[3,pos=14,key=2]'";
const SELECTOR_GRAMMAR = 'a selector is SITE or SITE[UNITS,pos=POSITIONS,key=KEYS], each a number, '
  + 'a range a:b (b excluded) or a list 1|3, e.g. \'blocks.1.attn.hook_z[head=3,pos=-1]\'; units '
  + 'may be written unit=, head=, neuron=, latent=, channel= or token=, positions pos= or position=';
const UNIT_NAMES = ['unit', 'head', 'neuron', 'latent', 'channel', 'token'];
const POSITION_NAMES = ['pos', 'position', 'positions'];
const KEY_NAMES = ['key'];
const SAE_HOOKS = ['hook_sae_input', 'hook_sae_acts_pre', 'hook_sae_acts_post', 'hook_sae_recons',
  'hook_sae_error'];
const EMBEDDING_SITE = 'blocks.0.hook_resid_pre';

const SELECTOR_RE = /^([^[\] \t\n\r\f\v]+)[ \t\n\r\f\v]*(?:\[([\s\S]*)\])?$/;
const SITE_RE = /^[A-Za-z0-9_.-]+$/;
const SITE_GLOB_RE = /^[A-Za-z0-9_.\-*?]+$/;
const INT_RE = /^-?\d+$/;
const RANGE_RE = /^(-?\d+)[ \t\n\r\f\v]*:[ \t\n\r\f\v]*(-?\d+)$/;
const LAYER_RE = /^blocks\.(\d+)\./;
const MLP_POST_RE = /^blocks\.\d+\.mlp\.hook_post$/;
const PATTERN_RE = /^blocks\.\d+\.attn\.hook_pattern$/;
const KEYED_RE = /^blocks\.\d+\.attn\.(hook_pattern|hook_attn_scores)$/;

/** A key or selector that does not parse; the message shows the grammar. */
class NodeKeyError extends Error {
  constructor(message) {
    super(message);
    this.name = 'NodeKeyError';
  }
}

function error(what, text, grammar) {
  return new NodeKeyError(`cannot parse '${text}': ${what}; ${grammar}`);
}

// Python's str.strip(): ASCII whitespace only (JavaScript's trim() also strips Unicode spaces).
function strip(s) {
  return s.replace(/^[ \t\n\r\f\v]+|[ \t\n\r\f\v]+$/g, '');
}

/** [saeId, hook] of an SAE site name (split from the right: ids may contain dots), or null. */
function splitSaeSite(name) {
  for (const hook of SAE_HOOKS) {
    const suffix = `.${hook}`;
    if (name.startsWith('sae.') && name.endsWith(suffix) && name.length > 4 + suffix.length) {
      return [name.slice(4, name.length - suffix.length), hook];
    }
  }
  return null;
}

/** "1|3|5", with runs of three or more consecutive integers as ranges ("0:4"). */
function formatInts(values) {
  const out = [];
  let i = 0;
  while (i < values.length) {
    let j = i;
    while (j + 1 < values.length && values[j + 1] === values[j] + 1) j += 1;
    if (j - i >= 2) out.push(`${values[i]}:${values[j] + 1}`);
    else for (let t = i; t <= j; t += 1) out.push(String(values[t]));
    i = j + 1;
  }
  return out.join('|');
}

function parseInts(value, text, grammar) {
  const out = [];
  for (const raw of value.split('|')) {
    const item = strip(raw);
    const m = RANGE_RE.exec(item);
    if (m) {
      const a = parseInt(m[1], 10);
      const b = parseInt(m[2], 10);
      if (a >= b) throw error(`the range '${item}' is empty (a:b needs a < b)`, text, grammar);
      for (let v = a; v < b; v += 1) out.push(v);
    } else if (INT_RE.test(item)) {
      out.push(parseInt(item, 10));
    } else {
      throw error(`'${item}' is not a number, a range a:b or a list 1|3`, text, grammar);
    }
  }
  return out;
}

/** A site (or glob) and the units, positions and key positions selected on it (null: all). */
class Selector {
  constructor(site, units = null, positions = null, keyPositions = null) {
    this.site = site;
    this.units = units;
    this.positions = positions;
    this.keyPositions = keyPositions;
    Object.freeze(this);
  }

  /** The canonical text. */
  get key() {
    const parts = [];
    if (this.units !== null) parts.push(formatInts(this.units));
    if (this.positions !== null) parts.push(`pos=${formatInts(this.positions)}`);
    if (this.keyPositions !== null) parts.push(`key=${formatInts(this.keyPositions)}`);
    return parts.length ? `${this.site}[${parts.join(',')}]` : this.site;
  }

  toString() { return this.key; }

  /** The node this selector names; NodeKeyError if it selects several. */
  node() { return nodeOf(this, this.key); }

  /** Fields of an Intervention message (site, units, positions, keyPositions). */
  toIntervention() {
    return {
      site: this.site,
      units: this.units || [],
      positions: this.positions || [],
      keyPositions: this.keyPositions || [],
    };
  }
}

function check(site, unit, position, key, text) {
  if (!SITE_RE.test(site)) throw error(`'${site}' is not a site name`, text, GRAMMAR);
  if (unit !== null && unit < 0) throw error('units are non-negative', text, GRAMMAR);
  if (key !== null && (unit === null || position === null || !KEYED_RE.test(site))) {
    throw error('key= (a key position) needs an attention scores or pattern site, a unit (the '
      + 'head) and pos= (the query position)', text, GRAMMAR);
  }
}

function formatNode(n) {
  const parts = [];
  if (n.unit !== null) parts.push(String(n.unit));
  if (n.position !== null) parts.push(`pos=${n.position}`);
  if (n.keyPosition !== null) parts.push(`key=${n.keyPosition}`);
  return parts.length ? `${n.site}[${parts.join(',')}]` : n.site;
}

/** A node: (site, unit, position, keyPosition); absent parts are null. */
class Node {
  constructor(site, unit = null, position = null, keyPosition = null) {
    this.site = site;
    this.unit = unit;
    this.position = position;
    this.keyPosition = keyPosition;
    check(site, unit, position, keyPosition, formatNode(this));
    Object.freeze(this);
  }

  /** The canonical key, e.g. "blocks.1.mlp.hook_post[42,pos=5]". */
  get key() { return formatNode(this); }

  toString() { return this.key; }

  /** One of NodeKind's values, derived from the site. */
  get kind() {
    if (this.unit === null) {
      return this.site === EMBEDDING_SITE ? NodeKind.EMBEDDING : NodeKind.VECTOR;
    }
    if (MLP_POST_RE.test(this.site)) return NodeKind.MLP_NEURON;
    if (PATTERN_RE.test(this.site)) {
      return this.keyPosition === null ? NodeKind.ATTN_HEAD : NodeKind.ATTN_HEAD_PAIR;
    }
    const sae = splitSaeSite(this.site);
    if (sae !== null && sae[1] === 'hook_sae_acts_post') return NodeKind.SAE_LATENT;
    return NodeKind.UNIT;
  }

  /** The block of the node's site, or null (sites outside the blocks, SAE sites). */
  get layer() {
    const m = LAYER_RE.exec(this.site);
    return m ? parseInt(m[1], 10) : null;
  }

  /** The SAE id of an SAE site, or null. */
  get saeId() {
    const sae = splitSaeSite(this.site);
    return sae === null ? null : sae[0];
  }

  /** The node without its positions: what explanations describe. */
  unitNode() { return new Node(this.site, this.unit); }

  /** This unit at a (query) position, and optionally a key position. */
  at(position, key = null) { return new Node(this.site, this.unit, position, key); }

  /** The intervention selector that picks exactly this node. */
  selector() {
    const one = (v) => (v === null ? null : [v]);
    return new Selector(this.site, one(this.unit), one(this.position), one(this.keyPosition));
  }
}

const LEGACY = [
  [/^embed@(\d+)$/, (g) => new Node(EMBEDDING_SITE, null, +g[1])],
  [/^mlp_L(\d+)_N(\d+)@(\d+)$/, (g) => new Node(`blocks.${+g[1]}.mlp.hook_post`, +g[2], +g[3])],
  [/^attn_L(\d+)_H(\d+)@(\d+)(?:<-(\d+))?$/, (g) => new Node(`blocks.${+g[1]}.attn.hook_pattern`,
    +g[2], +g[3], g[4] === undefined ? null : +g[4])],
  [/^sae_([A-Za-z0-9_.-]+)_F(\d+)@(\d+)$/, (g) => new Node(`sae.${g[1]}.hook_sae_acts_post`, +g[2], +g[3])],
];

/** The node an old display name (mlp_L1_N42@5, ...) names, without warning; null otherwise. */
function legacyNode(text) {
  if (typeof text !== 'string') return null;
  const s = strip(text);
  for (const [re, make] of LEGACY) {
    const m = re.exec(s);
    if (m) return make(m);
  }
  return null;
}

function warnLegacy(text, node) {
  process.emitWarning(`node name '${strip(text)}' is deprecated and will stop parsing in the next `
    + `release; use its key '${node.key}'`, 'DeprecationWarning');
}

function parse(text, grammar, glob) {
  if (typeof text !== 'string') {
    throw new NodeKeyError(`expected a string, got ${typeof text}; ${grammar}`);
  }
  const m = SELECTOR_RE.exec(strip(text));
  if (!m) throw error('expected SITE or SITE[...]', text, grammar);
  const site = m[1];
  const body = m[2];
  if (!(glob ? SITE_GLOB_RE : SITE_RE).test(site)) {
    throw error(`'${site}' is not a site name`, text, grammar);
  }
  if (body === undefined) return new Selector(site);
  let units = null;
  let positions = null;
  let keys = null;
  for (const raw of body.split(',')) {
    const part = strip(raw);
    if (!part) throw error('an empty part between the brackets', text, grammar);
    const eq = part.indexOf('=');
    const name = eq >= 0 ? strip(part.slice(0, eq)) : 'unit';
    const value = eq >= 0 ? part.slice(eq + 1) : part;
    const ints = parseInts(value, text, grammar);
    if (UNIT_NAMES.includes(name)) {
      if (ints.some((u) => u < 0)) throw error('units are non-negative', text, grammar);
      units = (units || []).concat(ints);
    } else if (POSITION_NAMES.includes(name)) {
      positions = (positions || []).concat(ints);
    } else if (KEY_NAMES.includes(name)) {
      keys = (keys || []).concat(ints);
    } else {
      throw error(`unknown part '${name}='`, text, grammar);
    }
  }
  return new Selector(site, units, positions, keys);
}

function nodeOf(sel, text) {
  const many = [['units', sel.units], ['positions', sel.positions],
    ['key positions', sel.keyPositions]]
    .filter(([, values]) => values !== null && values.length !== 1).map(([what]) => what);
  if (many.length) {
    throw error('a node has one unit, one position and one key position at most, this names '
      + `several ${many.join(' and ')} (a selector, not a node)`, text, GRAMMAR);
  }
  const one = (values) => (values === null ? null : values[0]);
  const [unit, position, key] = [one(sel.units), one(sel.positions), one(sel.keyPositions)];
  check(sel.site, unit, position, key, text);
  return new Node(sel.site, unit, position, key);
}

/** Parse a selector (a node key is one); NodeKeyError shows the grammar. */
function parseSelector(text) {
  const old = legacyNode(text);
  if (old !== null) {
    warnLegacy(text, old);
    return old.selector();
  }
  return parse(text, SELECTOR_GRAMMAR, true);
}

/** Parse a node key (or, deprecated, an old display name); NodeKeyError shows the grammar. */
function parseNode(text) {
  const old = legacyNode(text);
  if (old !== null) {
    warnLegacy(text, old);
    return old;
  }
  return nodeOf(parse(text, GRAMMAR, false), text);
}

module.exports = {
  NodeKind, Node, Selector, NodeKeyError, parseNode, parseSelector, legacyNode, splitSaeSite,
  GRAMMAR, SELECTOR_GRAMMAR,
};
