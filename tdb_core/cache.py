"""The prompt cache: activations of clean forward passes kept for repeated queries on a prompt.

Interactive frontends ask about the same prompt again and again (a node page opened on the prompt
of a table, the same capture with another reduction). A Forward with no interventions that runs on
its own records the whole tensors it captured; a later Forward whose every capture can be cut from
recorded tensors is answered from them, with the very reductions (positions, units, top-k, dtype)
a pass applies, so its result equals an uncached run bit for bit.

An entry is keyed by the pass that produced it: the model (one token per runner), the weights and
attached SAEs (a stamp that changes when either changes: the entries of a model with a new stamp
are dropped), the token rows of the batch, and the SAEs spliced into it. It holds each recorded
site's tensor (with the mask of attention scores) and the logits at the positions asked so far.
Entries live in one LRU shared by every model, within ``max_bytes``; a pass larger than the
budget is not kept.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

_tokens = itertools.count(1)


def runner_token() -> int:
    """A token naming one loaded model for the lifetime of the process (never reused)."""
    return next(_tokens)


@dataclass(frozen=True)
class Recorded:
    """One site of a pass as its hooks saw it: the whole tensor ``[B, *site dims]``, the mask of
    attention scores (None elsewhere), and whether it is derived (computed only when captured,
    ``attn.hook_result``: only captures of the whole site may be cut from it)."""

    values: torch.Tensor
    masked: torch.Tensor | None = None
    derived: bool = False


@dataclass
class Entry:
    """What is kept of one pass: recorded sites and logits by ``(row, position)``."""

    sites: dict[str, Recorded] = field(default_factory=dict)
    logits: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    nbytes: int = 0


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    invalidations: int
    entries: int
    bytes: int
    max_bytes: int


class PromptCache:
    """An LRU of recorded passes within ``max_bytes`` (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._stamps: dict[int, Hashable] = {}  # runner token -> stamp of its current entries
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._invalidations = 0

    # -- keys
    def key(self, runner: int, stamp: Hashable, rest: Hashable) -> Hashable:
        """The key of a pass of runner ``runner`` whose weights and SAEs have ``stamp``; a new
        stamp drops the runner's older entries (its weights or SAEs changed)."""
        with self._lock:
            if self._stamps.get(runner, stamp) != stamp:
                self._drop_runner(runner)
                self._invalidations += 1
            self._stamps[runner] = stamp
        return (runner, stamp, rest)

    def forget_runner(self, runner: int) -> None:
        """Drop every entry of a runner (its model was unloaded)."""
        with self._lock:
            self._drop_runner(runner)
            self._stamps.pop(runner, None)

    def _drop_runner(self, runner: int) -> None:
        for k in [k for k in self._entries if isinstance(k, tuple) and k[0] == runner]:
            self._bytes -= self._entries.pop(k).nbytes

    # -- lookups
    def get(self, key: Hashable) -> Entry | None:
        """The entry under ``key`` (most recently used from now on), or None. Does not count a
        hit or a miss: callers say which with :meth:`count`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def add(
        self,
        key: Hashable,
        sites: dict[str, Recorded],
        logits: dict[tuple[int, int], torch.Tensor],
    ) -> None:
        """Add what a pass recorded under ``key`` (merged into the entry there), then evict the
        least recently used entries until the cache is within its budget. Tensors are kept as
        given: callers hand over copies nothing else writes to."""
        if self.max_bytes == 0:
            return
        with self._lock:
            entry = self._entries.pop(key, None) or Entry()
            self._bytes -= entry.nbytes
            for name, rec in sites.items():
                if name not in entry.sites:
                    entry.sites[name] = rec
                    entry.nbytes += _nbytes(rec.values) + _nbytes(rec.masked)
            for at, vec in logits.items():
                if at not in entry.logits:
                    entry.logits[at] = vec
                    entry.nbytes += _nbytes(vec)
            if entry.nbytes > self.max_bytes:
                self._evictions += 1
                return
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                invalidations=self._invalidations,
                entries=len(self._entries),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
            )
