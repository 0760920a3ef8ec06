"""Terminal rendering for the client commands: the node table and attention patterns.

Pure functions from client results to text (or a PNG, with matplotlib): tokens are shown whole
and escaped (``repr``), never cut; the node table is sorted as TDB sorts it (direct effect,
descending, over every node kind) and shows each row's stored explanation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tdb_client.types import AttributeResult, ForwardResult, NodeRow

COLUMNS = (
    ("activation", "act"),
    ("write_magnitude", "write"),
    ("direct_effect", "direct"),
    ("total_effect", "total"),
)
SHADES = " .:-=+*#%@"  # 0 .. 1, ten steps


def token(text: str) -> str:
    """A token shown whole: quoted and escaped (``' John'``, ``'\\n'``)."""
    return repr(text)


def node_tokens(row: NodeRow, tokens: Sequence[str]) -> str:
    """The token a row sits at; a head pair as ``'key token' -> 'query token'``."""
    node = row.node
    if node.position is None:
        return ""
    at = token(tokens[node.position])
    if node.key_position is None:
        return at
    return f"{token(tokens[node.key_position])} -> {at}"


def sort_rows(rows: Sequence[NodeRow], column: str, ascending: bool = False) -> list[NodeRow]:
    """Rows by ``column`` of the first run (TDB's default: direct effect, descending)."""
    sign = 1.0 if ascending else -1.0
    return sorted(rows, key=lambda r: sign * float(getattr(r.values[0], column)))


def attribute_table(res: AttributeResult, sort: str, *, ascending: bool = False) -> list[str]:
    """The node table as lines: key, token(s), TDB's four columns, the output tokens the node
    pushes up, and below a row its best stored explanation with its score."""
    toks = res.tokens[0]
    rows = sort_rows(res.rows, sort, ascending)
    two = len(res.loss_values) == 2
    key_w = max([len("node"), *(len(r.node.key) for r in rows)])
    tok_w = max([len("token"), *(len(node_tokens(r, toks)) for r in rows)])
    col_w = 17 if two else 9
    head = f"{'node':{key_w}s}  {'token':{tok_w}s}"
    head += "".join(f"{abbr:>{col_w}s}" for _, abbr in COLUMNS) + "   pushes up"
    lines = [head]
    for r in rows:
        vals = ""
        for col, _ in COLUMNS:
            if two:
                vals += f"{getattr(r.values[0], col):>8.3f}|{getattr(r.values[1], col):<8.3f}"
            else:
                vals += f"{getattr(r.values[0], col):>9.4f}"
        up = " ".join(token(t.token) for t in r.upvoted[:3])
        lines.append(f"{r.node.key:{key_w}s}  {node_tokens(r, toks):{tok_w}s}{vals}   {up}")
        e = r.explanation
        if e is not None:
            score = "unscored" if e.score is None else f"{e.score:+.2f}"
            lines.append(f"    explanation ({score}, {e.method}): {e.explanation}")
    return lines


def attribute_json_row(r: NodeRow) -> dict[str, Any]:
    """One node-table row as JSON, its explanation included (null when it has none)."""
    return {
        "node": dict(r.node.__dict__, kind=r.node.kind.value),
        "values": [v.__dict__ for v in r.values],
        "upvoted": [t.__dict__ for t in r.upvoted],
        "downvoted": [t.__dict__ for t in r.downvoted],
        "input_tokens": [t.__dict__ for t in r.input_tokens],
        "explanation": None if r.explanation is None else dict(r.explanation.__dict__),
    }


def is_attention_pattern(dims: Sequence[str]) -> bool:
    """A capture laid out ``[batch, head, q_pos, k_pos]`` (attention pattern sites)."""
    return tuple(dims[-3:]) == ("head", "q_pos", "k_pos")


def _shade(value: float) -> str:
    if not np.isfinite(value):
        return " "
    return SHADES[min(len(SHADES) - 1, max(0, int(value * len(SHADES))))]


def _query_positions(out: ForwardResult, site: str, b: int, n_rows: int) -> list[int]:
    kept = out.positions.get(site)
    if kept is not None and np.asarray(kept).size:
        return [int(p) for p in np.asarray(kept)[b][:n_rows]]
    return list(range(n_rows))


def attention_heatmap(out: ForwardResult, site: str, b: int = 0, top: int = 2) -> list[str]:
    """A captured attention pattern of prompt ``b`` as text: per head, one row per query
    position, one character per key position (``SHADES``: weight 0 to 1), then the query
    token and its ``top`` keys with their weights."""
    arr = np.asarray(out.activations[site][b], dtype=np.float64)  # [head, q_pos, k_pos]
    toks = out.tokens[b]
    queries = _query_positions(out, site, b, arr.shape[1])
    n_keys = min(arr.shape[2], len(toks))
    ruler = "".join(str(k % 10) for k in range(n_keys))
    lines = [
        f"{site}, prompt {b}: rows are query positions, columns key positions 0..{n_keys - 1} "
        f"(shade {SHADES!r} = weight 0..1)"
    ]
    keys = "  ".join(f"{k}:{token(t)}" for k, t in enumerate(toks[:n_keys]))
    lines.append(f"  keys: {keys}")
    label_w = max(len(token(toks[q])) for q in queries) if queries else 0
    for h in range(arr.shape[0]):
        lines.append(f"  {f'head {h}':<{5 + label_w}s} |{ruler}|")
        for i, q in enumerate(queries):
            row = arr[h, i, :n_keys]
            cells = "".join(_shade(float(v)) for v in row)
            best = np.argsort(-np.nan_to_num(row, nan=-1.0))[:top]
            tops = ", ".join(f"{token(toks[k])} {row[k]:.2f}" for k in best)
            lines.append(f"  {q:>4d} {token(toks[q]):>{label_w}s} |{cells}|  -> {tops}")
    return lines


def attention_png(out: ForwardResult, sites: Sequence[str], path: str, b: int = 0) -> None:
    """Every head of every pattern site of prompt ``b`` as a query x key heatmap, in one PNG.
    Needs matplotlib (``pip install matplotlib``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--png needs matplotlib: pip install matplotlib") from None
    toks = out.tokens[b]
    n_heads = max(int(out.activations[s].shape[1]) for s in sites)
    fig, axes = plt.subplots(
        len(sites), n_heads, figsize=(2.6 * n_heads + 1, 2.6 * len(sites) + 1), squeeze=False
    )
    for i, site in enumerate(sites):
        arr = np.asarray(out.activations[site][b], dtype=np.float64)  # [head, q_pos, k_pos]
        queries = _query_positions(out, site, b, arr.shape[1])
        for h in range(n_heads):
            ax = axes[i][h]
            if h >= arr.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(arr[h], cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"{site.removesuffix('.attn.hook_pattern')} head {h}", fontsize=7)
            ax.set_xticks(range(arr.shape[2]), labels=[repr(t) for t in toks], fontsize=5)
            ax.tick_params(axis="x", labelrotation=90)
            ax.set_yticks(range(len(queries)), labels=[repr(toks[q]) for q in queries], fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
