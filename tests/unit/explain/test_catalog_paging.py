"""Catalog.list pages the merge of stored and shipped explanations: any offset, any page size,
the same rows as slicing the whole merged listing (a stored entry replacing a shipped one)."""

from __future__ import annotations

import dataclasses

import pytest

from tdb_core.explain import engine
from tdb_core.explain.engine import Catalog
from tdb_core.explain.store import ExplanationStore, StoredExplanation


def _key(e: StoredExplanation) -> tuple[str, str, str, str, str]:
    return (e.model, e.sae_id, e.node_key, e.method, e.explainer)


@pytest.fixture()
def catalog(tmp_path) -> Catalog:
    store = ExplanationStore(tmp_path / "e.sqlite")
    for n in range(0, 40, 2):  # stored: even neurons
        store.put(
            model="m",
            node_key=f"blocks.0.mlp.hook_post[{n:02d}]",
            method="a",
            explainer="x",
            explanation=f"stored {n}",
            score=0.5,
        )
    template = store.list(limit=1)[0]
    shipped = [  # shipped: every fifth neuron; 0, 10, 20, 30 are replaced by stored entries
        dataclasses.replace(
            template, node_key=f"blocks.0.mlp.hook_post[{n:02d}]", explanation=f"shipped {n}"
        )
        for n in range(0, 40, 5)
    ]
    return Catalog(store, shipped)


def _everything(catalog: Catalog) -> list[StoredExplanation]:
    assert catalog.store is not None
    stored = catalog.store.list(limit=1000)
    seen = {_key(e) for e in stored}
    return sorted(stored + [e for e in catalog.shipped if _key(e) not in seen], key=_key)


@pytest.mark.parametrize("store_page", [10_000, 3])  # the default page, and a small one
def test_pages_equal_slices_of_the_merged_listing(catalog, monkeypatch, store_page):
    monkeypatch.setattr(engine, "_MERGE_PAGE", store_page)
    whole = _everything(catalog)
    assert len(whole) == 20 + 4  # 20 stored, 8 shipped of which 4 replaced
    assert [e.explanation for e in whole if e.node_key.endswith("[10]")] == ["stored 10"]
    for offset in (0, 1, 5, 19, 23, 24, 30):
        for limit in (1, 4, 7, 100):
            got = catalog.list(model="m", offset=offset, limit=limit)
            assert got == whole[offset : offset + limit], (offset, limit)


def test_an_offset_past_the_stores_page_bound_is_an_empty_page(catalog):
    """Reported: with shipped rows matching, an offset + limit over 100000 was refused with
    'limit is N; it must be in 1..100000' instead of answering an empty page."""
    assert catalog.list(model="m", offset=150_000, limit=10) == []
    assert catalog.list(model="m", offset=99_995, limit=10) == []


def test_the_merge_reads_the_store_once_in_bounded_pages(catalog, monkeypatch):
    """A page at offset O reads at most O + limit stored rows, each once, in pages of at most
    the merge page, and stops when the store runs out; an offset past every row there is (a
    client's 4e9) answers at once. Found in review: the merge kept every stored row up to the
    offset in memory (400k rows: +495 MB, 4.9 s)."""
    monkeypatch.setattr(engine, "_MERGE_PAGE", 3)
    assert catalog.store is not None
    whole = _everything(catalog)
    calls: list[tuple[int, int, int]] = []  # (offset, limit, rows returned)
    real = catalog.store.list

    def counted(**kw):
        rows = real(**kw)
        calls.append((kw["offset"], kw["limit"], len(rows)))
        return rows

    monkeypatch.setattr(catalog.store, "list", counted)
    catalog.list(model="m", offset=5, limit=4)
    assert sum(n for _, _, n in calls) <= 9 and all(lim <= 3 for _, lim, _ in calls)
    assert [o for o, _, _ in calls] == [sum(n for _, _, n in calls[:i]) for i in range(len(calls))]
    calls.clear()
    assert catalog.list(model="m", offset=23, limit=10) == whole[23:]
    assert sum(n for _, _, n in calls) == 20 and all(lim <= 3 for _, lim, _ in calls)
    calls.clear()
    assert catalog.list(model="m", offset=4_000_000_000, limit=10) == []
    assert calls == []  # past every stored and shipped row: no walk at all
