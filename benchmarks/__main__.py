"""Ratio benchmarks: ``python -m benchmarks NAME [options]``. Each prints one JSON object last.

Timings are medians of repeated runs measured in one process, reported as ratios against a
baseline measured in the same run; they are never asserted in tests.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "hooks",
    "grpc",
    "transfer",
    "ablate",
    "attribute",
    "sae",
    "batching",
    "explain",
    "webapp",
    "grpcweb",
    "cli",
    "latency",
    "gpu",
    "gradients",
    "atp",
    "generate",
)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m benchmarks {{{'|'.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    from tdb_core.memory import reuse_freed_memory

    reuse_freed_memory()  # the allocator setting the server runs with (tdb_core.memory)
    module = importlib.import_module(f"benchmarks.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
