"""Generate: text generation under interventions, a baseline and N intervention sets side by side.

One prompt is copied into ``1 + len(sets)`` rows of one batch (row 0 the baseline, row i the i-th
set) and decoded with a KV cache: the first pass computes the prompt, every later pass only the
newest position. Each row's edits apply in every pass, at the positions of that pass that they
select; a cached position keeps the edit applied when it was computed.

Positions in an edit are absolute token positions of the growing sequence (the prompt's tokens
are ``0..P-1``, the i-th generated token sits at ``P + i``); negative ones count from the prompt's
end. :class:`Scope` says which part of the sequence an edit covers: ``ALL`` (default: the
positions as given; no positions means every position, prompt and generated), ``PROMPT`` (no
positions means every prompt position; positions must lie in the prompt) and ``GENERATED``
(positions index the generated tokens, 0 the first; no positions means every generated token).
A generated token's position is computed when the token is fed back in, so an edit at
``P + i`` changes the tokens after the i-th, never the i-th itself.

Not defined during generation, and refused before any work with INVALID_ARGUMENT: ``patch`` (a
source prompt has no generated positions to read), ``mean_over_reference`` and
``mean_over_positions`` (send the mean, read with Forward, as ``set_tensor``), backward edits,
key positions, and edits other than zero and scale on attention patterns or any edit of attention
scores (their key axis grows with every step).

Sampling follows Hugging Face ``generate`` exactly, in its order: the repetition penalty (over the
prompt and the generated tokens), then, when sampling, temperature, top-k and top-p; greedy
decoding (temperature 0) takes the arg-max. With no interventions and greedy decoding the tokens
are HF's own, token for token. A seed makes sampling reproducible: the same request with the same
seed gives the same tokens (one ``torch.Generator`` on the model's device draws every row).

Events: :class:`Start` (the prompt's tokens, the row names, the seed), one :class:`Step` per
decoding step (per row: the new token, its log-probability under the model's next-token
distribution, the top alternatives, and optional captures at the position that produced it),
then :class:`Finish` (each row's text, ids and why it stopped). The caller's cancellation is
checked before every step and at every layer.
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tdb_core import cancel, checks, specs
from tdb_core.errors import InvalidArgumentError, OutOfRangeError, ResourceExhaustedError
from tdb_core.hooks import (
    HookContext,
    HookPlan,
    ResolvedCapture,
    ResolvedEdit,
    activate,
)
from tdb_core.ops.common import capture_result
from tdb_core.plan import Batch, Planner, check_response_bytes
from tdb_core.runner import ModelRunner
from tdb_core.sae.attach import AttachedSae
from tdb_core.tokens import Tokens

# --------------------------------------------------------------------------------------------------
# Specs and events (data only)


class Scope(enum.Enum):
    """Which part of the sequence an edit's positions refer to (see the module docstring)."""

    ALL = "all"
    PROMPT = "prompt"
    GENERATED = "generated"


@dataclass(frozen=True)
class SteerLatent:
    """Add ``coeff`` times an SAE latent's decoder direction to the SAE's input site."""

    sae: str
    latent: int
    coeff: float
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ClampLatent:
    """Set an SAE latent to ``value`` through the SAE splice (reconstruction plus error term)."""

    sae: str
    latent: int
    value: float
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Edit:
    """One edit of a set: an intervention or a steering helper, over a :class:`Scope`."""

    edit: specs.Intervention | SteerLatent | ClampLatent
    scope: Scope = Scope.ALL


@dataclass(frozen=True)
class GenerateSet:
    """A named group of edits applied together to one row."""

    name: str
    edits: tuple[Edit, ...]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``temperature`` 0 is greedy decoding; ``top_k`` 0 and
    ``top_p`` 1 turn those filters off; ``seed`` None draws one (reported in :class:`Start`)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class GenerateSpec:
    """A Generate request. ``captures`` are read at every step at the position just computed
    (their ``positions`` must be empty); ``top_k`` alternatives are reported per token."""

    prompt: specs.Prompt
    sets: tuple[GenerateSet, ...] = ()
    max_new_tokens: int = 32
    sampling: Sampling = field(default_factory=Sampling)
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    stop_at_eos: bool = True
    top_k: int = 5
    captures: tuple[specs.Capture, ...] = ()
    prepend_bos: bool | None = None


class StopReason(enum.Enum):
    MAX_NEW_TOKENS = "max_new_tokens"
    EOS = "eos"
    STOP_TOKEN = "stop_token"
    STOP_STRING = "stop_string"


@dataclass(frozen=True)
class TokenChoice:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class RowStep:
    """One row's token of a step. ``logprob`` is under the model's own next-token distribution
    (before penalty, temperature and filters); ``top`` the most likely tokens under it."""

    token: TokenChoice
    top: tuple[TokenChoice, ...]
    captures: tuple[specs.CaptureResult, ...]
    finished: StopReason | None  # set on the row's last token


@dataclass(frozen=True)
class Start:
    prompt: specs.PromptTokens
    names: tuple[str, ...]  # "baseline", then the sets' names
    seed: int | None  # None for greedy decoding


@dataclass(frozen=True)
class Step:
    """Step ``step`` (0-based): the token generated at position ``position`` (= prompt length +
    step), predicted from position ``position - 1``, where the captures were read. ``rows`` has
    one entry per row; None for rows that had already finished."""

    step: int
    position: int
    rows: tuple[RowStep | None, ...]


@dataclass(frozen=True)
class RowResult:
    name: str
    token_ids: tuple[int, ...]  # the generated tokens (a stop token or string's tokens included)
    text: str  # their text, cut before a stop string
    stop_reason: StopReason


@dataclass(frozen=True)
class Finish:
    rows: tuple[RowResult, ...]
    steps: int
    seconds: float


Event = Start | Step | Finish

# --------------------------------------------------------------------------------------------------
# Planning: every check before any work

#: Captured bytes of one step over all rows (each step travels as one message, data inline).
MAX_STEP_CAPTURE_BYTES = 2 * 2**20


_REFUSED = {
    specs.PatchFrom: "patch reads a source prompt, which has no generated positions",
    specs.MeanOverReference: "mean_over_reference is not defined during generation; read the "
    "mean with Forward and send it as set_tensor",
    specs.MeanOverPositions: "mean_over_positions is not defined during generation (the "
    "positions grow with every step); read the mean with Forward and send it as set_tensor",
}


@dataclass
class _RowEdit:
    """A validated edit of one row: absolute positions (None: every position) and its operand."""

    edit: ResolvedEdit
    positions: list[int] | None
    positional: bool  # the operand has a position axis, one entry per selected position


@dataclass
class _Plan:
    rows: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    prompt_len: int
    edits: list[_RowEdit]
    captures: list[tuple[specs.Capture, list[ResolvedCapture]]]
    saes: list[AttachedSae]
    eos: frozenset[int]


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{what} must be a finite number, got {value}")
    return value


def _check_sampling(s: Sampling) -> None:
    _finite(s.temperature, "temperature")
    if s.temperature < 0:
        raise InvalidArgumentError(f"temperature must be >= 0 (0 is greedy), got {s.temperature}")
    checks.top_k(s.top_k, lo=0, what="sampling top_k")
    _finite(s.top_p, "top_p")
    if not 0 < s.top_p <= 1:
        raise InvalidArgumentError(f"top_p must be in (0, 1], got {s.top_p}")
    _finite(s.repetition_penalty, "repetition_penalty")
    if s.repetition_penalty <= 0:
        raise InvalidArgumentError(
            f"repetition_penalty must be > 0 (1 is none), got {s.repetition_penalty}"
        )
    if s.seed is not None and not 0 <= s.seed < 2**63:
        raise InvalidArgumentError(f"seed must be in 0..2^63-1, got {s.seed}")


def _absolute(
    positions: tuple[int, ...] | None, scope: Scope, prompt_len: int, max_new: int
) -> tuple[int, ...] | None:
    """Absolute positions of an edit (None: every position of the sequence)."""
    total = prompt_len + max_new
    if positions is None:
        if scope is Scope.PROMPT:
            return tuple(range(prompt_len))
        if scope is Scope.GENERATED:
            return tuple(range(prompt_len, total))
        return None
    checks.non_empty(positions, "positions (omit the list to select every one)")
    out = []
    for p in positions:
        if scope is Scope.GENERATED:
            if not 0 <= p < max_new:
                raise OutOfRangeError(
                    f"generated position {p} is out of range for {max_new} new tokens "
                    f"(allowed: 0..{max_new - 1}; 0 is the first generated token)"
                )
            out.append(prompt_len + p)
            continue
        hi = prompt_len if scope is Scope.PROMPT else total
        q = p + prompt_len if p < 0 else p
        if not 0 <= q < hi:
            where = (
                f"the prompt's {prompt_len} tokens"
                if scope is Scope.PROMPT
                else f"{prompt_len} prompt + {max_new} new tokens"
            )
            raise OutOfRangeError(
                f"position {p} is out of range for {where} (allowed: {-prompt_len}..{hi - 1}; "
                "negative positions count from the prompt's end)"
            )
        out.append(q)
    return tuple(out)


def _intervention(runner: ModelRunner, e: Edit) -> specs.Intervention:
    """The plain intervention an edit stands for (steering helpers resolved), checked for what
    generation cannot do."""
    x = e.edit
    if isinstance(x, SteerLatent):
        att = runner.saes.get(x.sae)
        checks.index(x.latent, att.sae.d_sae, "latent", f" of SAE '{att.id}'")
        _finite(x.coeff, "steering coefficient")
        width = [
            runner.schema.dim_size(att.site, d, 1)
            for d in att.site.kind.dims
            if d != att.site.kind.pos_dim
        ]
        direction = att.sae.decoder_directions()[x.latent].reshape(width)
        return specs.Intervention(
            att.site.name, specs.AddVector(direction, x.coeff), positions=x.positions
        )
    if isinstance(x, ClampLatent):
        att = runner.saes.get(x.sae)
        checks.index(x.latent, att.sae.d_sae, "latent", f" of SAE '{att.id}'")
        _finite(x.value, "clamp value")
        return specs.Intervention(
            att.acts, specs.SetValue(x.value), positions=x.positions, units=(x.latent,)
        )
    op = x.op
    why = _REFUSED.get(type(op))
    if why is not None:
        raise InvalidArgumentError(f"intervention on {checks.quote(x.site)}: {why}")
    if x.pass_ is not specs.Pass.FORWARD:
        raise InvalidArgumentError(
            f"intervention on {checks.quote(x.site)}: generation runs no backward pass; "
            "use forward interventions"
        )
    if x.key_positions is not None:
        raise InvalidArgumentError(
            f"intervention on {checks.quote(x.site)}: key positions are not supported during "
            "generation (the key axis grows with every step); edit hook_z or the whole pattern"
        )
    if isinstance(op, specs.SetValue):
        _finite(op.value, "set_value value")
    if isinstance(op, specs.Scale):
        _finite(op.factor, "scale factor")
    if isinstance(op, specs.AddVector):
        _finite(op.coeff, "add coefficient")
    for t in (getattr(op, "tensor", None), getattr(op, "vector", None)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise InvalidArgumentError(
                f"intervention on {checks.quote(x.site)}: its operand has NaN or infinite values"
            )
    return x


def _plan(runner: ModelRunner, spec: GenerateSpec) -> _Plan:
    """Validate and resolve the whole request (every error is raised here, before work)."""
    limits = runner.limits
    tokens = runner.tokens
    n_rows = 1 + len(spec.sets)
    checks.at_most(n_rows, limits.max_prompts, "rows (the baseline plus each set)")
    names = ["baseline"]
    for i, s in enumerate(spec.sets):
        name = s.name or f"set{i + 1}"
        if name in names:
            raise InvalidArgumentError(
                f"intervention set name {checks.quote(name)} is used twice (or is 'baseline'); "
                "names must be unique"
            )
        names.append(name)
    if spec.max_new_tokens < 1:
        raise InvalidArgumentError(f"max_new_tokens must be at least 1, got {spec.max_new_tokens}")
    checks.at_most(spec.max_new_tokens, limits.max_new_tokens, "new tokens", "per generation")
    _check_sampling(spec.sampling)
    checks.top_k(spec.top_k)
    checks.at_most(len(spec.stop_strings), 16, "stop strings")
    for stop in spec.stop_strings:
        if not stop:
            raise InvalidArgumentError("a stop string is empty; give non-empty strings")
        checks.at_most(len(stop), 256, "characters in a stop string", "per string")
    checks.at_most(len(spec.stop_token_ids), 256, "stop token ids")
    stop_ids = checks.token_ids(spec.stop_token_ids, runner.schema.dims.d_vocab, "stop_token_ids")
    prompt = tokens.encode(spec.prompt, spec.prepend_bos)
    P, total = len(prompt), len(prompt) + spec.max_new_tokens
    if total > tokens.n_ctx:
        raise OutOfRangeError(
            f"the prompt's {P} tokens plus {spec.max_new_tokens} new tokens make {total}, over "
            f"the model's context of {tokens.n_ctx}; ask for at most {max(tokens.n_ctx - P, 0)} "
            "new tokens"
        )
    checks.at_most(total, limits.max_tokens_per_prompt, "tokens (prompt plus new)", "per row")

    # Validate every edit against a batch of the full length (positions made absolute first).
    virtual = Batch(tuple((0,) * total for _ in range(n_rows)), n_rows, 0, 0)
    planner = Planner(runner.schema, virtual, runner.device, runner.dtype)
    edits: list[_RowEdit] = []
    for row, s in enumerate(spec.sets, start=1):
        for e in s.edits:
            iv = _intervention(runner, e)
            for site in runner.schema.resolve(iv.site):
                _check_site(site.kind.pos_dim, site.kind.key, iv)
            pos = _absolute(iv.positions, e.scope, P, spec.max_new_tokens)
            before = {k: len(v) for k, v in planner.plan.edits.items()}
            planner.add_intervention(replace(iv, positions=pos), [row])
            for site_name, resolved in planner.plan.edits.items():
                for r in resolved[before.get(site_name, 0) :]:
                    edits.append(_row_edit(r, pos))
    captures = []
    for cap in spec.captures:
        if cap.positions is not None:
            raise InvalidArgumentError(
                f"capture of {checks.quote(cap.site)}: captures during generation are read at "
                "each new position; leave positions empty"
            )
        for site in runner.schema.resolve(cap.site):
            if site.kind.pos_dim != "pos":
                raise InvalidArgumentError(
                    f"capture of '{site.name}': attention scores and patterns cannot be captured "
                    "during generation (their key axis grows); capture hook_z or hook_result"
                )
        captures.append((cap, planner.add_capture(cap)))
    per_step = sum(_capture_bytes(runner, cs) for _, cs in captures) * n_rows
    if per_step > MAX_STEP_CAPTURE_BYTES:
        raise ResourceExhaustedError(
            f"the captures of one step would be {per_step / 2**20:.1f} MiB over all rows, over "
            f"the limit of {MAX_STEP_CAPTURE_BYTES / 2**20:.0f} MiB per step; select units or "
            "use top_k"
        )
    check_response_bytes(per_step * spec.max_new_tokens, limits.max_response_bytes)
    wanted = set(planner.plan.edits) | set(planner.plan.captures)
    saes = [att for att in runner.saes.values() if wanted.intersection(att.site_names)]
    eos: set[int] = set()
    if spec.stop_at_eos:
        cfg = getattr(runner.adapter.model, "generation_config", None)
        got = getattr(cfg, "eos_token_id", None)
        if got is None:
            got = tokens.tokenizer.eos_token_id
        eos.update([got] if isinstance(got, int) else list(got or ()))
    return _Plan(
        rows=(prompt,) * n_rows,
        names=tuple(names),
        prompt_len=P,
        edits=edits,
        captures=captures,
        saes=saes,
        eos=frozenset(eos) | frozenset(stop_ids),
    )


def _check_site(pos_dim: str | None, key: str, iv: specs.Intervention) -> None:
    if key == "attn.hook_attn_scores":
        raise InvalidArgumentError(
            f"intervention on {checks.quote(iv.site)}: attention scores cannot be edited during "
            "generation (masked keys differ between the prompt pass and cached steps); edit "
            "hook_pattern (zero or scale), hook_z or hook_result"
        )
    if pos_dim != "pos" and not isinstance(iv.op, (specs.Zero, specs.Scale)):
        raise InvalidArgumentError(
            f"intervention on {checks.quote(iv.site)}: only zero and scale can edit attention "
            "patterns during generation (the key axis grows with every step)"
        )


def _row_edit(r: ResolvedEdit, pos: tuple[int, ...] | None) -> _RowEdit:
    """A validated edit with its absolute positions. An operand of the block's full rank whose
    first axis is not 1 has one entry per selected position (per position of the sequence when
    no positions are given), and is cut with them at each step."""
    t = r.tensor
    positional = t is not None and t.dim() == len(r.site.kind.dims) and t.shape[0] != 1
    return _RowEdit(r, None if pos is None else list(pos), positional)


def _capture_bytes(runner: ModelRunner, caps: list[ResolvedCapture]) -> int:
    total = 0
    for c in caps:
        shape = [runner.schema.dim_size(c.site, d, 1) for d in c.site.kind.dims if d != "pos"] or [
            1
        ]
        if c.index.units is not None and c.index.unit_axis is not None:
            shape[c.site.kind.dims.index(c.site.kind.unit_dim or "") - 1] = len(c.index.units)
        item = 4
        if c.top_k is not None:
            shape[-1] = min(shape[-1], c.top_k.k)
            item += 8
        total += math.prod(shape) * item
    return total


# --------------------------------------------------------------------------------------------------
# One decoding pass


def _step_plan(plan: _Plan, start: int, length: int, device: torch.device) -> HookPlan:
    """The hook plan of the pass computing positions ``start .. start+length-1``: each edit cut to
    those positions (made local to the pass), fresh captures of the last position."""
    hp = HookPlan()
    for re_ in plan.edits:
        e = re_.edit
        pos = None
        tensor = e.tensor
        if re_.positions is not None:
            keep = [i for i, p in enumerate(re_.positions) if start <= p < start + length]
            if not keep:
                continue
            local = [re_.positions[i] - start for i in keep]
            pos = torch.tensor([local] * e.index.rows.shape[0], device=device)
            if re_.positional and tensor is not None:
                tensor = tensor[keep]
        elif re_.positional and tensor is not None:
            tensor = tensor[start : start + length]
        index = replace(e.index, pos=pos)
        hp.edits.setdefault(e.site.name, []).append(replace(e, index=index, tensor=tensor))
    last = torch.full((len(plan.rows), 1), length - 1, device=device)
    for _, caps in plan.captures:
        for c in caps:
            rows = torch.arange(len(plan.rows), device=device)
            fresh = replace(
                c,
                index=replace(c.index, rows=rows, pos=last),
                valid=None,
                key_valid=None,
                n_rows=len(plan.rows),
                values=None,
                indices=None,
                version=None,
            )
            hp.captures.setdefault(c.site.name, []).append(fresh)
    for att in plan.saes:
        splice = att.splice()
        prev = hp.splices.get(att.site.name)
        hp.splices[att.site.name] = (
            splice if prev is None else _chain(prev, splice)  # attach order, as the runner does
        )
    return hp


def _chain(first: Any, second: Any) -> Any:
    return lambda ctx, x: second(ctx, first(ctx, x))


def _pass(
    runner: ModelRunner, hp: HookPlan, ids: torch.Tensor, cache: Any
) -> tuple[torch.Tensor, HookPlan]:
    """One cached forward of ``ids`` ``[B, T]`` with the plan's hooks; last-position logits."""
    model = runner.adapter.model
    B, T = ids.shape
    ctx = HookContext(hp, torch.full((B,), T, device=ids.device), check=cancel.current())
    handles = runner.adapter.install(ctx)
    try:
        with activate(ctx), torch.no_grad():
            out = model(input_ids=ids, cache=cache, use_cache=True, return_dict=True)
    finally:
        for h in handles:
            h.remove()
    runner.stats["generate_passes"] = runner.stats.get("generate_passes", 0) + 1
    # as HF generate: the last position's logits, copied to float32
    return out.logits[:, -1].to(copy=True, dtype=torch.float32), hp


# --------------------------------------------------------------------------------------------------
# Sampling (Hugging Face generate's processors, in its order)


def _scores(logits: torch.Tensor, seen: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Next-token scores ``[B, vocab]`` after the repetition penalty and, when sampling,
    temperature, top-k and top-p (filtered entries -inf). ``seen`` ``[B, n]``: every token so far."""
    scores = logits
    if s.repetition_penalty != 1.0:
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, seen, True)
        p = s.repetition_penalty
        scores = torch.where(mask, torch.where(scores < 0, scores * p, scores / p), scores)
    if s.temperature == 0:
        return scores
    if s.temperature != 1.0:
        scores = scores / s.temperature
    if s.top_k:
        k = min(s.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if s.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - s.top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), -float("inf"))
    return scores


def _choose(scores: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> torch.Tensor:
    if s.temperature == 0:
        return torch.argmax(scores, dim=-1)
    probs = torch.nn.functional.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=gen).squeeze(1)


# --------------------------------------------------------------------------------------------------
# The operation


def kv_cache_bytes(runner: ModelRunner, rows: int, tokens: int) -> int:
    """Bytes of the keys and values of ``rows`` sequences of ``tokens`` tokens."""
    d = runner.schema.dims
    item = torch.empty((), dtype=runner.dtype).element_size()
    return 2 * d.n_layers * rows * tokens * d.n_kv_heads * d.d_head * item


def generate(runner: ModelRunner, spec: GenerateSpec) -> Iterator[Event]:
    """Plan (every check first), then decode, yielding a :class:`Start`, one :class:`Step` per
    token and a :class:`Finish`. Admission holds a queue place for the whole generation and takes
    the model's execution lock for each pass, so other requests interleave between steps."""
    plan = _plan(runner, spec)
    return _run(runner, spec, plan)


def _run(runner: ModelRunner, spec: GenerateSpec, plan: _Plan) -> Iterator[Event]:
    from transformers import DynamicCache

    tokens = runner.tokens
    device = runner.device
    B, P = len(plan.rows), plan.prompt_len
    total = P + spec.max_new_tokens
    prompt_batch = Batch(plan.rows, B, 0, 0)
    need, describe = runner.estimate(prompt_batch, HookPlan(), False)
    need += kv_cache_bytes(runner, B, total)
    s = spec.sampling
    seed = None
    gen = None
    if s.temperature > 0:
        seed = s.seed if s.seed is not None else secrets.randbits(63)
        gen = torch.Generator(device=device).manual_seed(seed)
    with runner.admission.admitted(need, describe):
        yield Start(
            prompt=specs.PromptTokens(plan.rows[0], tokens.strings(plan.rows[0])),
            names=plan.names,
            seed=seed,
        )
        started = time.perf_counter()
        config: Any = runner.adapter.model.config
        cache = DynamicCache(config=config.get_text_config(decoder=True))
        seen = torch.tensor(plan.rows, device=device)  # [B, P + step]
        generated: list[list[int]] = [[] for _ in range(B)]
        stopped: list[StopReason | None] = [None] * B
        texts_cut: list[str | None] = [None] * B
        ids = seen
        step = 0
        k = min(spec.top_k, runner.schema.dims.d_vocab)
        while True:
            cancel.check()
            start = P + step - ids.shape[1]
            hp = _step_plan(plan, start, ids.shape[1], device)
            with runner.admission.exclusive():
                logits, hp = _pass(runner, hp, ids, cache)
            with torch.no_grad():
                scores = _scores(logits, seen, s)
                nxt = _choose(scores, s, gen)  # [B]
                lse = logits.logsumexp(-1, keepdim=True)  # log-probabilities: logits - lse
                chosen = (logits.gather(1, nxt[:, None]) - lse)[:, 0]
                top_v, top_i = logits.topk(k, dim=-1)
                top_v = top_v - lse
            for r in range(B):  # finished rows are fed the pad token, as HF does
                if stopped[r] is not None:
                    nxt[r] = tokens.pad_id
            nxt_l, chosen_l = nxt.tolist(), chosen.tolist()
            top_vl, top_il = top_v.tolist(), top_i.tolist()
            caps = [capture_result(c) for cs in hp.captures.values() for c in cs]
            rows: list[RowStep | None] = []
            for r in range(B):
                if stopped[r] is not None:
                    rows.append(None)
                    continue
                t = nxt_l[r]
                generated[r].append(t)
                reason, cut_text = _stop(spec, plan, tokens, generated[r])
                texts_cut[r] = cut_text
                stopped[r] = reason
                rows.append(
                    RowStep(
                        token=TokenChoice(t, tokens.strings([t])[0], chosen_l[r]),
                        top=tuple(
                            TokenChoice(i, tokens.strings([i])[0], v)
                            for i, v in zip(top_il[r], top_vl[r])
                        ),
                        captures=tuple(_row_capture(c, r, P + step - 1) for c in caps),
                        finished=reason,
                    )
                )
            yield Step(step=step, position=P + step, rows=tuple(rows))
            step += 1
            if all(x is not None for x in stopped):
                break
            ids = nxt[:, None]
            seen = torch.cat([seen, ids], dim=1)
        results = []
        for r in range(B):
            reason = stopped[r]
            assert reason is not None
            cut_text = texts_cut[r]
            text = (
                cut_text
                if cut_text is not None
                else tokens.tokenizer.decode(generated[r], clean_up_tokenization_spaces=False)
            )
            results.append(RowResult(plan.names[r], tuple(generated[r]), text, reason))
        yield Finish(tuple(results), step, time.perf_counter() - started)


def _stop(
    spec: GenerateSpec, plan: _Plan, tokens: Tokens, generated: list[int]
) -> tuple[StopReason | None, str | None]:
    """Whether a row stops at its newest token, and its text cut before a stop string."""
    t = generated[-1]
    if t in plan.eos:
        return (StopReason.STOP_TOKEN if t in spec.stop_token_ids else StopReason.EOS), None
    if spec.stop_strings:
        text = tokens.tokenizer.decode(generated, clean_up_tokenization_spaces=False)
        found = [i for i in (text.find(x) for x in spec.stop_strings) if i >= 0]
        if found:
            return StopReason.STOP_STRING, text[: min(found)]
    if len(generated) >= spec.max_new_tokens:
        return StopReason.MAX_NEW_TOKENS, None
    return None, None


def _row_capture(c: specs.CaptureResult, r: int, position: int) -> specs.CaptureResult:
    """Row ``r`` of a step's capture: ``[1, 1, ...]`` at absolute ``position``."""
    return specs.CaptureResult(
        site=c.site,
        dims=c.dims,
        values=c.values[r : r + 1].contiguous(),
        indices=None if c.indices is None else c.indices[r : r + 1].contiguous(),
        positions=torch.tensor([[position]]),
        units=c.units,
    )
