"""Helpers for driving the web app (clients/web) in Debian's Chromium with Playwright.

Used by tests/e2e/test_web_app.py and `python -m benchmarks webapp`. Playwright cannot download
its own browser here, so it launches /usr/bin/chromium (apt-get install chromium; `.ci/run` does)
with the flags this machine's closed network needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "clients" / "web"
DIST = WEB / "dist"
CHROMIUM = os.environ.get("TDB_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IOI = "When Mary and John went to the store, John gave a drink to"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the `playwright` Python package is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not (WEB / "node_modules").exists() and not (DIST / "index.html").exists():
        return "the web app is not built (make web)"
    if shutil.which("node") is None and not (DIST / "index.html").exists():
        return "node is missing and the web app is not built"
    return None


def _newest(path: Path) -> float:
    return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)


def ensure_built() -> None:
    """Build clients/web/dist when it is missing or older than the app's sources."""
    index = DIST / "index.html"
    sources = max(_newest(WEB / "src"), (WEB / "index.html").stat().st_mtime)
    if index.exists() and index.stat().st_mtime >= sources:
        return
    if not (WEB / "node_modules").exists():
        if index.exists():
            return  # a prebuilt app and no toolchain: test what is there
        raise RuntimeError("clients/web/node_modules is missing: run `make web`")
    subprocess.run(["npm", "run", "build"], cwd=WEB, check=True, capture_output=True, timeout=300)


@contextmanager
def web_server(**settings: Any) -> Iterator[str]:
    """The embedded toy model on native gRPC + gRPC-Web, the built app at /; yields the base URL."""
    from services.server import build_server
    from services.settings import Settings

    svc = build_server(
        Settings(host="127.0.0.1", port=0, http_port=0, web_dir=str(DIST), **settings)
    )
    try:
        yield f"http://127.0.0.1:{svc.http_port}"
    finally:
        svc.stop(0)


@contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def debugger_url(base: str, prompt: str = IOI, **extra: str | list[str]) -> str:
    params: list[tuple[str, str]] = [
        ("prompt", prompt),
        ("target", " Mary"),
        ("distractor", " John"),
    ]
    for k, v in extra.items():
        params.extend((k, x) for x in ([v] if isinstance(v, str) else v))
    return f"{base}/?{urllib.parse.urlencode(params)}"
