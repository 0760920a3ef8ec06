"""Scale-out: one client over three replicas, round-robin, surviving a replica's sudden death."""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import ServerProcess, start_server

N_CALLS = 300
KILL_AFTER = 100
PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The quick brown fox jumps over the lazy",
    "I ate an apple and a banana at the",
]


def _served(server: ServerProcess) -> int:
    return sum(
        1
        for e in server.events()
        if e.get("event") == "rpc"
        and e.get("method") == "/tdb.v1.InferenceService/Forward"
        and e.get("status") == "OK"
    )


@pytest.mark.slow
def test_round_robin_and_failover_across_replicas(tiny_gpt2_dir):
    """300 Forward calls from one client over three replicas (8 at a time), one replica SIGKILLed
    after 100: every call succeeds with the same answer as before, all three replicas served
    calls before the kill, and the two survivors served every call after it."""
    from tdb_client import TdbClient

    servers: list[ServerProcess | None] = [None] * 3

    def boot(i: int) -> None:
        servers[i] = start_server("--model", f"tiny={tiny_gpt2_dir}")

    boots = [threading.Thread(target=boot, args=(i,)) for i in range(3)]
    for t in boots:
        t.start()
    for t in boots:
        t.join()
    assert all(servers), "a replica did not start"
    live: list[ServerProcess] = [s for s in servers if s is not None]
    try:
        done = 0
        lock = threading.Lock()
        killed_at: list[int] = []
        answers: dict[int, list[tuple[int, ...]]] = collections.defaultdict(list)
        failures: list[BaseException] = []

        with TdbClient([s.address for s in live], timeout=60) as client:

            def call(i: int) -> None:
                nonlocal done
                try:
                    out = client.forward(PROMPTS[i % 3], top_k=3)
                    answers[i % 3].append(out.top_logits[0][0].token_ids)
                except BaseException as exc:  # noqa: BLE001 - counted and reported below
                    failures.append(exc)
                with lock:
                    done += 1
                    if done == KILL_AFTER:
                        killed_at.append(sum(_served(s) for s in live))
                        live[1].proc.kill()  # SIGKILL: no goodbye, in-flight calls cut off

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(call, range(N_CALLS)))
            elapsed = time.perf_counter() - t0
        live[1].proc.wait(10)
        served = [_served(s) for s in live]
        print(
            f"\nreplicas: {N_CALLS} calls in {elapsed:.1f} s, {len(failures)} failed; "
            f"served per replica {served} (replica 1 killed after {KILL_AFTER} calls)"
        )
        assert not failures, failures[:3]
        assert all(len(set(a)) == 1 for a in answers.values())  # every replica gives one answer
        assert sum(len(a) for a in answers.values()) == N_CALLS
        assert min(served) >= 10, served  # round robin reached every replica before the kill
        assert served[0] + served[2] >= N_CALLS - served[1]
    finally:
        for s in live:
            if s.proc.poll() is None:
                s.stop()
            elif s.proc.stderr is not None:
                s.drain.join(10)
                s.proc.stderr.close()
