"""`tdb serve --http-port`: the README's gRPC-Web shell examples run as written, and the HTTP port
speaks HTTPS with the gRPC port's certificate and token."""

from __future__ import annotations

import http.client
import re
import shutil
import ssl
import struct
import subprocess
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
