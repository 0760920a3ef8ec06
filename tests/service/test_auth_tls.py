"""Bearer-token auth and TLS / mutual TLS, over real channels to in-process servers."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.auth import BearerTokenAuthorizer, read_tokens
from services.server import SERVICE_NAMES
from tdb_core.errors import InvalidArgumentError
from tdb_core.runner import ModelRunner
from tests.certs import CertificateAuthority
from tests.service.conftest import LIMITS

TOKENS = ("first-token-0123456789", "second-token-abcdef")


def all_methods() -> list[tuple[str, str, bool, bool]]:
    """(path, id, client_streaming, server_streaming) of every RPC the server registers, read
    from the service descriptors, so a new RPC is covered without touching this test."""
    out = []
    for name in (*SERVICE_NAMES, reflection.SERVICE_NAME):
        svc = descriptor_pool.Default().FindServiceByName(name)
        for m in svc.methods:
            out.append(
                (
                    f"/{svc.full_name}/{m.name}",
                    f"{svc.name}.{m.name}",
                    m.client_streaming,
                    m.server_streaming,
                )
            )
    return out


METHODS = all_methods()


def call_raw(
    channel: grpc.Channel,
    path: str,
    client_streaming: bool,
    server_streaming: bool,
    metadata: tuple[tuple[str, str], ...],
) -> None:
    """Call any RPC with an empty request, reading the whole response."""
    ident = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    if client_streaming and server_streaming:
        for _ in channel.stream_stream(path, **ident)(iter([b""]), metadata=metadata, timeout=10):
            pass
    elif client_streaming:
        channel.stream_unary(path, **ident)(iter([b""]), metadata=metadata, timeout=10)
    elif server_streaming:
        for _ in channel.unary_stream(path, **ident)(b"", metadata=metadata, timeout=10):
            pass
    else:
        channel.unary_unary(path, **ident)(b"", metadata=metadata, timeout=10)


@pytest.fixture(scope="module")
def auth_service(tiny_loaded, tmp_path_factory) -> Iterator[object]:
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# accepted tokens\n{TOKENS[0]}\n\n  {TOKENS[1]}  \n")
    svc = build_server(
        Settings(port=0, auth_token_file=str(path), limits=LIMITS),
        ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
    )
    yield svc
    svc.stop(0)


@pytest.mark.parametrize(
    "path,cs,ss", [(p, c, s) for p, _, c, s in METHODS], ids=[i for _, i, _, _ in METHODS]
)
def test_every_rpc_refuses_a_missing_or_wrong_token(auth_service, path, cs, ss):
    """With auth on, every RPC of every service (reflection included) answers UNAUTHENTICATED
    without a token, with a wrong token, with a token prefix, and with a non-Bearer scheme."""
    bad = [
        (),
        (("authorization", "Bearer wrong-token"),),
        (("authorization", f"Bearer {TOKENS[0][:-1]}"),),
        (("authorization", f"Basic {TOKENS[0]}"),),
        (("authorization", "Bearer "),),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{auth_service.port}") as ch:
        for md in bad:
            with pytest.raises(grpc.RpcError) as e:
                call_raw(ch, path, cs, ss, md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (path, md, e.value.details())


def test_valid_tokens_pass_and_health_needs_none(auth_service):
    """Each token in the file is accepted; the health service answers without any token."""
    from tdb_client import TdbClient, TdbClientError

    address = f"127.0.0.1:{auth_service.port}"
    for token in TOKENS:
        with TdbClient(address, token=token, timeout=30) as c:
            assert [m.name for m in c.list_models()] == ["tiny"]
            assert c.server_info().features["auth"] is True
    with TdbClient(address, timeout=30) as c, pytest.raises(TdbClientError) as e:
        c.list_models()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in e.value.details
    with grpc.insecure_channel(address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_token_file_validation(tmp_path):
    """Empty token files and tokens with spaces are refused at start-up with a clear message;
    the authorizer accepts exactly the configured tokens."""
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(InvalidArgumentError, match="holds no token"):
        read_tokens(empty)
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    with pytest.raises(InvalidArgumentError, match="whitespace"):
        read_tokens(spaced)
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        read_tokens(tmp_path / "missing")
    good = tmp_path / "good"
    good.write_text("abc\ndef\n")
    assert read_tokens(good) == (b"abc", b"def")

    class Ctx:
        def __init__(self, md):
            self.md = md

        def invocation_metadata(self):
            return self.md

    auth = BearerTokenAuthorizer(read_tokens(good))
    auth("/tdb.v1.ModelService/ListModels", Ctx((("authorization", "Bearer def"),)))
    auth("/tdb.v1.ModelService/ListModels", Ctx((("authorization", "bearer abc"),)))
    auth("/grpc.health.v1.Health/Check", Ctx(()))
    from tdb_core.errors import UnauthenticatedError

    for md in [(), (("authorization", "Bearer abcd"),), (("authorization", "Bearer ab"),)]:
        with pytest.raises(UnauthenticatedError):
            auth("/tdb.v1.ModelService/ListModels", Ctx(md))


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(out, "tdb test CA")
    other = CertificateAuthority(out, "rogue CA")
    return {
        "ca": ca.pem,
        "server": ca.issue("server", "localhost", server=True),
        "client": ca.issue("client", "alice", server=False),
        "rogue_client": other.issue("rogue-client", "mallory", server=False),
        "rogue_ca": other.pem,
    }


def _tls_server(tiny_loaded, pki, mutual: bool, token_file: str | None = None):
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    return build_server(
        Settings(
            port=0,
            tls_cert=str(pki["server"].cert_path),
            tls_key=str(pki["server"].key_path),
            tls_client_ca=str(pki["ca"].cert_path) if mutual else None,
            auth_token_file=token_file,
            limits=LIMITS,
        ),
        ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
    )


def _refused(address: str, **kwargs) -> grpc.StatusCode:
    from tdb_client import TdbClient, TdbClientError

    with (
        TdbClient(address, timeout=10, max_attempts=1, **kwargs) as c,
        pytest.raises(TdbClientError) as e,
    ):
        c.list_models()
    return e.value.code


def test_tls_end_to_end(tiny_loaded, pki, tmp_path):
    """A TLS server with a token: a client trusting the CA (by path or by PEM bytes, by IP or by
    name) and sending the token gets results; a plaintext client, a client trusting another CA,
    and a TLS client without the token are refused."""
    from tdb_client import TdbClient, TlsConfig

    tokens = tmp_path / "tokens"
    tokens.write_text("tls-token\n")
    svc = _tls_server(tiny_loaded, pki, mutual=False, token_file=str(tokens))
    try:
        for host in ("127.0.0.1", "localhost"):
            for root in (pki["ca"].cert, str(pki["ca"].cert_path)):
                with TdbClient(
                    f"{host}:{svc.port}", tls=TlsConfig(root_ca=root), token="tls-token", timeout=30
                ) as c:
                    out = c.forward("Hello there", capture=["blocks.0.hook_resid_post"])
                    assert out.activations["blocks.0.hook_resid_post"].shape[-1] == 64
                    features = c.server_info().features
                    assert features["tls"] and features["auth"] and not features["mutual_tls"]
        address = f"127.0.0.1:{svc.port}"
        assert _refused(address, token="tls-token") == grpc.StatusCode.UNAVAILABLE
        assert (
            _refused(address, token="tls-token", tls=TlsConfig(root_ca=pki["rogue_ca"].cert))
            == grpc.StatusCode.UNAVAILABLE
        )
        assert (
            _refused(address, tls=TlsConfig(root_ca=pki["ca"].cert))
            == grpc.StatusCode.UNAUTHENTICATED
        )
    finally:
        svc.stop(0)


def test_mutual_tls_end_to_end(tiny_loaded, pki):
    """With a client CA, only clients presenting a certificate signed by it are served."""
    from tdb_client import TdbClient, TlsConfig

    svc = _tls_server(tiny_loaded, pki, mutual=True)
    address = f"127.0.0.1:{svc.port}"
    try:
        cfg = TlsConfig(
            root_ca=pki["ca"].cert,
            client_cert=pki["client"].cert_path,
            client_key=pki["client"].key_path,
        )
        with TdbClient(address, tls=cfg, timeout=30) as c:
            assert (
                c.tokenize("Hello", prepend_bos=False)
                == c.tokenize(["Hello"], prepend_bos=False)[0]
            )
            assert c.server_info().features["mutual_tls"] is True
        assert (
            _refused(address, tls=TlsConfig(root_ca=pki["ca"].cert)) == grpc.StatusCode.UNAVAILABLE
        )
        rogue = TlsConfig(
            root_ca=pki["ca"].cert,
            client_cert=pki["rogue_client"].cert,
            client_key=pki["rogue_client"].key,
        )
        assert _refused(address, tls=rogue) == grpc.StatusCode.UNAVAILABLE
    finally:
        svc.stop(0)
