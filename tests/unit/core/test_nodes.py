"""Node keys: the shared case table (tests/data/node_keys.json, also read by the Python and Node
clients' tests), kinds, conversions, round trips, and forward-order locations of the schema."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tdb_core import nodes, schema
from tdb_core.errors import InvalidArgumentError
from tdb_core.nodes import Node, NodeKind, Selector, parse_node, parse_selector

ROOT = Path(__file__).resolve().parents[3]
CASES = json.loads((ROOT / "tests" / "data" / "node_keys.json").read_text())


def _fields(n: Node) -> dict:
    return dict(
        key=n.key,
        site=n.site,
        unit=n.unit,
        position=n.position,
        key_position=n.key_position,
        kind=str(n.kind),
        layer=n.layer,
        sae_id=n.sae_id,
        unit_node=n.unit_node().key,
    )


@pytest.mark.parametrize("case", CASES["nodes"], ids=lambda c: c["key"])
def test_canonical_keys_parse_to_their_fields_and_print_back(case):
    """Every canonical key parses to the table's fields and prints back unchanged; building the
    node from its fields gives the same node."""
    n = parse_node(case["key"])
    assert _fields(n) == case
    assert str(n) == case["key"]
    assert Node(case["site"], case["unit"], case["position"], case["key_position"]) == n
    assert parse_selector(case["key"]).node() == n


@pytest.mark.parametrize("case", CASES["aliases"], ids=lambda c: c["input"])
def test_aliases_normalize(case):
    assert parse_node(case["input"]).key == case["key"]


@pytest.mark.parametrize("case", CASES["legacy"], ids=lambda c: c["input"])
def test_old_display_names_parse_with_a_deprecation_warning(case):
    """The node-table names of the last release parse to the same node, with a DeprecationWarning
    naming the key to use, and are still the node's display label."""
    with pytest.warns(DeprecationWarning, match="deprecated") as w:
        n = parse_node(case["input"])
    assert n.key == case["key"] and case["key"] in str(w[0].message)
    assert n.label == case["input"].strip()
    with pytest.warns(DeprecationWarning):
        assert parse_selector(case["input"]) == n.selector()
    assert nodes.legacy_node(case["input"]) == n


@pytest.mark.parametrize("case", CASES["invalid_nodes"], ids=lambda c: c["input"])
def test_invalid_keys_are_refused_with_the_grammar(case):
    with pytest.raises(InvalidArgumentError) as e:
        parse_node(case["input"])
    assert case["error"] in str(e.value)
    assert "SITE[UNIT,pos=P,key=K]" in str(e.value), "the message shows the grammar"


@pytest.mark.parametrize("case", CASES["selectors"], ids=lambda c: c["input"])
def test_selectors(case):
    """The selector superset parses to its lists, prints canonically, and round-trips."""
    sel = parse_selector(case["input"])

    def lst(v):
        return None if v is None else list(v)

    assert (sel.site, lst(sel.units), lst(sel.positions), lst(sel.key_positions)) == (
        case["site"],
        case["units"],
        case["positions"],
        case["key_positions"],
    )
    assert sel.key == case["key"] and parse_selector(sel.key) == sel


@pytest.mark.parametrize("case", CASES["invalid_selectors"], ids=lambda c: c["input"])
def test_invalid_selectors(case):
    with pytest.raises(InvalidArgumentError) as e:
        parse_selector(case["input"])
    assert case["error"] in str(e.value) and "SITE[UNITS,pos=POSITIONS,key=KEYS]" in str(e.value)


def test_kinds_constructors_and_conversions():
    """Kinds follow the site; at/unit_node/selector move between a unit and its positioned nodes."""
    head = nodes.attn_head(0, 3)
    assert head.kind is NodeKind.ATTN_HEAD and head.key == "blocks.0.attn.hook_pattern[3]"
    pair = head.at(14, key=2)
    assert pair.kind is NodeKind.ATTN_HEAD_PAIR and pair.unit_node() == head
    assert pair.selector() == Selector("blocks.0.attn.hook_pattern", (3,), (14,), (2,))
    assert nodes.embedding(5).kind is NodeKind.EMBEDDING and nodes.embedding(5).layer == 0
    assert nodes.mlp_neuron(1, 42, 5).label == "mlp_L1_N42@5"
    latent = nodes.sae_latent("res.v2", 7, 5)
    assert latent.kind is NodeKind.SAE_LATENT and latent.sae_id == "res.v2" and latent.layer is None
    assert Node("blocks.1.hook_resid_pre", None, 5).kind is NodeKind.VECTOR
    assert Node("blocks.1.attn.hook_z", 2, 5).kind is NodeKind.UNIT
    assert [k.value for k in NodeKind][:5] == [
        "embedding",
        "mlp_neuron",
        "attn_head",
        "attn_head_pair",
        "sae_latent",
    ]
    with pytest.raises(InvalidArgumentError, match="key= "):
        Node("blocks.1.mlp.hook_post", 1, 2, 3)
    with pytest.raises(InvalidArgumentError, match="several units"):
        parse_selector("blocks.1.mlp.hook_post[1|2]").node()


_site = st.sampled_from(
    [
        "blocks.0.hook_resid_pre",
        "blocks.3.mlp.hook_post",
        "blocks.1.attn.hook_pattern",
        "blocks.2.attn.hook_attn_scores",
        "sae.a.b-c.hook_sae_acts_post",
        "logits",
    ]
)
_opt = st.one_of(st.none(), st.integers(-50, 50))


@given(_site, st.one_of(st.none(), st.integers(0, 5000)), _opt, _opt)
def test_every_node_round_trips_through_its_key(site, unit, position, key):
    try:
        n = Node(site, unit, position, key)
    except InvalidArgumentError:
        assert key is not None
        return
    assert parse_node(n.key) == n and parse_selector(n.key).node() == n


@given(st.lists(st.integers(-20, 20), min_size=1, max_size=12))
def test_position_lists_round_trip(values):
    sel = Selector("blocks.0.hook_resid_pre", None, tuple(values))
    assert parse_selector(sel.key) == sel


def test_node_client_reads_the_same_table():
    """clients/node/nodes.js passes the same case table (node --test; it needs no packages)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node")
    r = subprocess.run(
        [node, "--test", "test/nodes.test.js"],
        cwd=ROOT / "clients" / "node",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# fail 0" in r.stdout


# --------------------------------------------------------------------------------------------------
# Forward order


def test_locations_follow_site_kinds_and_order_the_schema(tiny_runner):
    """A model's sites are listed in location order; embeddings come first, blocks by layer then
    kind, the final norm and logits last; locations of site kinds follow SITE_KINDS."""
    s = tiny_runner.schema
    locs = [s.location(x.name) for x in s.sites]
    assert locs == sorted(locs) and len(set(locs)) == len(locs)
    assert s.sites[0].name == "hook_embed" and s.sites[-1].name == "logits"
    assert schema.location("hook_pos_embed") < schema.location("hook_resid_pre", 0)
    assert schema.location("hook_resid_post", 0) < schema.location("hook_resid_pre", 1)
    assert schema.location("hook_attn_out", 1) < schema.location("hook_resid_mid", 1)
    assert schema.location("hook_mlp_out", 1) < schema.location("hook_resid_post", 1)
    assert schema.location("hook_resid_post", 99) < schema.location("ln_final.hook_scale")
    assert schema.site_location("blocks.2.mlp.hook_post") == schema.location("mlp.hook_post", 2)
    keyed = [k.key for k in schema.SITE_KINDS if k.layered]
    assert sorted(keyed, key=lambda k: schema.location(k, 0)) == keyed


def test_name_helpers():
    assert schema.site_name("attn.hook_z", 2) == "blocks.2.attn.hook_z"
    assert schema.sae_site_name("x.y", "hook_sae_error") == "sae.x.y.hook_sae_error"
    assert schema.split_sae_site("sae.x.y.hook_sae_error") == ("x.y", "hook_sae_error")
    assert schema.split_sae_site("blocks.0.hook_resid_pre") is None
    assert schema.norm_name("ln1", 3) == "blocks.3.ln1" and schema.norm_name("ln_final") == (
        "ln_final"
    )
    with pytest.raises(InvalidArgumentError):
        schema.site_name("mlp.hook_post")
