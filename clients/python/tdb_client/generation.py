"""Generation under interventions: edit builders, typed events and the stream ``generate`` returns.

A set is a list of edits: interventions from :mod:`tdb_client.interventions` (``iv.zero(...)``,
``iv.add(...)``), or the steering helpers here::

    steer_latent("toy-res", 467, 48.0)       # add 48 x latent 467's decoder direction
    clamp_latent("toy-res", 467, 60.0)       # set latent 467 to 60 through the SAE splice
    generated(iv.zero("blocks.0.attn.hook_z[head=1]"))   # only at generated positions

Positions are absolute token positions (the prompt is ``0..P-1``, the i-th generated token
``P+i``; negative ones count from the prompt's end). ``generated(edit)`` makes an edit's positions
index the generated tokens (none: every generated token) and ``prompt_only(edit)`` restricts it to
the prompt (none: every prompt position); a plain edit without positions acts everywhere.

:meth:`tdb_client.TdbClient.generate` returns a :class:`GenerateStream`: iterate it for
:class:`GenerateStart`, one :class:`GenerateStep` per token and a :class:`GenerateFinish`;
``cancel()`` stops the server before its next step; ``texts()`` reads to the end and returns
each row's text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
import numpy as np

from tdb.v1 import common_pb2 as cpb
from tdb.v1 import inference_pb2 as ipb
from tdb_client.errors import TdbClientError
from tdb_client.interventions import Intervention, intervention_pb
from tdb_client.tensors import to_numpy

__all__ = [
    "ClampLatent",
    "GenerateEvent",
    "GenerateFinish",
    "GenerateRow",
    "GenerateStart",
    "GenerateStep",
    "GenerateStream",
    "RowStep",
    "Scoped",
    "SteerLatent",
    "TokenChoice",
    "clamp_latent",
    "edit_pb",
    "generated",
    "prompt_only",
    "steer_latent",
]

# -- edits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SteerLatent:
    """Add ``coeff`` x an SAE latent's decoder direction to the SAE's input site."""

    sae: str
    latent: int
    coeff: float
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ClampLatent:
    """Set an SAE latent to ``value`` (the SAE's site becomes the edited reconstruction plus the
    SAE's error term)."""

    sae: str
    latent: int
    value: float
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Scoped:
    """An edit restricted to part of the sequence: ``"prompt"`` or ``"generated"``."""

    edit: Intervention | cpb.Intervention | SteerLatent | ClampLatent
    scope: str


EditLike: TypeAlias = (
    Intervention | cpb.Intervention | SteerLatent | ClampLatent | Scoped | ipb.GenerateEdit
)

_SCOPES = {
    "all": ipb.GENERATE_SCOPE_ALL,
    "prompt": ipb.GENERATE_SCOPE_PROMPT,
    "generated": ipb.GENERATE_SCOPE_GENERATED,
}


def steer_latent(
    sae: str, latent: int, coeff: float, positions: Sequence[int] | None = None
) -> SteerLatent:
    """Steering: add ``coeff`` x latent ``latent``'s decoder direction at the SAE's site."""
    return SteerLatent(
        sae, int(latent), float(coeff), None if positions is None else tuple(positions)
    )


def clamp_latent(
    sae: str, latent: int, value: float, positions: Sequence[int] | None = None
) -> ClampLatent:
    """Clamp latent ``latent`` of SAE ``sae`` to ``value`` (SAE splice with its error term)."""
    return ClampLatent(
        sae, int(latent), float(value), None if positions is None else tuple(positions)
    )


def generated(edit: Intervention | cpb.Intervention | SteerLatent | ClampLatent) -> Scoped:
    """The edit at generated positions only: its positions index generated tokens (0 is the
    first); without positions, every generated token."""
    return Scoped(edit, "generated")


def prompt_only(edit: Intervention | cpb.Intervention | SteerLatent | ClampLatent) -> Scoped:
    """The edit on the prompt only (without positions: every prompt position)."""
    return Scoped(edit, "prompt")


def edit_pb(x: EditLike) -> ipb.GenerateEdit:
    """The ``tdb.v1.GenerateEdit`` message of an edit (raw messages pass through)."""
    if isinstance(x, ipb.GenerateEdit):
        return x
    scope = ipb.GENERATE_SCOPE_ALL
    if isinstance(x, Scoped):
        if x.scope not in _SCOPES:
            raise ValueError(f"scope {x.scope!r}: use all, prompt or generated")
        scope, x = _SCOPES[x.scope], x.edit
    msg = ipb.GenerateEdit(scope=scope)
    if isinstance(x, SteerLatent):
        msg.steer_latent.CopyFrom(
            ipb.SteerLatent(
                sae=x.sae, latent=x.latent, coeff=x.coeff, positions=list(x.positions or ())
            )
        )
    elif isinstance(x, ClampLatent):
        msg.clamp_latent.CopyFrom(
            ipb.ClampLatent(
                sae=x.sae, latent=x.latent, value=x.value, positions=list(x.positions or ())
            )
        )
    else:
        msg.intervention.CopyFrom(intervention_pb(x))
    return msg


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenChoice:
    """A token and its log-probability under the model's next-token distribution."""

    token_id: int
    token: str
    logprob: float


@dataclass
class GenerateStart:
    model: str
    tokens: list[str]
    token_ids: list[int]
    names: list[str]  # "baseline", then each set's name
    seed: int | None  # the seed of the draws (None when greedy)


@dataclass
class RowStep:
    """One row's new token. ``activations[site]`` is ``[1, 1, ...]`` (``indices[site]`` with
    top-k), read at the position that produced the token; ``finished`` is the stop reason on the
    row's last token."""

    name: str
    token: TokenChoice
    top: list[TokenChoice]
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    finished: str | None = None


@dataclass
class GenerateStep:
    """Step ``step``: the tokens at ``position``; ``rows`` holds the rows still generating."""

    step: int
    position: int
    rows: dict[str, RowStep]


@dataclass
class GenerateRow:
    name: str
    token_ids: list[int]
    text: str
    stop_reason: str  # max_new_tokens, eos, stop_token or stop_string


@dataclass
class GenerateFinish:
    rows: dict[str, GenerateRow]
    steps: int
    seconds: float

    @property
    def texts(self) -> dict[str, str]:
        return {name: r.text for name, r in self.rows.items()}


GenerateEvent: TypeAlias = GenerateStart | GenerateStep | GenerateFinish

_REASONS = {
    ipb.STOP_REASON_MAX_NEW_TOKENS: "max_new_tokens",
    ipb.STOP_REASON_EOS: "eos",
    ipb.STOP_REASON_STOP_TOKEN: "stop_token",
    ipb.STOP_REASON_STOP_STRING: "stop_string",
}


def _choice(t: ipb.TokenChoice) -> TokenChoice:
    return TokenChoice(t.token_id, t.token, t.logprob)


def event_from_pb(r: ipb.GenerateResponse, names: list[str]) -> GenerateEvent:
    """A typed event from a response message (``names`` from the start event)."""
    which = r.WhichOneof("event")
    if which == "start":
        s = r.start
        names[:] = list(s.names)
        return GenerateStart(
            model=s.model,
            tokens=list(s.prompt.tokens),
            token_ids=list(s.prompt.token_ids),
            names=list(s.names),
            seed=s.seed if s.HasField("seed") else None,
        )
    if which == "step":
        rows = {}
        for name, row in zip(names, r.step.rows):
            if not row.active:
                continue
            out = RowStep(
                name=name,
                token=_choice(row.token),
                top=[_choice(t) for t in row.top],
                finished=_REASONS.get(row.finished),
            )
            for c in row.captures:
                out.activations[c.site] = to_numpy(c.values)
                if c.HasField("indices"):
                    out.indices[c.site] = to_numpy(c.indices)
            rows[name] = out
        return GenerateStep(r.step.step, r.step.position, rows)
    f = r.finish
    return GenerateFinish(
        rows={
            row.name: GenerateRow(
                row.name, list(row.token_ids), row.text, _REASONS.get(row.stop_reason, "")
            )
            for row in f.rows
        },
        steps=f.steps,
        seconds=f.seconds,
    )


class GenerateStream:
    """The events of one Generate call, as they arrive. Iterate it once; ``cancel()`` stops the
    server before its next step; ``texts()`` reads to the end."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._names: list[str] = []
        self.finish: GenerateFinish | None = None

    def __iter__(self) -> Iterator[GenerateEvent]:
        try:
            for r in self._call:
                event = event_from_pb(r, self._names)
                if isinstance(event, GenerateFinish):
                    self.finish = event
                yield event
        except grpc.RpcError as e:
            raise TdbClientError.from_rpc_error(e) from None

    def cancel(self) -> None:
        """Cancel the call; the server stops generating before its next step."""
        self._call.cancel()

    def result(self) -> GenerateFinish:
        """Read every remaining event and return the final one."""
        for _ in self:
            pass
        if self.finish is None:
            raise TdbClientError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")
        return self.finish

    def texts(self) -> dict[str, str]:
        """Each row's final text, by name ("baseline" first)."""
        return self.result().texts


def sets_pb(
    sets: Mapping[str, Iterable[EditLike]] | Iterable[Iterable[EditLike]],
) -> list[ipb.GenerateSet]:
    named = (
        sets.items()
        if isinstance(sets, Mapping)
        else ((f"set{i + 1}", s) for i, s in enumerate(sets))
    )
    return [ipb.GenerateSet(name=n, edits=[edit_pb(e) for e in edits]) for n, edits in named]
