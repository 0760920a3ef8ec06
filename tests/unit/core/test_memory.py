"""The serving allocator setting: freed activation memory is reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
from tdb_core.memory import reuse_freed_memory
if sys.argv[1] == "on":
    assert reuse_freed_memory()
def faulted_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt * 4096 / 2**20
def passes():
    for i in range(12):
        before = faulted_mb()
        kept = [torch.empty(3 * 2**23).fill_(1.0) for _ in range(2)]  # 2 x 96 MiB, alive at once
        del kept
        print(round(faulted_mb() - before))
if sys.argv[2] == "thread":  # as on a server's worker thread
    import threading
    t = threading.Thread(target=passes)
    t.start()
    t.join()
else:
    passes()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_activations_are_reused_without_page_faults(where: str) -> None:
    """Without the setting every pass faults its large blocks in again (mmap'd, unmapped on
    free); with it, once the heap has settled (a few passes), passes reuse its pages — also on
    another thread, whose own arena could not hold such blocks."""

    def faults(mode: str) -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, mode, where],
            capture_output=True,
            text=True,
            check=True,
        )
        return [int(x) for x in out.stdout.split()]

    off, on = faults("off"), faults("on")
    assert all(mb >= 150 for mb in off[1:]), off  # 192 MiB written per pass, faulted each time
    assert all(mb < 20 for mb in on[-3:]), on
