"""The node table's explanation lookup: one connection for every node of a table, with exactly
the entries that one lookup per node gave (the first 50 of each node in key order, the
highest score winning, the first of equal scores)."""

from __future__ import annotations

import contextlib

from tdb_core.explain.engine import Catalog
from tdb_core.explain.store import ExplanationStore, StoredExplanation


def _reference_best(catalog: Catalog, model: str, node_keys) -> dict[str, StoredExplanation]:
    """Catalog.best as it was: one store query (one connection) per node key."""
    wanted = set(node_keys)
    out: dict[str, StoredExplanation] = {}
    candidates = list(catalog.shipped)
    assert catalog.store is not None
    for k in wanted:
        candidates.extend(catalog.store.list(model=model, node_key=k, limit=50))
    for e in candidates:
        if e.model != model or e.node_key not in wanted:
            continue
        cur = out.get(e.node_key)
        if cur is None or (e.score or -2.0) > (cur.score or -2.0):
            out[e.node_key] = e
    return out


def _fill(store: ExplanationStore) -> list[str]:
    keys = [f"blocks.{L}.mlp.hook_post[{n}]" for L in range(2) for n in range(40)]
    for i, k in enumerate(keys):
        for j, method in enumerate(("a", "b", "c")):
            score = None if (i + j) % 7 == 0 else round(((i * 3 + j) % 5) / 5, 1)  # ties
            store.put(
                model="m",
                node_key=k,
                method=method,
                explainer="x",
                explanation=f"{k} {method}",
                score=score,
                score_reason=None if score is not None else "constant",
            )
        store.put(model="other", node_key=k, method="a", explainer="x", explanation="o", score=1)
    crowded = keys[3]  # 60 entries: the best (0.99) is past the first 50 in key order
    for j in range(60):
        store.put(
            model="m",
            node_key=crowded,
            method=f"m{j:02d}",
            explainer="x",
            explanation=f"crowded {j}",
            score=0.99 if j == 55 else 0.2,
        )
    return keys


def test_best_reads_every_node_over_one_connection_with_the_same_entries(tmp_path):
    store = ExplanationStore(tmp_path / "e.sqlite")
    keys = _fill(store)
    shipped = [
        StoredExplanation(
            "m", "", keys[0], "shipped", "x", "from the model", 0.9, None, {}, {}, 0, 0
        ),
        StoredExplanation("m", "", keys[5], "shipped", "x", "tied", 0.4, None, {}, {}, 0, 0),
    ]
    catalog = Catalog(store, shipped)
    wanted = [*keys[:60], "blocks.9.mlp.hook_post[1]"]
    want = _reference_best(catalog, "m", wanted)

    opened = []
    real = store._connection

    @contextlib.contextmanager
    def counting():
        opened.append(1)
        with real() as conn:
            yield conn

    store._connection = counting  # type: ignore[method-assign]
    got = catalog.best("m", wanted)
    assert len(opened) == 1
    assert got == want
    assert got[keys[3]].score != 0.99  # as before: only a node's first 50 entries are read
    assert got[keys[0]].method == "shipped"
    assert "blocks.9.mlp.hook_post[1]" not in got
    assert catalog.best("m", []) == {} and len(opened) == 1


def test_list_nodes_equals_one_list_per_node(tmp_path):
    store = ExplanationStore(tmp_path / "e.sqlite")
    keys = _fill(store)
    many = keys * 1 + [f"x{i}" for i in range(600)]  # more keys than one IN list holds
    got = store.list_nodes("m", many, limit_per_node=2)
    want = [e for k in sorted(set(many)) for e in store.list(model="m", node_key=k, limit=2)]
    assert got == want and len(got) == 2 * len(keys)
