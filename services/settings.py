"""Server settings: one frozen object, read from flags and ``TDB_*`` environment variables here only."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field

from tdb_core.checks import Limits
from tdb_core.errors import InvalidArgumentError


@dataclass(frozen=True)
class ModelSource:
    """A model to load: the name requests use, and a local directory or hub id."""

    name: str
    source: str


@dataclass(frozen=True)
class SaeSource:
    """An SAE to attach at start-up: ``[MODEL:]ID=PATH[@SITE]``."""

    model: str | None
    id: str
    source: str
    site: str | None


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    models: tuple[ModelSource, ...] = ()  # empty: serve the embedded toy model
    default_model: str | None = None  # None: the first model
    saes: tuple[SaeSource, ...] = ()  # with no models configured: the toy model's SAE
    sae_root: str | None = None  # LoadSae may read paths under this directory
    explanations_db: str | None = None  # SQLite catalog; None: the default under the data dir
    explainers: tuple[str, ...] = ("baseline",)  # baseline, hf:PATH_OR_HUB_ID, openai:MODEL
    openai_base_url: str | None = None  # OpenAI-compatible endpoint (vLLM, llama.cpp, OpenAI)
    openai_api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
    datasets: tuple[tuple[str, str], ...] = ()  # (name, path) of JSONL/text files to mine
    device: str = "auto"
    dtype: str = "float32"
    limits: Limits = field(default_factory=Limits)
    max_workers: int = 16
    max_request_bytes: int = 64 * 2**20  # largest request message (activations, operands)
    log_format: str = "auto"  # auto (JSON unless a TTY) | json | console
    log_level: str = "info"
    grace_seconds: float = 10.0
    auth_token_file: str | None = None  # bearer tokens, one per line; None: no auth
    tls_cert: str | None = None  # PEM certificate (chain); with tls_key the server speaks TLS
    tls_key: str | None = None  # PEM private key of tls_cert
    tls_client_ca: str | None = None  # PEM CA: clients must present a certificate it signed
    metrics_port: int | None = None  # Prometheus /metrics on this port (0 picks one); None: off
    http_port: int | None = None  # gRPC-Web and the web app on this port (0 picks one); None: off
    cors_origins: tuple[str, ...] = ()  # other origins whose pages may call over gRPC-Web; "*": any
    web_dir: str | None = None  # the built web app; None: clients/web/dist when it exists
    cache_bytes: int = 0  # prompt cache budget (tdb_core.cache), shared by all models; 0: off


DTYPES = ("float32", "bfloat16", "float16")


def parse_model_flag(value: str) -> ModelSource:
    """``NAME=PATH_OR_HUB_ID`` (or just a path/hub id, named after its last component)."""
    if "=" in value:
        name, source = value.split("=", 1)
    else:
        source = value
        name = os.path.basename(value.rstrip("/")) or value
    if not name or not source:
        raise InvalidArgumentError(f"--model {value!r}: expected NAME=PATH_OR_HUB_ID")
    return ModelSource(name, source)


def parse_sae_flag(value: str) -> SaeSource:
    """``[MODEL:]ID=PATH[@SITE]``, e.g. ``res1=/saes/l1@blocks.1.hook_resid_pre``."""
    head, sep, rest = value.partition("=")
    if not sep or not head or not rest:
        raise InvalidArgumentError(f"--sae {value!r}: expected [MODEL:]ID=PATH[@SITE]")
    model, _, sae_id = head.rpartition(":")
    path, _, site = rest.partition("@")
    return SaeSource(model or None, sae_id, path, site or None)


def _name_value(value: str, flag: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise InvalidArgumentError(f"{flag} {value!r}: expected NAME=PATH")
    return name, path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TDB_{name}", default)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``tdb serve``; each defaults to its ``TDB_*`` environment variable."""
    d = Settings()
    for add in (
        _model_arguments,
        _address_arguments,
        _limit_arguments,
        _security_arguments,
        _http_arguments,
        _log_arguments,
    ):
        add(p, d)


def _model_arguments(p: argparse.ArgumentParser, d: Settings) -> None:
    """Models, SAEs, explanations and datasets the server offers."""
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH_OR_HUB_ID",
        help="load a HF causal LM (repeatable); default: the embedded toy model "
        "(env TDB_MODELS, comma-separated)",
    )
    p.add_argument(
        "--sae",
        action="append",
        default=[],
        metavar="[MODEL:]ID=PATH[@SITE]",
        help="attach an SAE (OpenAI .pt or SAELens dir) to a model (repeatable)",
    )
    p.add_argument(
        "--sae-root",
        default=_env("SAE_ROOT", "") or None,
        metavar="DIR",
        help="allow LoadSae to attach SAEs from under DIR (env TDB_SAE_ROOT)",
    )
    p.add_argument(
        "--explanations-db",
        default=_env("EXPLANATIONS_DB", "") or None,
        metavar="FILE",
        help="SQLite catalog of explanations (default: "
        "$XDG_DATA_HOME/tdb/explanations.sqlite; env TDB_EXPLANATIONS_DB)",
    )
    p.add_argument(
        "--explainer",
        action="append",
        default=[],
        metavar="METHOD",
        help="explanation method the server offers: baseline (always), "
        "hf:PATH_OR_HUB_ID (a local HF causal LM), openai:MODEL (an "
        "OpenAI-compatible endpoint); the first is the default",
    )
    p.add_argument(
        "--openai-base-url",
        default=_env("OPENAI_BASE_URL", "") or None,
        metavar="URL",
        help="base URL of the OpenAI-compatible endpoint (vLLM, llama.cpp server, OpenAI)",
    )
    p.add_argument(
        "--openai-api-key-env",
        default=_env("OPENAI_API_KEY_ENV", "OPENAI_API_KEY"),
        metavar="VAR",
        help="environment variable holding the endpoint's API key",
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help='a text dataset (JSONL of {"text": ...} or plain text) to mine '
        "records from (repeatable); 'toy' (the toy corpus) is always there",
    )


def _address_arguments(p: argparse.ArgumentParser, d: Settings) -> None:
    """The default model, where the server listens, and the device and dtype of loaded models."""
    p.add_argument(
        "--default-model",
        default=_env("DEFAULT_MODEL", "") or None,
        help="model used when a request names none (default: the first)",
    )
    p.add_argument("--host", default=_env("HOST", d.host), help="bind address (env TDB_HOST)")
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("PORT", str(d.port))),
        help="port, 0 picks a free one (env TDB_PORT)",
    )
    p.add_argument(
        "--device",
        default=_env("DEVICE", d.device),
        help="auto, cpu, cuda or cuda:N (env TDB_DEVICE)",
    )
    p.add_argument(
        "--dtype",
        default=_env("DTYPE", d.dtype),
        choices=DTYPES,
        help="weight dtype (env TDB_DTYPE)",
    )


def _limit_arguments(p: argparse.ArgumentParser, d: Settings) -> None:
    """Request limits, admission and worker threads."""
    p.add_argument(
        "--max-tokens",
        type=int,
        default=int(_env("MAX_TOKENS", str(d.limits.max_tokens_per_prompt))),
        help="max tokens per prompt (env TDB_MAX_TOKENS)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=int(_env("MAX_NEW_TOKENS", str(d.limits.max_new_tokens))),
        help="max tokens one Generate request generates per row (env TDB_MAX_NEW_TOKENS)",
    )
    p.add_argument(
        "--max-prompts",
        type=int,
        default=int(_env("MAX_PROMPTS", str(d.limits.max_prompts))),
        help="max prompts per request (env TDB_MAX_PROMPTS)",
    )
    p.add_argument(
        "--max-response-mb",
        type=float,
        default=float(_env("MAX_RESPONSE_MB", str(d.limits.max_response_bytes / 2**20))),
        help="max response size in MiB (env TDB_MAX_RESPONSE_MB)",
    )
    p.add_argument(
        "--memory-budget-mb",
        type=float,
        default=float(_env("MEMORY_BUDGET_MB", str(d.limits.max_working_bytes / 2**20))),
        help="estimated working memory one pass may use (env TDB_MEMORY_BUDGET_MB)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=int(_env("MAX_QUEUE", str(d.limits.max_queue))),
        help="requests running or waiting per model; more get UNAVAILABLE (env TDB_MAX_QUEUE)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=int(_env("MAX_BATCH_TOKENS", str(d.limits.max_batch_tokens))),
        help="padded tokens of one micro-batched pass (env TDB_MAX_BATCH_TOKENS)",
    )
    p.add_argument(
        "--max-pass-rows",
        type=int,
        default=int(_env("MAX_PASS_ROWS", str(d.limits.max_pass_rows))),
        help="prompt rows over all passes of one request: patch sweeps, IG steps "
        "(env TDB_MAX_PASS_ROWS)",
    )
    p.add_argument(
        "--max-interventions",
        type=int,
        default=int(_env("MAX_INTERVENTIONS", str(d.limits.max_interventions))),
        help="interventions of one request, over all its sets (env TDB_MAX_INTERVENTIONS)",
    )
    p.add_argument(
        "--max-tokenize-texts",
        type=int,
        default=int(_env("MAX_TOKENIZE_TEXTS", str(d.limits.max_tokenize_texts))),
        help="texts of one Tokenize request (env TDB_MAX_TOKENIZE_TEXTS)",
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=float(_env("MAX_REQUEST_MB", str(d.max_request_bytes / 2**20))),
        help="largest request message in MiB (env TDB_MAX_REQUEST_MB)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(_env("WORKERS", str(d.max_workers))),
        help="RPCs running at once; one more is refused at once with UNAVAILABLE (health "
        "checks are exempt and have threads of their own) (env TDB_WORKERS)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("GRACE_SECONDS", str(d.grace_seconds))),
        help="on SIGTERM, how long in-flight requests may run before they are cancelled "
        "(env TDB_GRACE_SECONDS)",
    )


def _security_arguments(p: argparse.ArgumentParser, d: Settings) -> None:
    """Authentication and TLS."""
    p.add_argument(
        "--auth-token-file",
        default=_env("AUTH_TOKEN_FILE", "") or None,
        metavar="FILE",
        help="require 'authorization: Bearer <token>' on every RPC but health; FILE "
        "holds the accepted tokens, one per line (env TDB_AUTH_TOKEN_FILE)",
    )
    p.add_argument(
        "--tls-cert",
        default=_env("TLS_CERT", "") or None,
        metavar="PEM",
        help="serve TLS with this certificate (chain); needs --tls-key (env TDB_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=_env("TLS_KEY", "") or None,
        metavar="PEM",
        help="private key of --tls-cert (env TDB_TLS_KEY)",
    )
    p.add_argument(
        "--tls-client-ca",
        default=_env("TLS_CLIENT_CA", "") or None,
        metavar="PEM",
        help="mutual TLS: clients must present a certificate signed by this CA "
        "(env TDB_TLS_CLIENT_CA)",
    )


def _http_arguments(p: argparse.ArgumentParser, d: Settings) -> None:
    """The HTTP port: metrics, gRPC-Web, CORS and the web app."""
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "-1")),
        help="serve Prometheus metrics over HTTP at :PORT/metrics, 0 picks a free port, "
        "-1 (default) turns them off (env TDB_METRICS_PORT)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=int(_env("HTTP_PORT", "-1")),
        help="serve gRPC-Web (every RPC, for browsers) and the web app over HTTP on PORT, "
        "next to the gRPC port; 0 picks a free port, -1 (default) turns it off "
        "(env TDB_HTTP_PORT)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN (e.g. http://localhost:5173) call over gRPC-Web; "
        "repeatable, '*' allows any; default: same origin only "
        "(env TDB_CORS_ORIGINS, comma-separated)",
    )
    p.add_argument(
        "--web-dir",
        default=_env("WEB_DIR", "") or None,
        metavar="DIR",
        help="serve the built web app from DIR at / on the HTTP port (default: "
        "clients/web/dist when it exists; env TDB_WEB_DIR)",
    )


def _log_arguments(p: argparse.ArgumentParser, d: Settings) -> None:
    """Logging."""
    p.add_argument(
        "--cache-mb",
        type=float,
        default=float(_env("CACHE_MB", str(d.cache_bytes / 2**20))),
        metavar="MB",
        help="keep recorded forward passes for repeated queries on a prompt, in an LRU of at "
        "most MB MiB shared by all models; 0 (default) turns the cache off (env TDB_CACHE_MB)",
    )
    p.add_argument(
        "--log-format",
        default=_env("LOG_FORMAT", d.log_format),
        choices=("auto", "json", "console"),
        help="env TDB_LOG_FORMAT",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", d.log_level),
        choices=("debug", "info", "warning", "error"),
        help="env TDB_LOG_LEVEL",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    model_flags = list(args.model)
    if not model_flags and os.environ.get("TDB_MODELS"):
        model_flags = [m for m in os.environ["TDB_MODELS"].split(",") if m]
    models = tuple(parse_model_flag(m) for m in model_flags)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidArgumentError("--tls-cert and --tls-key go together: give both or neither")
    if args.tls_client_ca and not args.tls_cert:
        raise InvalidArgumentError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    cors_origins = list(args.cors_origin)
    if not cors_origins and os.environ.get("TDB_CORS_ORIGINS"):
        cors_origins = [o.strip() for o in os.environ["TDB_CORS_ORIGINS"].split(",") if o.strip()]
    for origin in cors_origins:
        if origin != "*" and not re.fullmatch(r"(https?://[^/\s]+|null)", origin.rstrip("/")):
            raise InvalidArgumentError(
                f"--cors-origin {origin!r}: expected an origin such as "
                "https://app.example.com or http://localhost:5173 (scheme, host, port), or '*'"
            )
    if args.web_dir and not os.path.isdir(args.web_dir):
        raise InvalidArgumentError(f"--web-dir {args.web_dir!r} is not a directory")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"model names must be unique, got {names}")
    return Settings(
        host=args.host,
        port=args.port,
        models=models,
        default_model=args.default_model,
        saes=tuple(parse_sae_flag(v) for v in args.sae),
        sae_root=args.sae_root,
        explanations_db=args.explanations_db,
        explainers=tuple(dict.fromkeys([*args.explainer, "baseline"])),
        openai_base_url=args.openai_base_url,
        openai_api_key_env=args.openai_api_key_env,
        datasets=tuple(_name_value(v, "--dataset") for v in args.dataset),
        device=args.device,
        dtype=args.dtype,
        limits=Limits(
            max_tokens_per_prompt=args.max_tokens,
            max_prompts=args.max_prompts,
            max_response_bytes=int(args.max_response_mb * 2**20),
            max_working_bytes=int(args.memory_budget_mb * 2**20),
            max_queue=args.max_queue,
            max_batch_tokens=args.max_batch_tokens,
            max_pass_rows=args.max_pass_rows,
            max_new_tokens=args.max_new_tokens,
            max_interventions=args.max_interventions,
            max_tokenize_texts=args.max_tokenize_texts,
        ),
        max_workers=args.workers,
        max_request_bytes=int(args.max_request_mb * 2**20),
        log_format=args.log_format,
        log_level=args.log_level,
        grace_seconds=args.grace_seconds,
        auth_token_file=args.auth_token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
        http_port=args.http_port if args.http_port >= 0 else None,
        cors_origins=tuple(o.rstrip("/") for o in cors_origins),
        web_dir=args.web_dir,
        cache_bytes=_cache_bytes(args.cache_mb),
    )


def _cache_bytes(mb: float) -> int:
    if not mb >= 0:  # also refuses NaN
        raise InvalidArgumentError(f"--cache-mb {mb}: expected a size in MiB >= 0 (0: no cache)")
    return int(mb * 2**20)
