"""`tdb serve --http-port`: the README's gRPC-Web shell examples run as written, the HTTP port
speaks HTTPS with the gRPC port's certificate and token, and SIGTERM drains gRPC-Web calls."""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.certs import CertificateAuthority
from tests.e2e.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]


def readme_examples() -> str:
    """The shell block of the README's "Browsers (gRPC-Web)" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Browsers (gRPC-Web)") :]
    section = section[: section.index("\n## ")]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    return block


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("strings") and shutil.which("base64")),
    reason="needs curl, strings (binutils) and base64",
)
def test_readme_examples_run_as_written(tmp_path):
    """The README's curl calls, against `tdb serve` with the embedded toy model and an HTTP port,
    print what the README says they print."""
    server = start_server("--http-port", "0", "--web-dir", str(tmp_path))
    try:
        event = server.events()[0]
        assert event["web_url"] == f"http://{event['http_address']}/"
        script = readme_examples().replace("localhost:8080", event["http_address"])
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines.count("toy-gpt2") == 2 and "GPT2LMHeadModel" in lines
        assert sum("grpc-status: 0" in line for line in lines) == 2
        assert "grpc-status: 5" in lines
        assert "grpc-message: model 'nope' is not loaded; loaded models: toy-gpt2" in lines
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_https_port_with_token_and_graceful_stop(tiny_gpt2_dir, tmp_path):
    """With --tls-cert/--tls-key the HTTP port is HTTPS (same certificate); the token is required
    there too; SIGTERM stops the process cleanly with the HTTP port on."""
    ca = CertificateAuthority(tmp_path)
    cert = ca.issue("server", "localhost", server=True)
    (tmp_path / "tokens").write_text("https-token\n")
    server = start_server(
        "--model",
        f"tiny={tiny_gpt2_dir}",
        "--http-port",
        "0",
        "--tls-cert",
        str(cert.cert_path),
        "--tls-key",
        str(cert.key_path),
        "--auth-token-file",
        str(tmp_path / "tokens"),
    )
    try:
        event = server.events()[0]
        port = int(event["http_address"].rsplit(":", 1)[1])
        assert event["web_url"] == f"https://127.0.0.1:{port}/"
        context = ssl.create_default_context(cafile=str(ca.pem.cert_path))

        def list_models(headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
            conn.request(
                "POST",
                "/tdb.v1.ModelService/ListModels",
                body=struct.pack(">BI", 0, 0),
                headers={"content-type": "application/grpc-web+proto", **headers},
            )
            r = conn.getresponse()
            out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            conn.close()
            return out

        status, headers, body = list_models({"authorization": "Bearer https-token"})
        assert status == 200 and b"tiny" in body and b"grpc-status: 0" in body
        status, headers, body = list_models({})
        assert headers["grpc-status"] == "16" and body == b""  # UNAUTHENTICATED
        untrusting = http.client.HTTPSConnection(
            "localhost", port, context=ssl.create_default_context(), timeout=30
        )
        with pytest.raises(ssl.SSLCertVerificationError):  # it is this CA's certificate
            untrusting.request("GET", "/")
        untrusting.close()
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_sigterm_drains_an_in_flight_grpc_web_call(tiny_gpt2_dir):
    """SIGTERM while a slow Attribute runs through gRPC-Web: the call still completes with its
    full answer (status OK in the trailer frame), then the process exits 0."""
    from tdb.v1 import attribution_pb2 as apb
    from tdb_client import losses
    from tdb_client.client import prompt_pb
    from tests.e2e.test_shutdown import PROMPT, _queue_depth

    server = start_server(
        "--model",
        f"tiny={tiny_gpt2_dir}",
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        "--grace-seconds",
        "240",
    )
    event = server.events()[0]
    port = int(event["http_address"].rsplit(":", 1)[1])
    req = apb.AttributeRequest(prompt=prompt_pb(PROMPT), ig_steps=16, top_k=20)
    loss = losses.logit_diff(5, 9)
    getattr(req, loss.field).CopyFrom(loss.to_pb())
    payload = req.SerializeToString()
    result: dict = {}

    def slow_call() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.request(
            "POST",
            "/tdb.v1.AttributionService/Attribute",
            body=struct.pack(">BI", 0, len(payload)) + payload,
            headers={"content-type": "application/grpc-web+proto"},
        )
        r = conn.getresponse()
        result["status"], result["body"] = r.status, r.read()
        conn.close()

    caller = threading.Thread(target=slow_call)
    caller.start()
    deadline = time.monotonic() + 120
    while _queue_depth(event["metrics_address"]) < 1:
        assert caller.is_alive(), f"the request finished before SIGTERM could be sent: {result}"
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    caller.join(280)
    assert result["status"] == 200
    body = result["body"]
    flags, n = struct.unpack_from(">BI", body)
    assert flags == 0
    answer = apb.AttributeResponse.FromString(body[5 : 5 + n])
    assert answer.rows and len(answer.loss_values) == 1
    assert body[5 + n] == 0x80 and b"grpc-status: 0" in body[5 + n :]
    assert server.proc.wait(60) == 0
    server.drain.join(10)
    assert server.proc.stderr is not None
    server.proc.stderr.close()
    names = [e.get("event") for e in server.events()]
    assert "shutting down" in names and names[-1] == "stopped"
