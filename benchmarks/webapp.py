"""The web app in a real browser: from pressing Run to the node table drawn, on the toy model.

    python -m benchmarks webapp [--runs 20]

A `tdb serve --http-port` child process serves the embedded toy model and the built app
(clients/web/dist; `make web`); Debian's Chromium, driven by Playwright, opens the debugger with
the IOI prompt and presses Run `--runs` times. Each run is timed in the page, from the click to the
frame after React committed the new node table (window.__tdb.runs: Attribute over gRPC-Web,
decoding, rendering ~40 rows; the logits calls run alongside). The same Attribute request over
native gRPC from Python is the baseline: the ratio is what the browser path adds. Target: p50 <
300 ms. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from benchmarks.common import emit

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "clients" / "web" / "dist"
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
PROMPT = "When Mary and John went to the store, John gave a drink to"


def start_server() -> tuple[subprocess.Popen, str, str]:
    """`tdb serve` on free ports; returns the process, the gRPC address and the HTTP base URL."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TDB_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--port", "0", "--http-port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "serving":
            drain = threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True)  # type: ignore[union-attr]
            drain.start()
            return proc, event["address"], f"http://{event['http_address']}"
    proc.kill()
    raise RuntimeError("server did not start")


def native_attribute_ms(address: str, runs: int) -> float:
    from tdb_client import TdbClient

    with TdbClient(address, timeout=60) as c:
        times = []
        for i in range(runs + 2):
            t = time.perf_counter()
            c.attribute(
                PROMPT,
                target=" Mary",
                distractor=" John",
                top_k=10,
                families=["embedding", "mlp_neuron", "attn_head", "attn_head_pair"],
            )
            if i >= 2:
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def browser_runs(base: str, runs: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    q = urllib.parse.urlencode([("prompt", PROMPT), ("target", " Mary"), ("distractor", " John")])
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = b.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(f"{base}/?{q}")
        page.wait_for_function(
            "window.__tdb && window.__tdb.runs[0]?.tableDrawn !== undefined", timeout=60_000
        )
        out = []
        for i in range(1, runs + 3):  # two warm-up runs
            page.click("[data-testid=run]")
            page.wait_for_function(
                f"window.__tdb.runs[{i}]?.tableDrawn !== undefined", timeout=60_000
            )
            page.wait_for_load_state("networkidle")  # the logits calls finish before the next run
            if i > 2:
                r = page.evaluate(f"window.__tdb.runs[{i}]")
                out.append(r["tableDrawn"] - r["start"])
        b.close()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    if not (DIST / "index.html").exists():
        print("clients/web/dist is missing: run `make web` first", file=sys.stderr)
        return 1
    proc, address, base = start_server()
    try:
        ms = browser_runs(base, args.runs)
        native = native_attribute_ms(address, args.runs)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    p50 = statistics.median(ms)
    emit(
        {
            "benchmark": "webapp",
            "runs": len(ms),
            "run_to_table_p50_ms": round(p50, 1),
            "run_to_table_p90_ms": round(sorted(ms)[int(0.9 * (len(ms) - 1))], 1),
            "run_to_table_min_ms": round(min(ms), 1),
            "native_grpc_attribute_p50_ms": round(native, 1),
            "browser_over_native": round(p50 / native, 2),
            "target_p50_ms": 300,
        }
    )
    return 0
