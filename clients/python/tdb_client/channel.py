"""Channels to one server or to several replicas: TLS, round-robin balancing, retries.

A target is one of

- ``"host:port"``: one server (still balanced over every address the name resolves to);
- ``"dns:///name:port"`` (any gRPC target URI): re-resolved by gRPC, e.g. a Kubernetes headless
  Service, so replicas that come and go are picked up;
- a list ``["h1:p", "h2:p"]`` or the string ``"h1:p,h2:p"``: a fixed set of replicas, resolved
  once when the client is made.

Calls are spread round-robin over the addresses, and a call that fails with UNAVAILABLE before
the server answered (a replica went away, refused the connection, or shed load) is retried on
the next replica, up to :data:`MAX_ATTEMPTS` attempts in all, with jittered exponential backoff.
Every RPC of the service is safe to repeat except those in :data:`NOT_RETRIED` (LoadSae attaches
an SAE to the one replica that serves it, and repeating it there fails with "already attached");
ExplainNode's writes to the explanation store are upserts, so a repeat leaves the same entry.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc

from tdb.v1 import attribution_pb2, explain_pb2, inference_pb2, model_pb2, sae_pb2, server_pb2

#: Modules whose services the retry policy covers (every service of the tdb.v1 contract).
SERVICE_MODULES: tuple[ModuleType, ...] = (
    model_pb2,
    inference_pb2,
    attribution_pb2,
    sae_pb2,
    explain_pb2,
    server_pb2,
)
#: RPCs that change server state and are therefore never retried.
NOT_RETRIED = frozenset({"tdb.v1.SaeService/LoadSae"})
MAX_ATTEMPTS = 5

PemLike = bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings of a client. Each PEM is given as ``bytes`` (the PEM itself) or a path.

    ``root_ca``: CA that signed the server's certificate (None: the system's roots);
    ``client_cert``/``client_key``: this client's certificate and key, for mutual TLS;
    ``server_name``: the name to check the server's certificate against, when it differs from
    the host in the target (e.g. connecting by IP to a certificate issued for a DNS name).
    """

    root_ca: PemLike | None = None
    client_cert: PemLike | None = None
    client_key: PemLike | None = None
    server_name: str | None = None


def _pem(value: PemLike | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _split_host_port(address: str) -> tuple[str, str]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
        if not sep or not port:
            raise ValueError(f"bad address {address!r}: expected [IPV6]:PORT")
        return host, port
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"bad address {address!r}: expected HOST:PORT")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def replicas_target(addresses: Sequence[str]) -> tuple[str, str | None]:
    """A gRPC ``ipv4:``/``ipv6:`` target listing every address of the replicas, and the host
    name to use as the authority (None when every replica is given by IP).

    Names are resolved now, once. IPv4 addresses are used when there are any (one target URI
    holds one address family).
    """
    if not addresses:
        raise ValueError("give at least one replica address")
    v4: list[str] = []
    v6: list[str] = []
    authority = None
    for address in addresses:
        host, port = _split_host_port(address.strip())
        if _is_ip(host):
            ips = [host]
        else:
            authority = authority or host
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for ip in ips:
            if ipaddress.ip_address(ip).version == 4:
                v4.append(f"{ip}:{port}")
            else:
                v6.append(f"[{ip}]:{port}")
    uri = f"ipv4:{','.join(v4)}" if v4 else f"ipv6:{','.join(v6)}"
    return uri, authority


def service_config(max_attempts: int = MAX_ATTEMPTS) -> str:
    """Round-robin balancing, and retries on UNAVAILABLE for every RPC but :data:`NOT_RETRIED`."""
    names = []
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if f"{service.full_name}/{method.name}" not in NOT_RETRIED:
                    names.append({"service": service.full_name, "method": method.name})
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def make_channel(
    target: str | Sequence[str],
    tls: bool | TlsConfig | None = None,
    options: Sequence[tuple[str, Any]] = (),
    max_attempts: int = MAX_ATTEMPTS,
) -> grpc.Channel:
    """A channel to one server or a set of replicas (see the module docstring).

    ``tls``: None/False for plaintext, True for TLS with the system's roots, or a
    :class:`TlsConfig`. ``options`` are gRPC channel options; they override the defaults here.
    ``max_attempts``: attempts per call on UNAVAILABLE (1 turns retries off).
    """
    if (
        isinstance(target, str)
        and "," in target
        and not target.startswith(("ipv4:", "ipv6:"))
        and "://" not in target
    ):
        target = target.split(",")
    authority = None
    if not isinstance(target, str):
        target, authority = replicas_target(list(target))
    opts: list[tuple[str, Any]] = [
        ("grpc.enable_retries", 1 if max_attempts > 1 else 0),
        ("grpc.service_config", service_config(max_attempts)),
        # Server-streaming calls are read on the calling thread, with no channel "spin" thread
        # started per call and no hand-off of each message between threads (lower latency).
        ("SingleThreadedUnaryStream", 1),  # grpc.experimental.ChannelOptions
    ]
    if authority is not None:
        opts.append(("grpc.default_authority", authority))
    if tls is None or tls is False:
        return grpc.insecure_channel(target, options=[*opts, *options])
    cfg = TlsConfig() if tls is True else tls
    if cfg.server_name:
        opts.append(("grpc.ssl_target_name_override", cfg.server_name))
    creds = grpc.ssl_channel_credentials(
        root_certificates=_pem(cfg.root_ca),
        private_key=_pem(cfg.client_key),
        certificate_chain=_pem(cfg.client_cert),
    )
    return grpc.secure_channel(target, creds, options=[*opts, *options])
