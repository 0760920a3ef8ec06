"""Soak: 16 concurrent clients for 30 s against one server process; no errors, no memory growth."""

from __future__ import annotations

import threading
import time

import pytest

from tests.e2e.conftest import start_server

CLIENTS = 16
WARMUP_S = 8.0
SOAK_S = 30.0
PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers like 1, 2, 3 and 42",
]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_sixteen_clients_for_thirty_seconds(tiny_gpt2_dir):
    """16 clients each loop over Forward (with captures and an intervention), Tokenize, ModelInfo
    and Attribute for 30 s after an 8 s warm-up: zero failed calls, every Forward answer equals the
    first one for its prompt, and the server's resident memory grows by less than 10%."""
    from tdb_client import TdbClient, losses
    from tdb_client import interventions as iv

    server = start_server("--model", f"tiny={tiny_gpt2_dir}")
    try:
        stop = threading.Event()
        measuring = threading.Event()
        lock = threading.Lock()
        counts = {"calls": 0, "measured": 0}
        errors: list[BaseException] = []
        reference: dict[int, tuple[int, ...]] = {}

        def worker(k: int) -> None:
            with TdbClient(server.address, timeout=60) as c:
                i = k
                while not stop.is_set():
                    i += 1
                    try:
                        p = i % len(PROMPTS)
                        kind = i % 8
                        if kind < 5:
                            out = c.forward(
                                PROMPTS[p],
                                capture=["blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post"],
                                positions=[-1],
                                top_k=3,
                                interventions=[iv.zero("blocks.0.attn.hook_z[head=1]")]
                                if kind == 4
                                else (),
                            )
                            if kind < 4:
                                ids = out.top_logits[0][0].token_ids
                                with lock:
                                    assert reference.setdefault(p, ids) == ids
                        elif kind == 5:
                            c.tokenize(PROMPTS)
                        elif kind == 6:
                            c.model_info()
                        else:
                            c.attribute(PROMPTS[p], loss=losses.logit_diff(5, 9), top_k=5)
                    except BaseException as exc:  # noqa: BLE001 - reported below
                        errors.append(exc)
                        return
                    with lock:
                        counts["calls"] += 1
                        if measuring.is_set():
                            counts["measured"] += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(WARMUP_S)
        before = rss_bytes(server.proc.pid)
        measuring.set()
        t0 = time.perf_counter()
        time.sleep(SOAK_S)
        measuring.clear()
        elapsed = time.perf_counter() - t0
        after = rss_bytes(server.proc.pid)
        stop.set()
        for t in threads:
            t.join(120)
        growth = (after - before) / before
        print(
            f"\nsoak: {CLIENTS} clients, {counts['measured']} calls in {elapsed:.1f} s "
            f"({counts['measured'] / elapsed:.1f} calls/s); RSS {before / 2**20:.1f} MiB -> "
            f"{after / 2**20:.1f} MiB ({100 * growth:+.2f}%); {len(errors)} errors"
        )
        assert not errors, errors[:3]
        assert counts["measured"] > CLIENTS  # every client made progress, not just a few calls
        assert growth < 0.10
    finally:
        server.stop()
