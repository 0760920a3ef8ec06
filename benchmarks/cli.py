"""A client command from the shell: `tdb forward` against a running server, start to exit.

    python -m benchmarks cli [--repeats 7]

Serves the toy model, then times (interleaved, medians) the whole command in a fresh process,
as a user runs it: `tdb forward PROMPT --capture 'blocks.*.attn.hook_pattern' --positions -1`
(the quick start's first command). Baselines from the same run: the same command in a process
that imports torch first (what every client command paid while the CLI imported torch), a bare
`python -c pass`, and the Forward call alone from a client already connected. Target: the
command in < 0.5 s on the toy model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from benchmarks.common import emit, interleaved_medians, median_seconds
from benchmarks.service import BIG_LIMITS, serving
from tdb_core.runner import Limits, ModelRunner

PROMPT = "When Mary and John went to the store, John gave a drink to"
TARGET_S = 0.5


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks cli")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    import adapters
    from tdb_client import TdbClient
    from tdb_core.toy import TOY_MODEL_DIR

    runner = ModelRunner(adapters.load_model("toy-gpt2", str(TOY_MODEL_DIR)), Limits(**BIG_LIMITS))
    command = ["forward", PROMPT, "--capture", "blocks.*.attn.hook_pattern", "--positions", "-1"]
    with serving(runner) as svc:
        server = f"127.0.0.1:{svc.port}"
        env = dict(os.environ, TDB_SERVER=server)
        tdb = [sys.executable, "-m", "services.cli", *command]
        with_torch = [
            sys.executable,
            "-c",
            "import sys, torch; from services.cli import main; sys.exit(main(sys.argv[1:]))",
            *command,
        ]

        def run(cmd: list[str]) -> None:
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)

        times = interleaved_medians(
            {
                "command": lambda: run(tdb),
                "command_importing_torch": lambda: run(with_torch),
                "python_startup": lambda: run([sys.executable, "-c", "pass"]),
            },
            args.repeats,
            warmup=1,
        )
        with TdbClient(server) as c:
            call = median_seconds(
                lambda: c.forward(PROMPT, capture=["blocks.*.attn.hook_pattern"], positions=[-1]),
                args.repeats,
            )
    emit(
        {
            "benchmark": "cli",
            "command": "tdb " + " ".join(repr(a) if " " in a else a for a in command),
            "command_s": round(times["command"], 4),
            "command_importing_torch_s": round(times["command_importing_torch"], 4),
            "python_startup_s": round(times["python_startup"], 4),
            "forward_call_s": round(call, 4),
            "speedup_vs_importing_torch": round(
                times["command_importing_torch"] / times["command"], 2
            ),
            "target_s": TARGET_S,
            "meets_target": times["command"] < TARGET_S,
            "repeats": args.repeats,
        }
    )
    return 0
