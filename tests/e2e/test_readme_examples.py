"""Every README example runs as written, against `tdb serve` with the embedded toy model.

The examples are extracted from README.md (tests/e2e/readme_examples.py: every ```sh/```bash,
```python and ```js block, unless marked `<!-- example: not run (REASON) -->`), so an example
someone adds later is run too. Each runs in a fresh directory holding links to the checkout's
top-level entries (so `.venv/bin/tdb` and `require('./clients/node')` work as written and files
an example writes stay out of the checkout). The only rewriting is the address: the README's
`localhost:50051` and `localhost:8080` become the test server's ports. Shell blocks run under
`bash -e -o pipefail`: every command must exit 0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import cli_env, start_server
from tests.e2e.readme_examples import Example, extract

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES = extract(README)


@dataclass(frozen=True)
class Served:
    grpc: str  # host:port
    http: str  # host:port
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("readme-data")
    before = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(data)  # start_server's environment: the catalog goes here
    try:
        server = start_server("--http-port", "0")
    finally:
        if before is None:
            del os.environ["XDG_DATA_HOME"]
        else:
            os.environ["XDG_DATA_HOME"] = before
    event = server.events()[0]
    bin_dir = str(Path(sys.executable).parent)
    env = cli_env() | {
        "TDB_SERVER": server.address,
        "XDG_DATA_HOME": str(data),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "TDB_LOG_FORMAT": "console",
    }
    yield Served(server.address, event["http_address"], env)
    if server.proc.poll() is None:
        server.stop()


def _workdir(tmp: Path) -> Path:
    """A directory that looks like the checkout (links to its top-level entries)."""
    for entry in ROOT.iterdir():
        if entry.name not in (".git",):
            (tmp / entry.name).symlink_to(entry)
    return tmp


def _rewrite(code: str, served: Served) -> str:
    return (
        code.replace("localhost:50051", served.grpc)
        .replace("127.0.0.1:50051", served.grpc)
        .replace("localhost:8080", served.http)
        .replace("127.0.0.1:8080", served.http)
    )


def _command(example: Example, work: Path) -> list[str]:
    if example.language == "shell":
        if "grpcurl " in example.code and shutil.which("grpcurl") is None:
            pytest.skip(
                "grpcurl is not installed (tests/service/test_reflection.py checks reflection)"
            )
        return ["bash", "-e", "-o", "pipefail", "-c", example.code]
    if example.language == "python":
        return [sys.executable, "-c", example.code]
    node = shutil.which("node")
    if node is None or not (ROOT / "clients" / "node" / "node_modules" / "@grpc").exists():
        if os.environ.get("CI"):
            pytest.fail("clients/node/node_modules is missing in CI: .ci/run runs `npm ci` there")
        pytest.skip("needs node and `npm ci` in clients/node")
    script = work / f"readme_example_{example.line}.mjs"
    script.write_text(example.code, encoding="utf-8")
    return [node, str(script)]


def test_readme_has_examples_of_each_language():
    """The extractor finds the README's shell, Python and Node examples, and every example that is
    not run says why."""
    languages = {e.language for e in EXAMPLES if e.not_run is None}
    assert languages == {"shell", "python", "node"}, languages
    assert all(e.not_run for e in EXAMPLES if e.not_run is not None)


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example_runs(example: Example, served: Served, tmp_path: Path):
    """The block exits 0 with no traceback against the served toy model."""
    if example.not_run:
        pytest.skip(f"marked not run: {example.not_run}")
    work = _workdir(tmp_path)
    example = Example(
        example.path, example.line, example.language, _rewrite(example.code, served), None
    )
    # its own process group, killed afterwards: nothing an example starts outlives it
    proc = subprocess.Popen(
        _command(example, work),
        cwd=work,
        env=served.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    shown = f"--- {example.id}\n{example.code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    assert r.returncode == 0, shown
    assert "Traceback" not in r.stderr, shown
