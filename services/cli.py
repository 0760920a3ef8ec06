"""The ``tdb`` command: run the server, and talk to one from a terminal.

    tdb serve [--model NAME=PATH_OR_HUB_ID] [--device auto] [--dtype float32] [--port 50051]
    tdb models | tdb info [--model M]
    tdb forward "PROMPT" --capture SITE... [--positions -1] [--top-k 10] [--json]

Client commands talk to ``--server`` (env TDB_SERVER, default localhost:50051) and exit with
status 1 and the server's message on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_SERVER = os.environ.get("TDB_SERVER", "localhost:50051")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def _client(args: argparse.Namespace) -> Any:
    from tdb_client import TdbClient

    return TdbClient(args.server, timeout=args.timeout)


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=DEFAULT_SERVER, help="host:port (env TDB_SERVER)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-call timeout, seconds")
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")


# -- serve ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from services.server import serve
    from services.settings import settings_from_args

    return serve(settings_from_args(args))


# -- models / info --------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as c:
        models = c.list_models()
    if args.json:
        print(json.dumps([m.__dict__ for m in models], indent=2))
    else:
        for m in models:
            print(f"{'*' if m.is_default else ' '} {m.name:20s} {m.architecture:24s} {m.source}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = c.model_info(args.model)
    if args.json:
        d = dict(info.__dict__)
        d["sites"] = [s.__dict__ for s in info.sites]
        print(json.dumps(d, indent=2))
        return 0
    print(f"{info.name}: {info.architecture} from {info.source} on {info.device} ({info.dtype})")
    print(f"  n_layers={info.n_layers} n_heads={info.n_heads} n_kv_heads={info.n_kv_heads} "
          f"d_model={info.d_model} d_head={info.d_head} d_mlp={info.d_mlp} "
          f"d_vocab={info.d_vocab} n_ctx={info.n_ctx}")
    seen = set()
    for s in info.sites:
        if s.kind in seen:
            continue
        seen.add(s.kind)
        shape = ", ".join(d if n < 0 else f"{d}={n}" for d, n in zip(s.dims, s.sizes))
        name = ("blocks.{L}." + s.kind) if s.layer is not None else s.name
        print(f"  {name:34s} [{shape}]  {s.meaning}")
    return 0


# -- forward --------------------------------------------------------------------------------------


def _summary(arr: np.ndarray) -> str:
    a = arr.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return "no finite values"
    return (f"mean {finite.mean():+.4f}  std {finite.std():.4f}  "
            f"min {finite.min():+.4f}  max {finite.max():+.4f}")


def _fmt_top(t: Any, n: int = 5) -> str:
    return "  ".join(f"{tok!r} {p:.3f}" for tok, p in zip(t.tokens[:n], t.probs[:n]))


def cmd_forward(args: argparse.Namespace) -> int:
    from tdb_client import interventions as iv

    edits = [iv.zero(s) for s in args.zero]
    with _client(args) as c:
        out = c.forward(args.prompts, model=args.model, capture=args.capture,
                        positions=_ints(args.positions) if args.positions else None,
                        top_k=args.top_k, interventions=edits)
    if args.json:
        print(json.dumps({
            "model": out.model, "tokens": out.tokens, "token_ids": out.token_ids,
            "top_logits": [[t.__dict__ for t in per] for per in out.top_logits],
            "activations": {k: {"dims": list(out.dims[k]), "shape": list(v.shape),
                                "values": v.tolist()} for k, v in out.activations.items()},
            "indices": {k: v.tolist() for k, v in out.indices.items()},
        }))
        return 0
    for b, toks in enumerate(out.tokens):
        print(f"prompt {b}: {len(toks)} tokens: {'|'.join(toks)}")
        for t in out.top_logits[b]:
            print(f"  next after position {t.position}: {_fmt_top(t)}")
    for site, arr in out.activations.items():
        print(f"{site} [{', '.join(out.dims[site])}] {list(arr.shape)}  {_summary(arr)}")
    return 0


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from services.settings import add_serve_arguments

    parser = argparse.ArgumentParser(prog="tdb", description="Transformer Debugger service")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gRPC server (default: the embedded toy model)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="list the server's models")
    _add_client_args(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="a model's sizes and node schema")
    _add_client_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("forward", help="run prompts and read activations")
    p.add_argument("prompts", nargs="+", help="prompt text(s)")
    p.add_argument("--capture", nargs="*", default=[], metavar="SITE",
                   help="sites or globs, e.g. blocks.*.mlp.hook_post")
    p.add_argument("--positions", default=None, help="positions to keep, e.g. '-1' or '0,3'")
    p.add_argument("--top-k", type=int, default=10, help="next-token top-k")
    p.add_argument("--zero", action="append", default=[], metavar="SELECTOR",
                   help="zero-ablate, e.g. 'blocks.1.attn.hook_z[head=3]'")
    _add_client_args(p)
    p.set_defaults(func=cmd_forward)

    for register in _plugin_registrars():
        register(sub)
    return parser


def _plugin_registrars() -> list[Callable[[Any], None]]:
    """Subcommands defined next to their domain code (toy model, SAEs, explanations)."""
    from tdb_core.toy.commands import register as toy

    return [toy]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tdb_client import TdbClientError
    from tdb_core.errors import TdbError

    try:
        return int(args.func(args) or 0)
    except TdbClientError as e:
        print(f"error: {e.code.name}: {e.details}", file=sys.stderr)
        return 1
    except TdbError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
