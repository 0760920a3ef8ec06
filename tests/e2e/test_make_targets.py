"""`make serve` installs what serving needs, `make test` the test tools too (dry runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(target: str, tmp_path: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("needs make")
    r = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if "pip install" in line]


def test_serve_installs_only_serving_dependencies(tmp_path):
    """The install `make serve` runs names the project without its [test] extra."""
    installs = _dry_run("serve", tmp_path)
    project = [line for line in installs if "-e ." in line]
    assert project and all("[test]" not in line for line in installs)


def test_test_installs_the_test_tools(tmp_path):
    installs = _dry_run("test", tmp_path)
    assert any("'.[test]'" in line for line in installs)
