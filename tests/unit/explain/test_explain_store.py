"""The SQLite explanation store: round trip, upsert, filters, restart, and concurrent writers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tdb_core.explain.store import ExplanationStore

REPO_ROOT = Path(__file__).resolve().parents[3]


def put(store: ExplanationStore, node: str, score: float | None = 0.5, **overrides: str) -> None:
    """Store a typical row for ``node`` (string fields may be overridden)."""
    fields = {
        "model": "gpt2",
        "node_key": node,
        "method": "token_activation_pair",
        "explainer": "baseline",
        "explanation": f"explains {node}",
        **overrides,
    }
    store.put(
        **fields,
        score=score,
        scores={"correlation": score},
        records_used={"score_split": "valid", "score_top": 5},
    )


def test_put_get_round_trip(tmp_path: Path) -> None:
    """Every field comes back as written; JSON columns come back as mappings."""
    store = ExplanationStore(tmp_path / "e.db")
    before = time.time()
    stored = store.put(
        model="gpt2",
        node_key="mlp:0:1",
        method="m",
        explainer="x",
        explanation="cats",
        score=None,
        score_reason="predictions constant",
        scores={"correlation": None, "auc": 0.7},
        records_used={"n": 5},
        sae_id="sae-a",
    )
    got = store.get(model="gpt2", node_key="mlp:0:1", method="m", explainer="x", sae_id="sae-a")
    assert got == stored
    assert got.score is None and got.score_reason == "predictions constant"
    assert got.scores == {"auc": 0.7, "correlation": None} and got.records_used == {"n": 5}
    assert before <= got.created_at == got.updated_at <= time.time()
    with pytest.raises(NotFoundError, match="mlp:0:1"):
        store.get(model="gpt2", node_key="mlp:0:1", method="m", explainer="x")  # sae_id differs


def test_upsert_replaces_content_and_keeps_created_at(tmp_path: Path) -> None:
    """A second put on the same key replaces explanation and scores; created_at is the first write's."""
    store = ExplanationStore(tmp_path / "e.db")
    first = store.put(
        model="m", node_key="n", method="k", explainer="e", explanation="old", score=0.1
    )
    time.sleep(0.01)
    second = store.put(
        model="m", node_key="n", method="k", explainer="e", explanation="new", score=0.9
    )
    assert store.count() == 1
    assert second.explanation == "new" and second.score == 0.9
    assert second.created_at == first.created_at and second.updated_at > first.updated_at


def test_list_filters(tmp_path: Path) -> None:
    """Filters by model, SAE, node, node prefix, method, explainer and min score (NULL scores excluded)."""
    store = ExplanationStore(tmp_path / "e.db")
    put(store, "mlp:0:1", 0.9)
    put(store, "mlp:0:2", 0.1)
    put(store, "mlp:1:1", None)
    put(store, "head:0:3", 0.7, explainer="llm")
    put(store, "sae:0:9", 0.8, sae_id="sae-a", model="other")
    assert [e.node_key for e in store.list(model="gpt2")] == [
        "head:0:3",
        "mlp:0:1",
        "mlp:0:2",
        "mlp:1:1",
    ]
    assert [e.node_key for e in store.list(node_key_prefix="mlp:0:")] == ["mlp:0:1", "mlp:0:2"]
    assert [e.node_key for e in store.list(min_score=0.5)] == ["head:0:3", "mlp:0:1", "sae:0:9"]
    assert [e.node_key for e in store.list(explainer="llm")] == ["head:0:3"]
    assert [e.node_key for e in store.list(sae_id="sae-a")] == ["sae:0:9"]
    assert [e.node_key for e in store.list(node_key="mlp:0:2", method="token_activation_pair")] == [
        "mlp:0:2"
    ]
    assert [e.node_key for e in store.list(limit=2, offset=1)] == ["mlp:0:1", "mlp:0:2"]
    with pytest.raises(InvalidArgumentError, match="limit"):
        store.list(limit=0)


def test_restart_loses_nothing(tmp_path: Path) -> None:
    """A new store object on the same file (a restarted server) sees every committed row."""
    path = tmp_path / "e.db"
    store = ExplanationStore(path)
    for i in range(20):
        put(store, f"mlp:0:{i}", i / 20)
    del store
    reopened = ExplanationStore(path)
    assert reopened.count() == 20
    assert (
        reopened.get(
            model="gpt2", node_key="mlp:0:7", method="token_activation_pair", explainer="baseline"
        ).score
        == 0.35
    )
    assert reopened.delete(
        model="gpt2", node_key="mlp:0:7", method="token_activation_pair", explainer="baseline"
    )
    assert ExplanationStore(path).count() == 19


def test_bad_input_and_bad_files(tmp_path: Path) -> None:
    """Empty keys and NaN scores are rejected; a missing directory or a non-database file is reported."""
    store = ExplanationStore(tmp_path / "e.db")
    with pytest.raises(InvalidArgumentError, match="node_key is empty"):
        put(store, "")
    with pytest.raises(InvalidArgumentError, match="NaN"):
        put(store, "n", float("nan"))
    with pytest.raises(FailedPreconditionError, match="does not exist"):
        ExplanationStore(tmp_path / "missing" / "e.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FailedPreconditionError, match="not a usable SQLite database"):
        ExplanationStore(junk)


def test_wal_mode_is_on(tmp_path: Path) -> None:
    """The database file is in WAL mode (readers never block the writer)."""
    ExplanationStore(tmp_path / "e.db")
    with sqlite3.connect(tmp_path / "e.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_threads(tmp_path: Path) -> None:
    """8 threads x 25 writes (distinct keys plus one contended key) all land, with no error."""
    store = ExplanationStore(tmp_path / "e.db")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                put(store, f"t{t}:{i}", i / 25)
                put(store, "shared", t / 8, explanation=f"thread {t}")
                store.list(node_key_prefix=f"t{t}:")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count() == 8 * 25 + 1
    assert store.get(
        model="gpt2", node_key="shared", method="token_activation_pair", explainer="baseline"
    ).explanation.startswith("thread ")


def test_concurrent_processes(tmp_path: Path) -> None:
    """4 processes x 30 writes to one file at once, each also contending on a shared key: all land."""
    path = tmp_path / "e.db"
    ExplanationStore(path)
    script = textwrap.dedent(
        """
        import sys
        from tdb_core.explain.store import ExplanationStore
        store = ExplanationStore(sys.argv[1])
        p = sys.argv[2]
        for i in range(30):
            for node in (f"p{p}:{i}", "shared"):
                store.put(model="gpt2", node_key=node, method="m", explainer="e",
                          explanation=f"process {p}", score=i / 30)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), str(p)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(4)
    ]
    outcomes = [(p.communicate(timeout=120)[1], p.returncode) for p in procs]
    assert all(code == 0 for _, code in outcomes), outcomes
    store = ExplanationStore(path)
    assert store.count() == 4 * 30 + 1
    assert len(store.list(node_key_prefix="p3:")) == 30
