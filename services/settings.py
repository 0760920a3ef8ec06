"""Server settings: one frozen object, read from flags and ``TDB_*`` environment variables here only."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from tdb_core.errors import InvalidArgumentError
from tdb_core.runner import Limits


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
    device: str = "auto"
    dtype: str = "float32"
    limits: Limits = field(default_factory=Limits)
    max_workers: int = 16
    log_format: str = "auto"  # auto (JSON unless a TTY) | json | console
    log_level: str = "info"
    grace_seconds: float = 10.0


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


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TDB_{name}", default)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``tdb serve``; each defaults to its ``TDB_*`` environment variable."""
    d = Settings()
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH_OR_HUB_ID",
                   help="load a HF causal LM (repeatable); default: the embedded toy model "
                        "(env TDB_MODELS, comma-separated)")
    p.add_argument("--sae", action="append", default=[], metavar="[MODEL:]ID=PATH[@SITE]",
                   help="attach an SAE (OpenAI .pt or SAELens dir) to a model (repeatable)")
    p.add_argument("--sae-root", default=_env("SAE_ROOT", "") or None, metavar="DIR",
                   help="allow LoadSae to attach SAEs from under DIR (env TDB_SAE_ROOT)")
    p.add_argument("--default-model", default=_env("DEFAULT_MODEL", "") or None,
                   help="model used when a request names none (default: the first)")
    p.add_argument("--host", default=_env("HOST", d.host), help="bind address (env TDB_HOST)")
    p.add_argument("--port", type=int, default=int(_env("PORT", str(d.port))),
                   help="port, 0 picks a free one (env TDB_PORT)")
    p.add_argument("--device", default=_env("DEVICE", d.device),
                   help="auto, cpu, cuda or cuda:N (env TDB_DEVICE)")
    p.add_argument("--dtype", default=_env("DTYPE", d.dtype), choices=DTYPES,
                   help="weight dtype (env TDB_DTYPE)")
    p.add_argument("--max-tokens", type=int,
                   default=int(_env("MAX_TOKENS", str(d.limits.max_tokens_per_prompt))),
                   help="max tokens per prompt (env TDB_MAX_TOKENS)")
    p.add_argument("--max-prompts", type=int,
                   default=int(_env("MAX_PROMPTS", str(d.limits.max_prompts))),
                   help="max prompts per request (env TDB_MAX_PROMPTS)")
    p.add_argument("--max-response-mb", type=float,
                   default=float(_env("MAX_RESPONSE_MB", str(d.limits.max_response_bytes / 2**20))),
                   help="max response size in MiB (env TDB_MAX_RESPONSE_MB)")
    p.add_argument("--workers", type=int, default=int(_env("WORKERS", str(d.max_workers))),
                   help="RPC worker threads (env TDB_WORKERS)")
    p.add_argument("--log-format", default=_env("LOG_FORMAT", d.log_format),
                   choices=("auto", "json", "console"), help="env TDB_LOG_FORMAT")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", d.log_level),
                   choices=("debug", "info", "warning", "error"), help="env TDB_LOG_LEVEL")


def settings_from_args(args: argparse.Namespace) -> Settings:
    model_flags = list(args.model)
    if not model_flags and os.environ.get("TDB_MODELS"):
        model_flags = [m for m in os.environ["TDB_MODELS"].split(",") if m]
    models = tuple(parse_model_flag(m) for m in model_flags)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"model names must be unique, got {names}")
    return Settings(
        host=args.host, port=args.port, models=models, default_model=args.default_model,
        saes=tuple(parse_sae_flag(v) for v in args.sae), sae_root=args.sae_root,
        device=args.device, dtype=args.dtype,
        limits=Limits(max_tokens_per_prompt=args.max_tokens, max_prompts=args.max_prompts,
                      max_response_bytes=int(args.max_response_mb * 2**20)),
        max_workers=args.workers, log_format=args.log_format, log_level=args.log_level,
    )
