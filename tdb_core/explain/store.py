"""Persistent store of explanations (SQLite).

One row per key ``(model, sae_id, node_key, method, explainer)`` (``sae_id`` is ``''`` for nodes
that are not SAE latents) holding the explanation, its primary score (pooled correlation for
neurons/latents, ROC AUC for heads; NULL with ``score_reason`` when undefined), every score as
JSON, the records it was written from and scored on (JSON), and ``created_at`` / ``updated_at``
(unix seconds).

Upsert semantics: :meth:`ExplanationStore.put` on an existing key replaces explanation, scores
and records and sets ``updated_at``; ``created_at`` keeps the first write's time. Last writer wins.

Durability and concurrency: the database runs in WAL mode with ``synchronous=FULL`` (a committed
write survives a crash or restart); every operation opens its own connection with a busy timeout
and writes inside ``BEGIN IMMEDIATE``, so any number of threads and processes on one host may
read and write at once. A lock held longer than the busy timeout raises UnavailableError
(retryable). WAL needs a local filesystem (not NFS).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdb_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS explanations (
    model        TEXT NOT NULL,
    sae_id       TEXT NOT NULL DEFAULT '',
    node_key     TEXT NOT NULL,
    method       TEXT NOT NULL,
    explainer    TEXT NOT NULL,
    explanation  TEXT NOT NULL,
    score        REAL,
    score_reason TEXT,
    scores_json  TEXT NOT NULL,
    records_json TEXT NOT NULL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (model, sae_id, node_key, method, explainer)
);
CREATE INDEX IF NOT EXISTS explanations_by_node ON explanations (model, node_key);
"""

#: The most rows one ``list`` call returns.
MAX_LIST_LIMIT = 100_000
_KEYS_PER_QUERY = 500  # node keys per IN (...) list (SQLite allows 999 parameters at least)

_COLUMNS = (
    "model, sae_id, node_key, method, explainer, explanation, score, score_reason, "
    "scores_json, records_json, created_at, updated_at"
)


@dataclass(frozen=True)
class StoredExplanation:
    """One stored explanation and its scores."""

    model: str
    sae_id: str
    node_key: str
    method: str
    explainer: str
    explanation: str
    score: float | None
    score_reason: str | None
    scores: Mapping[str, Any]
    records_used: Mapping[str, Any]
    created_at: float
    updated_at: float


def _row_to_entry(row: sqlite3.Row) -> StoredExplanation:
    return StoredExplanation(
        model=row["model"],
        sae_id=row["sae_id"],
        node_key=row["node_key"],
        method=row["method"],
        explainer=row["explainer"],
        explanation=row["explanation"],
        score=row["score"],
        score_reason=row["score_reason"],
        scores=json.loads(row["scores_json"]),
        records_used=json.loads(row["records_json"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class ExplanationStore:
    """Explanations in one SQLite file; safe across threads and processes (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        self._path = Path(path)
        if busy_timeout_s <= 0:
            raise InvalidArgumentError(f"busy_timeout_s is {busy_timeout_s}; it must be > 0")
        if not self._path.parent.is_dir():
            raise FailedPreconditionError(
                f"cannot create the explanation store {str(self._path)!r}: directory "
                f"{str(self._path.parent)!r} does not exist"
            )
        self._busy_timeout_s = busy_timeout_s
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise FailedPreconditionError(
                f"cannot open the explanation store {str(self._path)!r}: {exc}"
            ) from None
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise UnavailableError(
                    f"the explanation store {str(self._path)!r} stayed locked for more than "
                    f"{self._busy_timeout_s}s; retry"
                ) from None
            raise FailedPreconditionError(
                f"the explanation store {str(self._path)!r} failed: {exc}"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise FailedPreconditionError(
                f"the explanation store {str(self._path)!r} is not a usable SQLite database: {exc}"
            ) from None
        finally:
            conn.close()

    @staticmethod
    def _check_key(model: str, node_key: str, method: str, explainer: str) -> None:
        for name, value in (
            ("model", model),
            ("node_key", node_key),
            ("method", method),
            ("explainer", explainer),
        ):
            if not value:
                raise InvalidArgumentError(
                    f"{name} is empty; stored explanations need model, node_key, method and explainer"
                )

    def put(
        self,
        *,
        model: str,
        node_key: str,
        method: str,
        explainer: str,
        explanation: str,
        score: float | None,
        score_reason: str | None = None,
        scores: Mapping[str, Any] | None = None,
        records_used: Mapping[str, Any] | None = None,
        sae_id: str = "",
    ) -> StoredExplanation:
        """Insert or replace (upsert) the explanation for its key; returns the stored row."""
        self._check_key(model, node_key, method, explainer)
        if score is not None and not math.isfinite(score):
            raise InvalidArgumentError(
                f"score is {score}; store None with a score_reason instead of NaN/inf"
            )
        try:
            scores_json = json.dumps(dict(scores or {}), allow_nan=False, sort_keys=True)
            records_json = json.dumps(dict(records_used or {}), allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(
                f"scores and records_used must be JSON-serializable without NaN: {exc}"
            ) from None
        now = time.time()
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    f"INSERT INTO explanations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (model, sae_id, node_key, method, explainer) DO UPDATE SET "
                    "explanation=excluded.explanation, score=excluded.score, "
                    "score_reason=excluded.score_reason, scores_json=excluded.scores_json, "
                    "records_json=excluded.records_json, updated_at=excluded.updated_at",
                    (
                        model,
                        sae_id,
                        node_key,
                        method,
                        explainer,
                        explanation,
                        score,
                        score_reason,
                        scores_json,
                        records_json,
                        now,
                        now,
                    ),
                )
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM explanations WHERE model=? AND sae_id=? AND node_key=? "
                    "AND method=? AND explainer=?",
                    (model, sae_id, node_key, method, explainer),
                ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return _row_to_entry(row)

    def get(
        self, *, model: str, node_key: str, method: str, explainer: str, sae_id: str = ""
    ) -> StoredExplanation:
        """The explanation stored under the key; NotFoundError if there is none."""
        self._check_key(model, node_key, method, explainer)
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM explanations WHERE model=? AND sae_id=? AND node_key=? "
                "AND method=? AND explainer=?",
                (model, sae_id, node_key, method, explainer),
            ).fetchone()
        if row is None:
            raise NotFoundError(
                f"no explanation stored for node {node_key!r} of model {model!r}"
                f"{f' (SAE {sae_id!r})' if sae_id else ''} with method {method!r} and explainer {explainer!r}"
            )
        return _row_to_entry(row)

    def list(
        self,
        *,
        model: str | None = None,
        sae_id: str | None = None,
        node_key: str | None = None,
        node_key_prefix: str | None = None,
        method: str | None = None,
        explainer: str | None = None,
        min_score: float | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[StoredExplanation]:
        """Explanations matching every given filter, ordered by key; ``None`` filters are ignored.

        ``min_score`` drops rows whose score is NULL or lower.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidArgumentError(f"limit is {limit}; it must be in 1..{MAX_LIST_LIMIT}")
        if offset < 0:
            raise InvalidArgumentError(f"offset is {offset}; it must be >= 0")
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (
            ("model", model),
            ("sae_id", sae_id),
            ("node_key", node_key),
            ("method", method),
            ("explainer", explainer),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if node_key_prefix is not None:
            clauses.append("substr(node_key, 1, ?) = ?")
            params += [len(node_key_prefix), node_key_prefix]
        if min_score is not None:
            clauses.append("score IS NOT NULL AND score >= ?")
            params.append(min_score)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM explanations {where} "
                "ORDER BY model, sae_id, node_key, method, explainer LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [_row_to_entry(r) for r in rows]

    def list_nodes(
        self, model: str, node_keys: Iterable[str], limit_per_node: int = 50
    ) -> builtins.list[StoredExplanation]:
        """The explanations of several nodes of a model over one connection: for each node key,
        what ``list(model=model, node_key=key, limit=limit_per_node)`` returns, nodes in key
        order."""
        keys = sorted(set(node_keys))
        if not keys:
            return []
        out: builtins.list[StoredExplanation] = []
        with self._connection() as conn:
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                chunk = keys[start : start + _KEYS_PER_QUERY]
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM explanations WHERE model = ? AND node_key IN "
                    f"({', '.join('?' * len(chunk))}) "
                    "ORDER BY model, sae_id, node_key, method, explainer",
                    (model, *chunk),
                ).fetchall()
                by_key: dict[str, list[sqlite3.Row]] = {}
                for r in rows:
                    by_key.setdefault(r["node_key"], []).append(r)
                for k in chunk:
                    out.extend(_row_to_entry(r) for r in by_key.get(k, [])[:limit_per_node])
        return out

    def delete(
        self, *, model: str, node_key: str, method: str, explainer: str, sae_id: str = ""
    ) -> bool:
        """Remove the explanation under the key; True if one was removed."""
        self._check_key(model, node_key, method, explainer)
        with self._connection() as conn:
            cursor = conn.execute(
                "DELETE FROM explanations "
                "WHERE model=? AND sae_id=? AND node_key=? AND method=? AND explainer=?",
                (model, sae_id, node_key, method, explainer),
            )
        return cursor.rowcount > 0

    def count(self) -> int:
        """Number of stored explanations."""
        with self._connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM explanations").fetchone()[0])
