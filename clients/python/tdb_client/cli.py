"""The client commands of ``tdb``: talk to a server from a terminal. No torch is imported.

    tdb server-info | tdb models | tdb info [--model M]
    tdb forward "PROMPT" --capture SITE... [--positions -1] [--top-k 10] [--png F] [--json]
    tdb ablate "PROMPT" --target " Mary" --distractor " John" --zero 'blocks.1.attn.hook_z[head=3]'
    tdb patch CLEAN CORRUPTED --site hook_resid_pre --target " Mary" --distractor " John" [--png F]
        [--method attribution]
    tdb forward "PROMPT" --grad blocks.0.hook_resid_pre --target " Mary" --distractor " John"
    tdb weights blocks.0.attn.W_Q --heads 0 | tdb weights --neuron-logits 1,5 | --ov L,H[,SRC,DST]
    tdb lens "PROMPT" [--png FILE] [--scale frozen]
    tdb attribute "PROMPT" --target " Mary" --distractor " John" [--trace-neuron L,N] [--zero SEL]
    tdb sae list | tdb sae encode "PROMPT" --sae ID
    tdb explanations [--node-prefix P] [--min-score S]
    tdb generate "PROMPT" [--add SELECTOR=VALUES[@COEFF]] [--steer-latent SAE:INDEX@COEFF]
                 [--zero SELECTOR] [--clamp-latent SAE:INDEX=VALUE] --max-new-tokens N

Each talks to ``--server`` (env TDB_SERVER, default localhost:50051; several replicas as
h1:p,h2:p or dns:///name:port), with ``--token``/``--tls-ca``/``--tls-cert`` for secured servers,
and exits with status 1 and the server's message on errors. The ``tdb`` command registers these
next to the server and offline commands; ``python -m tdb_client.cli`` runs them alone (a
client-only install).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from tdb_client import Capture, TdbClient, TdbClientError, TlsConfig, WeightView, losses, render
from tdb_client import generation as gen
from tdb_client import interventions as iv
from tdb_client.nodes import NodeKeyError

DEFAULT_SERVER = os.environ.get("TDB_SERVER", "localhost:50051")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def _connect(args: argparse.Namespace) -> TdbClient:
    token = args.token
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = next(
                (line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")),
                None,
            )
    tls: TlsConfig | None = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = TlsConfig(
            root_ca=args.tls_ca,
            client_cert=args.tls_cert,
            client_key=args.tls_key,
            server_name=args.tls_server_name,
        )
    return TdbClient(args.server, timeout=args.timeout, token=token, tls=tls)


def add_client_args(p: argparse.ArgumentParser) -> None:
    """Connection flags (server, timeout, token, TLS) and --model, --json."""
    env = os.environ.get
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help="host:port, several as h1:p,h2:p, or a target such as dns:///svc:50051 "
        "(env TDB_SERVER)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="per-call timeout, seconds")
    p.add_argument("--token", default=env("TDB_TOKEN"), help="bearer token (env TDB_TOKEN)")
    p.add_argument(
        "--token-file",
        default=env("TDB_TOKEN_FILE"),
        help="read the bearer token from the first line of FILE (env TDB_TOKEN_FILE)",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        default=bool(env("TDB_TLS")),
        help="use TLS with the system's CAs (env TDB_TLS=1)",
    )
    p.add_argument(
        "--tls-ca",
        default=env("TDB_TLS_CA"),
        help="use TLS, trusting this CA (PEM) (env TDB_TLS_CA)",
    )
    p.add_argument(
        "--tls-cert",
        default=env("TDB_TLS_CERT"),
        help="client certificate (PEM) for mutual TLS (env TDB_TLS_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=env("TDB_TLS_KEY"),
        help="client private key (PEM) for mutual TLS (env TDB_TLS_KEY)",
    )
    p.add_argument(
        "--tls-server-name",
        default=None,
        help="name to check the server's certificate against, if not the host",
    )
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")


# -- server-info -----------------------------------------------------------------------------------


def cmd_server_info(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        info = c.server_info()
    if args.json:
        d = dict(info.__dict__)
        d["models"] = [dict(m.__dict__, saes=[s.__dict__ for s in m.saes]) for m in info.models]
        d["services"] = {k: [m.__dict__ for m in v] for k, v in info.services.items()}
        print(json.dumps(d, indent=2))
        return 0
    libs = " ".join(f"{k} {v}" for k, v in sorted(info.library_versions.items()))
    print(f"tdb-service {info.version} ({libs})")
    on = [k for k, v in info.features.items() if v]
    print(f"features: {', '.join(on) or 'none'}")
    print("server limits: " + " ".join(f"{k}={v}" for k, v in info.server_limits.items()))
    for m in info.models:
        print(
            f"{'*' if m.is_default else ' '} {m.name}: {m.architecture} on {m.device} ({m.dtype}), "
            f"{m.n_layers} layers, n_ctx {m.n_ctx}"
        )
        print("    limits: " + " ".join(f"{k}={v}" for k, v in m.limits.items()))
        for s in m.saes:
            print(f"    sae {s.id}: {s.kind} at {s.site}, d_sae={s.d_sae}")
    for name, methods in info.services.items():
        print(f"{name}: {', '.join(m.name for m in methods)}")
    return 0


# -- models / info ---------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        models = c.list_models()
    if args.json:
        print(json.dumps([m.__dict__ for m in models], indent=2))
    else:
        for m in models:
            print(f"{'*' if m.is_default else ' '} {m.name:20s} {m.architecture:24s} {m.source}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        info = c.model_info(args.model)
    if args.json:
        d = dict(info.__dict__)
        d["sites"] = [s.__dict__ for s in info.sites]
        print(json.dumps(d, indent=2))
        return 0
    print(f"{info.name}: {info.architecture} from {info.source} on {info.device} ({info.dtype})")
    print(
        f"  n_layers={info.n_layers} n_heads={info.n_heads} n_kv_heads={info.n_kv_heads} "
        f"d_model={info.d_model} d_head={info.d_head} d_mlp={info.d_mlp} "
        f"d_vocab={info.d_vocab} n_ctx={info.n_ctx}"
    )
    seen = set()
    for s in info.sites:
        if s.kind in seen:
            continue
        seen.add(s.kind)
        shape = ", ".join(d if n < 0 else f"{d}={n}" for d, n in zip(s.dims, s.sizes))
        name = ("blocks.{L}." + s.kind) if s.layer is not None else s.name
        print(f"  {name:34s} [{shape}]  {s.meaning}")
    return 0


# -- forward ---------------------------------------------------------------------------------------


def _summary(arr: np.ndarray) -> str:
    a = arr.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return "no finite values"
    return (
        f"mean {finite.mean():+.4f}  std {finite.std():.4f}  "
        f"min {finite.min():+.4f}  max {finite.max():+.4f}"
    )


def _fmt_top(t: Any, n: int = 5) -> str:
    return "  ".join(f"{tok!r} {p:.3f}" for tok, p in zip(t.tokens[:n], t.probs[:n]))


def _forward_loss(args: argparse.Namespace) -> losses.Loss | None:
    """The loss of ``tdb forward --grad``: a logit difference (--target and --distractor) or the
    log-probability of the targets (--target alone), at --loss-position."""
    if not args.target:
        if args.distractor:
            raise SystemExit("--distractor needs --target")
        return None
    if args.distractor:
        return losses.logit_diff(args.target, args.distractor, args.loss_position)
    return losses.log_prob(args.target, args.loss_position)


def cmd_forward(args: argparse.Namespace) -> int:
    edits = [iv.zero(s) for s in args.zero]
    loss = _forward_loss(args)
    if args.grad and loss is None:
        raise SystemExit("--grad needs a loss: --target (and --distractor for a logit difference)")
    with _connect(args) as c:
        out = c.forward(
            args.prompts,
            model=args.model,
            capture=args.capture,
            positions=_ints(args.positions) if args.positions else None,
            top_k=args.top_k,
            interventions=edits,
            loss=loss,
            grad=args.grad,
            freeze_norm_scale=not args.no_freeze_norm,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "model": out.model,
                    "tokens": out.tokens,
                    "token_ids": out.token_ids,
                    "top_logits": [[t.__dict__ for t in per] for per in out.top_logits],
                    "activations": {
                        k: {"dims": list(out.dims[k]), "shape": list(v.shape), "values": v.tolist()}
                        for k, v in out.activations.items()
                    },
                    "indices": {k: v.tolist() for k, v in out.indices.items()},
                    "loss_values": out.loss_values,
                    "grads": {
                        k: {"shape": list(v.shape), "values": v.tolist()}
                        for k, v in out.grads.items()
                    },
                }
            )
        )
        return 0
    for b, toks in enumerate(out.tokens):
        print(f"prompt {b}: {len(toks)} tokens: {'|'.join(toks)}")
        for t in out.top_logits[b]:
            print(f"  next after position {t.position}: {_fmt_top(t)}")
        if out.loss_values:
            print(f"  loss: {out.loss_values[b]:+.4f}")
    patterns = [s for s in out.activations if render.is_attention_pattern(out.dims[s])]
    for site, arr in out.activations.items():
        print(f"{site} [{', '.join(out.dims[site])}] {list(arr.shape)}  {_summary(arr)}")
        if site in patterns and not args.no_heatmap:
            for b in range(arr.shape[0]):
                print("\n".join(render.attention_heatmap(out, site, b)))
    if args.png:
        if not patterns:
            raise SystemExit("--png draws attention patterns: capture a blocks.L.attn.hook_pattern")
        render.attention_png(out, patterns, args.png)
        print(f"attention heatmaps of prompt 0 written to {args.png}")
    for site, arr in out.grads.items():
        print(f"d loss / d {site} {list(arr.shape)}  {_summary(arr)}")
        if arr.ndim == 3:  # [batch, pos, channel]: the gradient's norm per position
            norms = np.linalg.norm(arr[0].astype(np.float64), axis=-1)
            print("  |grad| per position: " + " ".join(f"{x:.3g}" for x in norms))
    return 0


# -- ablate / patch --------------------------------------------------------------------------------


def _interventions_from_args(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(label, intervention) pairs from --zero/--set/--scale/--mean/--patch flags, in order."""
    out: list[tuple[str, Any]] = []
    for sel in args.zero:
        out.append((f"zero {sel}", iv.zero(sel)))
    for item in args.set:
        sel, _, value = item.rpartition("=")
        out.append((f"set {sel}={value}", iv.set_value(sel, float(value))))
    for item in args.scale:
        sel, _, value = item.rpartition("=")
        out.append((f"scale {sel}x{value}", iv.scale(sel, float(value))))
    for sel in args.mean:
        op = iv.mean_over_reference(sel) if args.reference else iv.mean_over_positions(sel)
        out.append((f"mean {sel}", op))
    for sel in args.patch:
        out.append((f"patch {sel}", iv.patch(sel, 0)))
    return out


def _token_notes(
    c: TdbClient,
    prompt: str,
    position: int,
    model: str | None,
    roles: Sequence[tuple[str, Sequence[str]]],
) -> list[str]:
    """Notes on target/distractor strings without a leading space: which token each became and,
    when the space-prefixed string is one token too and the model finds it more likely at the
    compared position, that it probably was meant (``'Mary'`` for ``' Mary'``)."""
    bare = [(role, t) for role, texts in roles for t in texts if t and not t[0].isspace()]
    if not bare:
        return []
    texts = [t for _, t in bare] + [" " + t for _, t in bare]
    ids = c.tokenize(texts, model=model, prepend_bos=False)
    assert isinstance(ids[0], list)
    given, spaced = ids[: len(bare)], ids[len(bare) :]
    compare = sorted({i[0] for i in given + spaced if len(i) == 1})
    logits: dict[int, float] = {}
    if compare:
        out = c.forward(
            prompt, capture=[Capture("logits", positions=(position,), units=tuple(compare))],
            model=model, top_k=1,
        )  # fmt: skip
        row = out.activations["logits"][0, 0]
        logits = {u: float(v) for u, v in zip(compare, row)}
    notes = []
    for (role, text), g, sp in zip(bare, given, spaced):
        if len(g) != 1:
            continue  # the server says why a multi-token string is refused
        note = f"{role} {text!r} is the token {text!r} (id {g[0]}), with no leading space"
        if len(sp) == 1 and logits.get(sp[0], float("-inf")) > logits.get(g[0], float("inf")):
            note += (
                f"; {' ' + text!r} (id {sp[0]}) is one token too and the model finds it more "
                f"likely here (logit {logits[sp[0]]:+.2f} vs {logits[g[0]]:+.2f}): "
                f"did you mean {' ' + text!r}?"
            )
        notes.append(note)
    return notes


def _print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _fmt(x: float | None, spec: str = "+.3f") -> str:
    return "-" if x is None else format(x, spec)


def cmd_ablate(args: argparse.Namespace) -> int:
    edits = _interventions_from_args(args)
    if not edits:
        raise SystemExit("give at least one intervention: --zero/--set/--scale/--mean/--patch")
    sets: dict[str, Any] = (
        {label: [e] for label, e in edits}
        if args.each
        else {" + ".join(label for label, _ in edits): [e for _, e in edits]}
    )
    with _connect(args) as c:
        res = c.ablate(
            args.prompt,
            sets,
            target=args.target or None,
            distractor=args.distractor or None,
            position=args.position,
            top_k=args.top_k,
            model=args.model,
            sources=[args.source] if args.source else (),
            references=args.reference or (),
        )
        roles = (("target", args.target), ("distractor", args.distractor))
        _print_notes(_token_notes(c, args.prompt, args.position, args.model, roles))
    if args.json:
        print(
            json.dumps(
                {
                    "model": res.model,
                    "tokens": res.tokens,
                    "position": res.position,
                    "rows": [dict(r.__dict__, top=r.top.__dict__) for r in res.rows],
                }
            )
        )
        return 0
    print(f"prompt: {'|'.join(res.tokens)}")
    print(f"next token after position {res.position} ({res.tokens[res.position]!r})\n")
    width = max(12, *(len(r.name) for r in res.rows))
    head = f"{'':{width}s}  {'logit diff':>10s}  {'change':>8s}  {'KL':>7s}  top next tokens"
    print(head)
    for r in res.rows:
        print(
            f"{r.name:{width}s}  {_fmt(r.logit_diff):>10s}  {_fmt(r.logit_diff_change):>8s}  "
            f"{r.kl_from_baseline:7.4f}  {_fmt_top(r.top, 4)}"
        )
    return 0


def _heatmap_text(res: Any) -> str:
    labels = [
        f"{j}:{lab}" if res.by == "position" else lab
        for j, lab in zip(res.columns, res.column_labels)
    ]
    w = max(7, *(len(repr(x)) for x in labels))
    lines = [f"{'layer':>5s} " + " ".join(f"{x!r:>{w}s}"[-w:] for x in labels)]
    for i, layer in enumerate(res.layers):
        lines.append(f"{layer:5d} " + " ".join(f"{v:>{w}.3f}" for v in res.recovered[i]))
    return "\n".join(lines)


def _save_heatmap_png(res: Any, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--png needs matplotlib: pip install 'tdb-service[plot]'") from None
    fig, ax = plt.subplots(
        figsize=(max(4.0, 0.55 * len(res.columns) + 2), 0.45 * len(res.layers) + 1.8)
    )
    lim = float(np.nanmax(np.abs(res.recovered))) if np.isfinite(res.recovered).any() else 1.0
    im = ax.imshow(
        res.recovered, cmap="RdBu", vmin=-max(lim, 1e-6), vmax=max(lim, 1e-6), aspect="auto"
    )
    ax.set_xticks(
        range(len(res.columns)),
        labels=[repr(x) if res.by == "position" else x for x in res.column_labels],
        rotation=60,
        ha="right",
    )
    ax.set_yticks(range(len(res.layers)), labels=[str(x) for x in res.layers])
    ax.set_ylabel("layer")
    how = " (attribution patching estimate)" if getattr(res, "method", "") == "attribution" else ""
    ax.set_title(
        f"{res.site}: logit difference recovered{how}\n(clean {res.clean_logit_diff:+.2f}, "
        f"corrupted {res.corrupted_logit_diff:+.2f})",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_patch(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        res = c.patch_sweep(
            args.clean,
            args.corrupted,
            site=args.site,
            target=args.target,
            distractor=args.distractor,
            by=args.by,
            positions=_ints(args.positions) if args.positions else None,
            layers=_ints(args.layers) if args.layers else None,
            model=args.model,
            method=args.method,
        )
    if args.png:
        _save_heatmap_png(res, args.png)
    if args.json:
        print(
            json.dumps(
                {
                    k: (v.tolist() if isinstance(v, np.ndarray) else v)
                    for k, v in res.__dict__.items()
                }
            )
        )
        return 0
    if res.method == "attribution":
        print("attribution patching (first-order estimate from one forward/backward pair)")
    print(
        f"{res.site} patched clean -> corrupted, by {res.by}; logit diff clean "
        f"{res.clean_logit_diff:+.3f}, corrupted {res.corrupted_logit_diff:+.3f}"
    )
    print("fraction of the logit difference recovered:")
    print(_heatmap_text(res))
    if args.png:
        print(f"heatmap written to {args.png}")
    return 0


# -- attribute -------------------------------------------------------------------------------------


_COLUMN_ABBR = (
    ("activation", "act"),
    ("write_magnitude", "write"),
    ("direct_effect", "direct"),
    ("total_effect", "total"),
)


def cmd_attribute(args: argparse.Namespace) -> int:
    if args.trace_neuron:
        L, N, *P = _ints(args.trace_neuron)
        loss: losses.Loss = losses.neuron(L, N, P[0] if P else -1)
    elif args.trace_head:
        parts = args.trace_head.replace(",", " ").split()
        L, H, Q = (int(x) for x in parts[:3])
        K = int(parts[3]) if len(parts) > 3 and parts[3].lstrip("-").isdigit() else None
        loss = losses.head(L, H, Q, K, parts[-1] if parts[-1] in ("q", "k", "qk", "v") else "qk")
    elif args.target and args.distractor:
        loss = losses.logit_diff(args.target, args.distractor, args.position)
    elif args.target:
        loss = losses.log_prob(args.target, args.position)
    else:
        raise SystemExit("give --target (and --distractor), --trace-neuron or --trace-head")
    with _connect(args) as c:
        res = c.attribute(
            args.prompt,
            loss=loss,
            top_k=args.top_k,
            second_prompt=args.second,
            interventions=[iv.zero(s) for s in args.zero],
            families=args.families,
            ig_steps=args.ig,
            model=args.model,
        )
        if isinstance(loss, (losses.LogitDiff, losses.LogProb)):
            roles = (("target", args.target), ("distractor", args.distractor))
            _print_notes(_token_notes(c, args.prompt, args.position, args.model, roles))
    if args.json:
        print(
            json.dumps(
                {k: v for k, v in res.__dict__.items() if k != "rows"}
                | {
                    "rows": [
                        render.attribute_json_row(r)
                        for r in render.sort_rows(res.rows, args.sort, args.ascending)
                    ]
                }
            )
        )
        return 0
    toks = res.tokens[0]
    print(f"prompt: {'|'.join(toks)}")
    what = "loss" if not args.trace_neuron and not args.trace_head else "traced value"
    print(
        f"{what} at position {res.loss_position} ({toks[res.loss_position]!r}): "
        + " | ".join(f"{x:+.4f}" for x in res.loss_values)
    )
    print(
        f"{res.nodes_ranked} nodes ranked; direct effects + biases ({res.bias_direct_effect[0]:+.4f}) "
        f"+ constant ({res.constant[0]:+.4f}) = loss\n"
    )
    print("\n".join(render.attribute_table(res, args.sort, ascending=args.ascending)))
    order = "ascending" if args.ascending else "descending"
    print(
        f"\nsorted by {args.sort.replace('_', ' ')}, {order}, over every node kind"
        f"{' (of the first run)' if len(res.loss_values) == 2 else ''}; "
        "token attribution (embedding act x grad): "
        + " ".join(f"{t!r}:{v:+.3f}" for t, v in zip(toks, res.token_attribution[0]))
    )
    return 0


# -- sae -------------------------------------------------------------------------------------------


def cmd_sae_list(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        saes = c.list_saes(args.model)
    if args.json:
        print(json.dumps([s.__dict__ for s in saes], indent=2))
        return 0
    if not saes:
        print("no SAEs attached")
    for s in saes:
        k = f" k={s.k}" if s.k is not None else ""
        print(
            f"{s.id:16s} {s.model:14s} {s.site:28s} {s.kind}{k} d_in={s.d_in} d_sae={s.d_sae} "
            f"norm={s.input_norm}  {s.source}"
        )
    return 0


def cmd_sae_encode(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        res = c.encode(args.sae, args.prompts, top_k=args.top_k, model=args.model)
    if args.json:
        print(
            json.dumps(
                {
                    "tokens": res.tokens,
                    "top_values": res.top_values.tolist(),
                    "top_indices": res.top_indices.tolist(),
                    "l0": res.l0.tolist(),
                    "mse": res.mse.tolist(),
                    "explained_variance": res.explained_variance,
                }
            )
        )
        return 0
    print(
        f"SAE {res.sae}: mean L0 {res.mean_l0:.2f}, explained variance {res.explained_variance:.4f}"
    )
    for b, toks in enumerate(res.tokens):
        for p, tok in enumerate(toks):
            lat = " ".join(
                f"{int(i)}:{v:.2f}"
                for v, i in zip(res.top_values[b, p], res.top_indices[b, p])
                if v > 0
            )
            print(f"  {p:3d} {tok!r:14s} L0={int(res.l0[b, p]):3d}  {lat}")
    return 0


# -- explanations ----------------------------------------------------------------------------------


def cmd_explanations(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        found = c.list_explanations(
            model=args.model,
            node=args.node,
            node_prefix=args.node_prefix,
            min_score=args.min_score,
            limit=args.limit,
        )
    if args.json:
        print(json.dumps([e.__dict__ for e in found]))
        return 0
    for e in found:
        score = "unscored" if e.score is None else f"{e.score:+.3f}"
        print(f"{e.node:36s} {score:>9s}  [{e.method}] {e.explanation}")
    return 0


# -- registration ----------------------------------------------------------------------------------


def _parser_forward(sub: Any) -> None:
    p = sub.add_parser("forward", help="run prompts and read activations")
    p.add_argument("prompts", nargs="+", help="prompt text(s)")
    p.add_argument(
        "--capture",
        nargs="*",
        default=[],
        metavar="SITE",
        help="sites or globs, e.g. blocks.*.mlp.hook_post",
    )
    p.add_argument("--positions", default=None, help="positions to keep, e.g. '-1' or '0,3'")
    p.add_argument("--top-k", type=int, default=10, help="next-token top-k")
    p.add_argument(
        "--zero",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="zero-ablate, e.g. 'blocks.1.attn.hook_z[head=3]'",
    )
    p.add_argument(
        "--png",
        default=None,
        metavar="FILE",
        help="write captured attention patterns (prompt 0) as heatmaps to a PNG",
    )
    p.add_argument(
        "--no-heatmap",
        action="store_true",
        help="print only summaries of attention patterns, not their text heatmaps",
    )
    p.add_argument(
        "--grad",
        action="append",
        default=[],
        metavar="SITE",
        help="also return d(loss)/d(SITE) (needs --target; --positions applies)",
    )
    p.add_argument("--target", action="append", default=[], help="loss target token, e.g. ' Mary'")
    p.add_argument("--distractor", action="append", default=[], help="loss distractor token")
    p.add_argument("--loss-position", type=int, default=-1, help="position of the loss")
    p.add_argument(
        "--no-freeze-norm",
        action="store_true",
        help="let gradients flow through the final norm's scale (default: held constant)",
    )
    add_client_args(p)
    p.set_defaults(func=cmd_forward)


def _parser_ablate(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="compare a baseline with interventions",
        description="Interventions use selectors such as "
        "'blocks.1.attn.hook_z[head=3]' or "
        "'blocks.0.mlp.hook_post[42,pos=-1]'.",
    )
    p.add_argument("prompt")
    p.add_argument("--target", action="append", default=[], help="target token, e.g. ' Mary'")
    p.add_argument("--distractor", action="append", default=[], help="distractor token")
    p.add_argument("--position", type=int, default=-1, help="position compared (default -1)")
    p.add_argument("--zero", action="append", default=[], metavar="SELECTOR")
    p.add_argument("--set", action="append", default=[], metavar="SELECTOR=VALUE")
    p.add_argument("--scale", action="append", default=[], metavar="SELECTOR=FACTOR")
    p.add_argument(
        "--mean",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="mean-ablate (over the prompt's positions, or --reference prompts)",
    )
    p.add_argument("--reference", action="append", default=[], metavar="PROMPT")
    p.add_argument(
        "--patch", action="append", default=[], metavar="SELECTOR", help="patch from --source"
    )
    p.add_argument("--source", default=None, metavar="PROMPT", help="source prompt for --patch")
    p.add_argument(
        "--each",
        action="store_true",
        help="one row per intervention instead of one row with all of them",
    )
    p.add_argument("--top-k", type=int, default=5)
    add_client_args(p)
    p.set_defaults(func=cmd_ablate)


def _parser_patch(sub: Any) -> None:
    p = sub.add_parser("patch", help="activation patching sweep (clean -> corrupted)")
    p.add_argument("clean")
    p.add_argument("corrupted")
    p.add_argument(
        "--site",
        default="hook_resid_pre",
        help="per-layer site kind, e.g. hook_resid_pre, hook_attn_out, attn.hook_z",
    )
    p.add_argument("--target", required=True, action="append")
    p.add_argument("--distractor", required=True, action="append")
    p.add_argument("--by", choices=("position", "head"), default="position")
    p.add_argument("--positions", default=None, help="head sweeps: positions patched")
    p.add_argument("--layers", default=None, help="layers to sweep, e.g. '0,1'")
    p.add_argument("--png", default=None, metavar="FILE", help="also write a heatmap image")
    p.add_argument(
        "--method",
        choices=("exact", "attribution"),
        default="exact",
        help="exact patching, or its attribution-patching (AtP) estimate",
    )
    add_client_args(p)
    p.set_defaults(func=cmd_patch)


def _parser_attribute(sub: Any) -> None:
    p = sub.add_parser("attribute", help="TDB's node table: which nodes matter for an output")
    p.add_argument("prompt")
    p.add_argument("--target", action="append", default=[], help="target token(s), e.g. ' Mary'")
    p.add_argument("--distractor", action="append", default=[], help="distractor token(s)")
    p.add_argument("--position", type=int, default=-1, help="position of the loss (default -1)")
    p.add_argument(
        "--trace-neuron",
        default=None,
        metavar="L,N[,POS]",
        help="trace upstream from MLP neuron N of layer L",
    )
    p.add_argument(
        "--trace-head",
        default=None,
        metavar="L,H,Q[,K],{q,k,qk,v}",
        help="trace upstream from head H of layer L at query Q (key K)",
    )
    p.add_argument("--second", default=None, metavar="PROMPT", help="compare with a second prompt")
    p.add_argument(
        "--zero",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="compare with an ablated copy (zero these)",
    )
    p.add_argument(
        "--families",
        nargs="*",
        default=[],
        help="embedding mlp_neuron attn_head attn_head_pair sae_latent",
    )
    p.add_argument("--ig", type=int, default=0, metavar="STEPS", help="integrated gradients")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument(
        "--sort",
        default="direct_effect",
        choices=[c for c, _ in _COLUMN_ABBR],
        help="column to sort by (default: direct effect, descending, as TDB)",
    )
    p.add_argument("--ascending", action="store_true", help="sort ascending")
    add_client_args(p)
    p.set_defaults(func=cmd_attribute)


def _parser_sae_encode(sae_sub: Any) -> None:
    p = sae_sub.add_parser("encode", help="per-token latents of an attached SAE")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--sae", required=True)
    p.add_argument("--top-k", type=int, default=8)
    add_client_args(p)
    p.set_defaults(func=cmd_sae_encode)


def _parser_explanations(sub: Any) -> None:
    p = sub.add_parser("explanations", help="list stored and shipped explanations on the server")
    p.add_argument("--node", default=None)
    p.add_argument("--node-prefix", default=None)
    p.add_argument("--min-score", type=float, default=None)
    p.add_argument("--limit", type=int, default=50)
    add_client_args(p)
    p.set_defaults(func=cmd_explanations)


# -- generate --------------------------------------------------------------------------------------


def _vector(text: str) -> np.ndarray:
    """A steering vector: a .npy file, or comma-separated numbers."""
    if text.endswith(".npy"):
        return np.asarray(np.load(text), dtype=np.float32)
    try:
        return np.array([float(x) for x in text.split(",")], dtype=np.float32)
    except ValueError:
        raise SystemExit(
            f"--add: {text!r} is neither a .npy file nor comma-separated numbers"
        ) from None


def _latent(flag: str, text: str, sep: str) -> tuple[str, int, float]:
    """``SAE:INDEX{sep}NUMBER`` (the SAE id may contain ':', split from the right)."""
    head, found, number = text.rpartition(sep)
    sae, colon, index = head.rpartition(":")
    if not (found and colon and sae):
        raise SystemExit(f"{flag}: expected SAE:INDEX{sep}NUMBER, got {text!r}")
    try:
        return sae, int(index), float(number)
    except ValueError:
        raise SystemExit(f"{flag}: expected SAE:INDEX{sep}NUMBER, got {text!r}") from None


def _generate_edits(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(label, edit) pairs from --add/--zero/--scale/--steer-latent/--clamp-latent, in order."""
    out: list[tuple[str, Any]] = []
    for item in args.add:
        sel, eq, value = item.rpartition("=")
        if not eq:
            raise SystemExit(f"--add: expected SELECTOR=VALUES[@COEFF], got {item!r}")
        values, at, coeff = value.partition("@")
        edit = iv.add(sel, _vector(values), float(coeff) if at else 1.0)
        out.append((f"add {sel}{'@' + coeff if at else ''}", edit))
    for sel in args.zero:
        out.append((f"zero {sel}", iv.zero(sel)))
    for item in args.scale:
        sel, _, value = item.rpartition("=")
        out.append((f"scale {sel}x{value}", iv.scale(sel, float(value))))
    for item in args.steer_latent:
        sae, index, coeff = _latent("--steer-latent", item, "@")
        out.append((f"steer {sae}:{index}@{coeff:g}", gen.steer_latent(sae, index, coeff)))
    for item in args.clamp_latent:
        sae, index, value = _latent("--clamp-latent", item, "=")
        out.append((f"clamp {sae}:{index}={value:g}", gen.clamp_latent(sae, index, value)))
    if args.scope != "all":
        out = [(f"{label} ({args.scope})", gen.Scoped(e, args.scope)) for label, e in out]
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    edits = _generate_edits(args)
    sets: dict[str, Any] = {}
    if edits:
        sets = (
            {label: [e] for label, e in edits}
            if args.each
            else {" + ".join(label for label, _ in edits): [e for _, e in edits]}
        )
    with _connect(args) as c:
        stream = c.generate(
            args.prompt,
            sets,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.sample_top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
            stop=args.stop,
            model=args.model,
        )
        width = 0
        names: list[str] = []
        for event in stream:
            if args.json:
                continue
            if isinstance(event, gen.GenerateStart):
                print(
                    f"prompt: {''.join(event.tokens)!r}"
                    + (f" (seed {event.seed})" if event.seed is not None else "")
                )
                width = max(14, *(len(repr(n)) for n in event.names))
                print("step  " + "  ".join(f"{n:{width}s}" for n in event.names), flush=True)
                names = event.names
            elif isinstance(event, gen.GenerateStep):
                cells = [repr(event.rows[n].token.token) if n in event.rows else "" for n in names]
                print(f"{event.step:4d}  " + "  ".join(f"{x:{width}s}" for x in cells), flush=True)
        final = stream.finish
    assert final is not None
    if args.json:
        print(json.dumps({n: r.__dict__ for n, r in final.rows.items()}))
        return 0
    print()
    for name, row in final.rows.items():
        print(f"{name} [{row.stop_reason}]: {row.text!r}")
    return 0


def _parser_generate(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text under interventions, side by side with the baseline",
        description="Each flag adds an edit; all edits form one set beside the baseline (--each: "
        "one set per edit). Selectors as in ablate, e.g. 'blocks.0.attn.hook_z[head=1]'; "
        "positions are absolute token positions (negative from the prompt's end).",
    )
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="SELECTOR=VALUES[@COEFF]",
        help="add a vector (a .npy file or comma-separated numbers), times COEFF",
    )
    p.add_argument("--zero", action="append", default=[], metavar="SELECTOR")
    p.add_argument("--scale", action="append", default=[], metavar="SELECTOR=FACTOR")
    p.add_argument(
        "--steer-latent",
        action="append",
        default=[],
        metavar="SAE:INDEX@COEFF",
        help="add COEFF x an SAE latent's decoder direction at the SAE's site",
    )
    p.add_argument(
        "--clamp-latent",
        action="append",
        default=[],
        metavar="SAE:INDEX=VALUE",
        help="clamp an SAE latent through the SAE splice (error term kept)",
    )
    p.add_argument(
        "--scope",
        choices=("all", "prompt", "generated"),
        default="all",
        help="where the edits act: every position (default), the prompt, or generated tokens",
    )
    p.add_argument("--each", action="store_true", help="one set per edit")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    p.add_argument("--sample-top-k", type=int, default=0, help="top-k filter when sampling")
    p.add_argument("--top-p", type=float, default=None, help="nucleus filter when sampling")
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of the draws (reproducible)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string")
    add_client_args(p)
    p.set_defaults(func=cmd_generate)


# commands with only the connection flags: name, handler, help
_PLAIN = (
    ("server-info", cmd_server_info, "the server's version, models, limits, features, RPCs"),
    ("models", cmd_models, "list the server's models"),
    ("info", cmd_info, "a model's sizes and node schema"),
)


def register(sub: Any, sae_sub: Any) -> None:
    """Add the client commands to ``tdb``'s subparsers (``sae_sub``: those of ``tdb sae``)."""
    for name, func, help_ in _PLAIN:
        p = sub.add_parser(name, help=help_)
        add_client_args(p)
        p.set_defaults(func=func)
    _parser_forward(sub)
    _parser_ablate(sub)
    _parser_patch(sub)
    _parser_attribute(sub)
    p = sae_sub.add_parser("list", help="SAEs attached on the server")
    add_client_args(p)
    p.set_defaults(func=cmd_sae_list)
    _parser_sae_encode(sae_sub)
    _parser_explanations(sub)
    _parser_weights(sub)
    _parser_lens(sub)
    _parser_generate(sub)


def _parser() -> tuple[argparse.ArgumentParser, Any, Any]:
    parser = argparse.ArgumentParser(prog="tdb", description="Transformer Debugger client")
    sub = parser.add_subparsers(dest="command", required=True)
    sae = sub.add_parser("sae", help="sparse autoencoders on the server: list, encode")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True)
    register(sub, sae_sub)
    return parser, sub, sae_sub


def handles(argv: Sequence[str]) -> bool:
    """Whether ``argv`` names a client command (``forward ...``, ``sae list``, ...), which ``tdb``
    then runs through :func:`main` without building the server and offline commands."""
    _, sub, sae_sub = _parser()
    if not argv:
        return False
    if argv[0] == "sae":
        return len(argv) > 1 and argv[1] in sae_sub.choices
    return argv[0] in sub.choices


def main(argv: Sequence[str] | None = None) -> int:
    """The client commands alone: ``python -m tdb_client.cli COMMAND ...``."""
    parser, _, _ = _parser()
    return run(parser.parse_args(argv))


# -- weights / lens --------------------------------------------------------------------------------


def _view_arg(kind: str, text: str) -> WeightView:
    parts = _ints(text)
    if len(parts) not in (2, 4) or (kind == "neuron_logits" and len(parts) != 2):
        raise SystemExit(
            f"--{kind.replace('_', '-')} takes L,N"
            if kind == "neuron_logits"
            else f"--{kind.split('_')[1]} takes L,H or L,H,SRC,DST (token ids)"
        )
    return WeightView(kind, parts[0], parts[1], *(parts[2:] or (None, None)))


def _token_strings(c: TdbClient, ids: Any, model: str | None) -> list[str]:
    return [c.detokenize([int(i)], model=model) for i in ids]


def cmd_weights(args: argparse.Namespace) -> int:
    views = [_view_arg("neuron_logits", v) for v in args.neuron_logits]
    views += [_view_arg("head_ov", v) for v in args.ov] + [_view_arg("head_qk", v) for v in args.qk]
    if not args.names and not views:
        raise SystemExit("give parameter names (e.g. W_E, 'blocks.*.attn.W_Q', '*') or a view")
    with _connect(args) as c:
        w = c.weights(
            args.names,
            heads=_ints(args.heads) if args.heads else None,
            neurons=_ints(args.neurons) if args.neurons else None,
            dtype=args.dtype,
            views=views,
            model=args.model,
        )
        tops: dict[str, Any] = {}
        for name, arr in w.values.items():
            if name.startswith("neuron_logits"):
                order = np.argsort(arr)
                up, down = order[::-1][: args.top], order[: args.top]
                tops[name] = {
                    "up": list(zip(_token_strings(c, up, args.model), arr[up].tolist())),
                    "down": list(zip(_token_strings(c, down, args.model), arr[down].tolist())),
                }
    if args.json:
        print(
            json.dumps(
                {
                    "model": w.model,
                    "weights": {
                        k: {"dims": list(w.dims[k]), "shape": list(v.shape), "values": v.tolist()}
                        for k, v in w.values.items()
                    },
                    "kept": w.kept,
                }
            )
        )
        return 0
    for name, arr in w.values.items():
        kept = f"  kept {w.kept[name]}" if name in w.kept else ""
        dims = ", ".join(w.dims[name])
        if arr.ndim == 0:
            print(f"{name} = {float(arr):+.6f}")
            continue
        print(f"{name} [{dims}] {list(arr.shape)}{kept}  {_summary(arr)}")
        if name in tops:
            for side in ("up", "down"):
                print(f"  {side}: " + "  ".join(f"{t!r} {v:+.3f}" for t, v in tops[name][side]))
    return 0


def _lens_png(res: Any, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--png needs matplotlib: pip install 'tdb-service[plot]'") from None
    probs = np.array([[cell.probs[0] for cell in row] for row in res.grid])  # [layers, positions]
    fig, ax = plt.subplots(
        figsize=(max(4.0, 0.85 * len(res.positions) + 2), 0.5 * len(res.layers) + 2.0)
    )
    im = ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    for i, row in enumerate(res.grid):
        for j, cell in enumerate(row):
            ax.text(
                j,
                i,
                cell.tokens[0].replace("\n", "\\n"),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if probs[i, j] > 0.6 else "black",
            )
    ax.set_xticks(
        range(len(res.positions)),
        labels=[f"{q}:{res.tokens[q]!r}" for q in res.positions],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    ax.set_yticks(range(len(res.layers)), labels=[str(x) for x in res.layers])
    ax.set_ylabel(f"layer ({res.site})")
    ax.set_title(
        f"logit lens: top next token per layer and position ({res.scale} final-norm scale)",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="probability of the top token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_lens(args: argparse.Namespace) -> int:
    with _connect(args) as c:
        res = c.logit_lens(
            args.prompt,
            layers=_ints(args.layers) if args.layers else None,
            positions=_ints(args.positions) if args.positions else None,
            top_k=args.top_k,
            scale=args.scale,
            site=args.site,
            model=args.model,
        )
    if args.png:
        _lens_png(res, args.png)
    if args.json:
        print(
            json.dumps(
                {
                    "model": res.model,
                    "site": res.site,
                    "scale": res.scale,
                    "tokens": res.tokens,
                    "layers": res.layers,
                    "positions": res.positions,
                    "grid": [[cell.__dict__ for cell in row] for row in res.grid],
                }
            )
        )
        return 0
    w = max(8, *(len(repr(res.tokens[q])) for q in res.positions))
    print(f"logit lens of {res.site} ({res.scale} scale): top next token per layer x position")
    print(f"{'layer':>5s} " + " ".join(f"{res.tokens[q]!r:>{w}s}"[-w:] for q in res.positions))
    for layer, row in zip(res.layers, res.grid):
        print(f"{layer:5d} " + " ".join(f"{cell.tokens[0]!r:>{w}s}"[-w:] for cell in row))
    if args.png:
        print(f"grid written to {args.png}")
    return 0


def _parser_weights(sub: Any) -> None:
    p = sub.add_parser("weights", help="model parameters and folded views (OV, QK, logit weights)")
    p.add_argument("names", nargs="*", help="parameter names or globs, e.g. W_E 'blocks.*.W_Q'")
    p.add_argument("--heads", default=None, help="heads kept on head axes, e.g. '0,2'")
    p.add_argument("--neurons", default=None, help="neurons kept on d_mlp axes")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument(
        "--neuron-logits", action="append", default=[], metavar="L,N", help="logit weights"
    )
    p.add_argument("--ov", action="append", default=[], metavar="L,H[,SRC,DST]", help="OV circuit")
    p.add_argument("--qk", action="append", default=[], metavar="L,H[,SRC,DST]", help="QK circuit")
    p.add_argument("--top", type=int, default=8, help="tokens shown per neuron-logits view")
    add_client_args(p)
    p.set_defaults(func=cmd_weights)


def _parser_lens(sub: Any) -> None:
    p = sub.add_parser("lens", help="logit lens: residual read through the unembedding")
    p.add_argument("prompt")
    p.add_argument("--layers", default=None, help="layers, e.g. '0,2' (default all)")
    p.add_argument("--positions", default=None, help="positions, e.g. '-3,-2,-1' (default all)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--scale", choices=("recomputed", "frozen"), default="recomputed")
    p.add_argument(
        "--site",
        default="hook_resid_post",
        choices=("hook_resid_post", "hook_resid_pre", "hook_resid_mid"),
    )
    p.add_argument("--png", default=None, metavar="FILE", help="also draw the grid as an image")
    add_client_args(p)
    p.set_defaults(func=cmd_lens)


def run(args: argparse.Namespace) -> int:
    """Run a parsed client command: its exit code. A server error is one line on stderr
    (``error: STATUS: message``), exit 1; a malformed selector one line, exit 2."""
    try:
        return int(args.func(args) or 0)
    except TdbClientError as e:
        print(f"error: {e.code.name}: {e.details}", file=sys.stderr)
        return 1
    except NodeKeyError as e:  # a malformed selector or key, caught before any call
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tdb ... | head`: the reader went away; no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
