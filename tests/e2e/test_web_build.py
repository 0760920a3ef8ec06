"""The web app's toolchain: its TypeScript stubs match protos/, it type-checks, and its unit tests
(vitest: node keys, selectors, ablations) pass. Needs `npm ci` in clients/web (`make web`);
skipped without it, except under CI (CI=true), where `.ci/run` installs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.web import ROOT, WEB

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node_modules():
    if shutil.which("node") is None or not (WEB / "node_modules" / ".bin" / "vitest").exists():
        if os.environ.get("CI"):
            pytest.fail("clients/web/node_modules is missing in CI: .ci/run runs `make web`")
        pytest.skip("needs node and `npm ci` in clients/web (make web)")
    return WEB / "node_modules"


def test_web_stubs_are_fresh(node_modules):
    """The committed src/gen/tdb/v1/*_pb.ts are exactly what scripts/gen_web_protos.py makes."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_web_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_web_typechecks_and_unit_tests_pass(node_modules):
    """tsc --noEmit over the app and its tests, then vitest."""
    bins = node_modules / ".bin"
    r = subprocess.run(
        [str(bins / "tsc"), "-p", "."], cwd=WEB, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [str(bins / "vitest"), "run"],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert " passed" in r.stdout and "failed" not in r.stdout.split("Tests")[-1]


def test_dockerfile_builds_the_app_in_a_node_stage_and_serves_it():
    """The image builds clients/web from its lock file in a Node stage and serves dist/ on 8080."""
    text = (ROOT / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    node = next(s for s in stages if s.startswith("node:"))
    assert "npm ci" in node and "package-lock.json" in node and "npm run build" in node
    final = stages[-1]
    assert "COPY --from=web /web/dist /app/clients/web/dist" in final
    assert "TDB_WEB_DIR=/app/clients/web/dist" in text and "TDB_HTTP_PORT=8080" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "clients/web/node_modules" in ignored and "clients/web/dist" in ignored
