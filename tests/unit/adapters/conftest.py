"""Fixtures of the adapter conformance suite: one tiny saved model per architecture.

``arch`` is parametrized over every architecture of :data:`~tests.unit.adapters.archs.ARCHS`, so
any test that takes ``arch_runner`` (or ``arch_loaded``, ``arch_dir``) runs on all of them; a test
for a subset parametrizes ``arch`` indirectly, e.g.
``@pytest.mark.parametrize("arch", GQA_ARCH_NAMES, indirect=True)``. Each model is saved with
``save_pretrained`` beside a locally trained tokenizer and loaded through ``adapters.load_model``,
the path a user's model takes.

The site test records the largest absolute difference from the reference per site family; the
table is printed at the end of the run (and written as JSON to ``$TDB_CONFORMANCE_TABLE`` when
that is set).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tdb_core.schema import SITE_KINDS
from tests.unit.adapters.archs import ARCH_BY_NAME, ARCH_NAMES, MAX_DIFF, ArchCase, build_model


@pytest.fixture(scope="session")
def adapter_tokenizer() -> Any:
    from tests.tiny import train_tokenizer

    return train_tokenizer()


@pytest.fixture(scope="session", params=ARCH_NAMES)
def arch(request: pytest.FixtureRequest) -> str:
    """The name of the architecture under test."""
    return request.param


@pytest.fixture(scope="session")
def arch_case(arch: str) -> ArchCase:
    return ARCH_BY_NAME[arch]


@pytest.fixture(scope="session")
def arch_dir(
    arch_case: ArchCase, adapter_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model of the architecture and its tokenizer, saved as a HF directory."""
    path = tmp_path_factory.mktemp(f"tiny-{arch_case.name}")
    build_model(arch_case, len(adapter_tokenizer)).save_pretrained(path)
    adapter_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def arch_loaded(arch_case: ArchCase, arch_dir: Path) -> Any:
    import adapters

    return adapters.load_model(arch_case.name, str(arch_dir))


@pytest.fixture(scope="session")
def arch_runner(arch_loaded: Any) -> Any:
    """A ModelRunner serving the architecture's tiny model (fp32, CPU)."""
    from tdb_core.runner import ModelRunner

    return ModelRunner(arch_loaded)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one intra-op thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MAX_DIFF:
        return
    seen = {k for per in MAX_DIFF.values() for k in per}
    kinds = [k.key for k in SITE_KINDS if k.key in seen]
    tr = terminalreporter
    tr.section("adapter conformance: max |ours - reference| per site family (fp32 vs float64)")
    names = list(MAX_DIFF)
    tr.write_line(f"{'site family':28}" + "".join(f"{n:>16}" for n in names))
    for kind in kinds:
        cells = "".join(
            f"{MAX_DIFF[n][kind]:>16.2e}" if kind in MAX_DIFF[n] else f"{'absent':>16}"
            for n in names
        )
        tr.write_line(f"{kind:28}{cells}")
    out = os.environ.get("TDB_CONFORMANCE_TABLE")
    if out:
        Path(out).write_text(json.dumps(MAX_DIFF, indent=1))
