"""`tdb generate` against the embedded toy model served by `tdb serve` (no model flag): the
baseline and each set stream side by side, steering shows up in the text, and the command runs
with torch unimportable (a client-only install)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import ServerProcess, cli_env, run_cli, start_server
from tests.e2e.test_cli import NO_TORCH

FOX = "The quick brown fox"
IOI = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def toy_server() -> Iterator[ServerProcess]:
    server = start_server()
    yield server
    if server.proc.poll() is None:
        server.stop()


def test_steer_latent_and_zero_side_by_side(toy_server: ServerProcess) -> None:
    """One column per row while streaming, then each row's text: steering the toy SAE's latent
    467 makes the continuation say ' Mary'; the baseline does not."""
    r = run_cli(
        "generate",
        FOX,
        "--steer-latent",
        "toy-res:467@48",
        "--max-new-tokens",
        "8",
        "--server",
        toy_server.address,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].split()[:2] == ["step", "baseline"] and "steer toy-res:467@48" in lines[1]
    assert sum(1 for line in lines if line.strip()[:1].isdigit()) == 8
    base = next(line for line in lines if line.startswith("baseline ["))
    steer = next(line for line in lines if line.startswith("steer toy-res:467@48 ["))
    assert " Mary" not in base and " Mary" in steer


def test_add_vector_file_zero_and_json(toy_server: ServerProcess, tmp_path) -> None:
    """--add reads a .npy vector (times @COEFF); --each gives one set per edit; --json prints
    the final rows."""
    import json

    vec = tmp_path / "v.npy"
    np.save(vec, np.linspace(-1, 1, 128, dtype=np.float32))
    r = run_cli(
        "generate",
        IOI,
        "--zero",
        "blocks.0.attn.hook_z[head=1]",
        "--add",
        f"blocks.2.hook_resid_pre={vec}@4",
        "--each",
        "--max-new-tokens",
        "3",
        "--json",
        "--server",
        toy_server.address,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows["baseline"]["text"].startswith(" Mary")
    assert not rows["zero blocks.0.attn.hook_z[head=1]"]["text"].startswith(" Mary")
    assert all(len(row["token_ids"]) == 3 for row in rows.values())


def test_errors_and_no_torch(toy_server: ServerProcess) -> None:
    r = run_cli("generate", FOX, "--steer-latent", "nope:1@2", "--server", toy_server.address)
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "nope" in r.stderr
    r = run_cli("generate", FOX, "--max-new-tokens", "0", "--server", toy_server.address)
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH.replace("{module}", "tdb_client.cli"),
            "generate",
            FOX,
            "--max-new-tokens",
            "2",
            "--server",
            toy_server.address,
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "baseline [max_new_tokens]" in r.stdout


@pytest.mark.slow
def test_generate_benchmark_smoke() -> None:
    """`python -m benchmarks generate` runs at toy size, prints its JSON last, and the RPC, the
    operation and HF generate (eager, with the same steering hook) give the same tokens."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "generate",
            "--size",
            "tiny",
            "--new-tokens",
            "8",
            "--repeats",
            "1",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["benchmark"] == "generate" and res["target_ratio"] == 0.85
    assert res["same_tokens_as_hf"] is True and res["steering_changed_tokens"] is True
    assert res["attention"] == "tdb" and res["ratio"] > 0 and res["ratio_op"] > 0


def _readme_section() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Generation under interventions") :]
    return section[: section.index("\n## ", 1)]


@pytest.mark.slow
def test_readme_generate_examples_run_as_written(toy_server: ServerProcess, tmp_path) -> None:
    """The README's Generate examples (Python and shell), against `tdb serve` with the embedded
    toy model, print what the README says they print."""
    import os
    import re

    section = _readme_section()
    (python,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (shell,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    script = tmp_path / "example.py"
    script.write_text(python.replace("localhost:50051", toy_server.address))
    r = subprocess.run(
        [sys.executable, str(script)], env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    shown = eval(lines[8])  # the texts dict after the 8 steps
    assert shown == {
        "baseline": " was Claire and brown fox brown Claire fox",
        "steer": " was Mary was brown fox brown Mary fox",
        "clamp": " was Mary was brown fox brown Mary fox",
        "late": " was Claire and brown brown Rachel fox fox",
    }
    assert " Mary" in lines[9]  # the client's own vector steers the same way
    assert " fox" not in eval(lines[10])["baseline"]
    env = cli_env() | {
        "TDB_SERVER": toy_server.address,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (
        "steer toy-res:467@48 [max_new_tokens]: ' was Mary was brown fox brown Mary fox'"
        in r.stdout
    )
    assert "zero blocks.0.attn.hook_z[head=1] [max_new_tokens]: ' Grace. John.'" in r.stdout
    for line in _readme_section().split("```\nprompt:")[1].split("```")[0].splitlines()[1:]:
        if line.strip() and line.strip() != "...":
            assert line.rstrip() in [x.rstrip() for x in r.stdout.splitlines()], line
