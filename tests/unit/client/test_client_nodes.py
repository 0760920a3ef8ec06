"""tdb_client.nodes (no torch) against the shared case table tests/data/node_keys.json, which
tdb_core and the Node.js client read too: the client parses and prints as the server does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tdb_client import nodes
from tdb_client.nodes import Node, NodeKeyError, parse_node, parse_selector

CASES = json.loads((Path(__file__).resolve().parents[2] / "data" / "node_keys.json").read_text())


def test_the_client_module_needs_no_torch():
    import subprocess

    code = "import sys, tdb_client.nodes, tdb_client.interventions; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("case", CASES["nodes"], ids=lambda c: c["key"])
def test_canonical_keys(case):
    n = parse_node(case["key"])
    got = dict(
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
    assert got == case
    assert Node(case["site"], case["unit"], case["position"], case["key_position"]) == n


@pytest.mark.parametrize("case", CASES["aliases"], ids=lambda c: c["input"])
def test_aliases(case):
    assert parse_node(case["input"]).key == case["key"]


@pytest.mark.parametrize("case", CASES["legacy"], ids=lambda c: c["input"])
def test_legacy_names(case):
    with pytest.warns(DeprecationWarning, match=case["key"].replace("[", r"\[")):
        assert parse_node(case["input"]).key == case["key"]


@pytest.mark.parametrize("case", CASES["invalid_nodes"], ids=lambda c: c["input"])
def test_invalid_keys(case):
    with pytest.raises(NodeKeyError) as e:
        parse_node(case["input"])
    assert case["error"] in str(e.value) and nodes.GRAMMAR in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("case", CASES["selectors"], ids=lambda c: c["input"])
def test_selectors(case):
    sel = parse_selector(case["input"])

    def lst(v):
        return None if v is None else list(v)

    assert (sel.site, lst(sel.units), lst(sel.positions), lst(sel.key_positions)) == (
        case["site"],
        case["units"],
        case["positions"],
        case["key_positions"],
    )
    assert sel.key == case["key"]


@pytest.mark.parametrize("case", CASES["invalid_selectors"], ids=lambda c: c["input"])
def test_invalid_selectors(case):
    with pytest.raises(NodeKeyError) as e:
        parse_selector(case["input"])
    assert case["error"] in str(e.value) and nodes.SELECTOR_GRAMMAR in str(e.value)


def test_mirrors_the_server_module_text_for_text():
    """Same grammar text and error messages as tdb_core.nodes, for every invalid case."""
    from tdb_core import nodes as core

    assert core.GRAMMAR == nodes.GRAMMAR and core.SELECTOR_GRAMMAR == nodes.SELECTOR_GRAMMAR
    for case in CASES["invalid_nodes"]:
        with pytest.raises(ValueError) as mine:
            parse_node(case["input"])
        with pytest.raises(core.InvalidArgumentError) as theirs:
            core.parse_node(case["input"])
        assert str(mine.value) == str(theirs.value)
