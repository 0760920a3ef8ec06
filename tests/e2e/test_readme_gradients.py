"""The README's "Gradients, weights and the logit lens" example runs as written against `tdb
serve` with the embedded toy model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Gradients, weights and the logit lens", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


@pytest.mark.slow
def test_readme_gradient_example_runs(capsys):
    """The block runs unchanged (only the address differs) and prints what it says."""
    server = start_server()
    try:
        code = _example().replace("localhost:50051", server.address)
        scope: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), scope)
        out = capsys.readouterr().out.splitlines()
        assert out[-1] == str([" Mary"] * 4)  # every layer of the toy model predicts " Mary"
        assert scope["atp"].method == "attribution"  # type: ignore[attr-defined]
    finally:
        server.stop()
