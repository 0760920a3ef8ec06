"""Run the real `tdb` CLI in subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

TDB = [sys.executable, "-m", "services.cli"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TDB_LOG_FORMAT="json")
    return env


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    address: str
    log: list[str]
    drain: threading.Thread

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.drain.join(timeout)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code

    def close(self) -> None:
        """Kill the server if a failed test left it running and release its pipe, so one
        failure does not leak a live process into the tests after it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.drain.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def events(self) -> list[dict]:
        out = []
        for line in list(self.log):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out


def start_server(*args: str, timeout: float = 120) -> ServerProcess:
    """Start `tdb serve --port 0 ...`; wait for its 'serving' log line to learn the address."""
    proc = subprocess.Popen(
        [*TDB, "serve", "--port", "0", *args],
        env=cli_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "serving":
            log: list[str] = [line]
            drain = threading.Thread(target=log.extend, args=(proc.stderr,), daemon=True)
            drain.start()  # keep reading so the server never blocks on a full pipe
            return ServerProcess(proc, event["address"], log, drain)
    proc.kill()
    raise RuntimeError("server did not start")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TDB, *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def tiny_server(tiny_gpt2_dir) -> Iterator[ServerProcess]:
    server = start_server("--model", f"tiny={tiny_gpt2_dir}")
    yield server
    if server.proc.poll() is None:
        server.stop()
