"""`tdb serve` secured and observed: TLS + bearer token + metrics flags, the `server-info` CLI with
client credentials, a Prometheus scrape, and the Node.js client against the same server."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import CertificateAuthority
from tests.e2e.conftest import ServerProcess, cli_env, run_cli, start_server

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
TOKEN = "e2e-token-7f3a"


@pytest.fixture(scope="module")
def secured(tiny_gpt2_dir, tmp_path_factory) -> Iterator[tuple[ServerProcess, Path, Path]]:
    out = tmp_path_factory.mktemp("secured")
    ca = CertificateAuthority(out)
    server = ca.issue("server", "localhost", server=True)
    tokens = out / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    catalog = out / "explanations.sqlite"
    _seed_catalog(catalog)
    proc = start_server(
        "--explanations-db",
        str(catalog),
        "--model",
        f"tiny={tiny_gpt2_dir}",
        "--tls-cert",
        str(server.cert_path),
        "--tls-key",
        str(server.key_path),
        "--auth-token-file",
        str(tokens),
        "--metrics-port",
        "0",
    )
    yield proc, ca.pem.cert_path, tokens
    if proc.proc.poll() is None:
        proc.stop()


def _seed_catalog(path: Path) -> None:
    """Explanations of the tiny model for the Node client's paging test (it needs >= 9): 12
    neurons, two explainers for neuron 0, one unscored."""
    from tdb_core.explain.store import ExplanationStore

    store = ExplanationStore(path)
    for i in range(12):
        for explainer in ("baseline", "other") if i == 0 else ("baseline",):
            store.put(
                model="tiny",
                node_key=f"blocks.0.mlp.hook_post[{i}]",
                method="baseline",
                explainer=explainer,
                explanation=f'the token " t{i}" (5.0)',
                score=None if i == 5 else i / 20,
                score_reason="never fired" if i == 5 else None,
            )


@pytest.mark.slow
def test_serving_log_and_server_info_cli(secured):
    """The serving log line names TLS, auth and the metrics address; `tdb server-info` with
    --tls-ca and --token-file prints the features and models, --json parses; without the token
    it fails with UNAUTHENTICATED."""
    proc, ca, tokens = secured
    event = proc.events()[0]
    assert event["tls"] is True and event["auth"] is True and event["metrics_address"]
    creds = ("--server", proc.address, "--tls-ca", str(ca), "--token-file", str(tokens))
    r = run_cli("server-info", *creds)
    assert r.returncode == 0, r.stderr
    assert "features: auth, tls, metrics" in r.stdout
    assert "* tiny: GPT2LMHeadModel on cpu (float32)" in r.stdout
    assert "tdb.v1.InferenceService: Forward, Ablate, PatchSweep" in r.stdout
    r = run_cli("server-info", "--json", *creds)
    data = json.loads(r.stdout)
    assert data["features"]["tls"] and data["models"][0]["limits"]["max_prompts"] > 0
    r = run_cli("server-info", "--server", proc.address, "--tls-ca", str(ca))
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr


def test_metrics_flag_serves_prometheus(secured):
    """--metrics-port serves /metrics over HTTP; calls made over TLS are counted there."""
    from tdb_client import TdbClient, TlsConfig

    proc, ca, _ = secured
    with TdbClient(proc.address, token=TOKEN, tls=TlsConfig(root_ca=ca)) as c:
        for _ in range(3):
            c.tokenize("the quick brown fox")
    url = f"http://{proc.events()[0]['metrics_address']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {
        (s.name, s.labels.get("method"), s.labels.get("code")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("tdb_rpc_requests_total", "Tokenize", "OK")] == 3
    assert samples[("tdb_tokens_processed_total", None, None)] >= 3 * 4


def test_node_client(secured, tmp_path):
    """The Node.js client (TLS + token) lists models and reassembles Forward activations that
    equal the Python client's, element for element."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        pytest.skip("needs node and `npm ci` in clients/node")
    from tdb_client import TdbClient, TlsConfig

    proc, ca, _ = secured
    prompt = "When Mary and John went to the store, John gave a drink to"
    site = "blocks.0.mlp.hook_post"
    with TdbClient(proc.address, token=TOKEN, tls=TlsConfig(root_ca=ca)) as c:
        out = c.forward(prompt, capture=[site], top_k=5)
    act = out.activations[site]
    expected = tmp_path / "expected.json"
    expected.write_text(
        json.dumps(
            {
                "token_ids": out.token_ids[0],
                "shape": list(act.shape),
                "values": np.asarray(act, dtype=np.float64).ravel().tolist(),
                "top_ids": list(out.top_logits[0][0].token_ids),
            }
        )
    )
    env = cli_env() | {
        "TDB_SERVER": proc.address,
        "TDB_TOKEN": TOKEN,
        "TDB_TLS_CA": str(ca),
        "TDB_EXPECTED": str(expected),
    }
    r = subprocess.run(
        [node, "--test", "test/"],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# pass 14" in r.stdout and "# fail 0" in r.stdout, r.stdout
