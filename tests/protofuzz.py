"""Hypothesis strategies that build protobuf messages from their descriptors alone.

``MessageFuzzer.message(desc)`` fills a random subset of fields with values chosen to hurt:
edge-case and huge/negative integers, NaN/inf floats, unknown enum numbers, random and near-valid
strings, random bytes (so Tensor.data rarely matches its dtype and shape), long repeated fields,
every oneof variant, nested messages. ``MessageFuzzer.mutated(seed)`` takes a valid request and
changes, clears or adds a few fields anywhere in it, so requests get past the first checks and
reach deeper code. Nothing here knows our messages: a new
RPC or field is fuzzed without changes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

F = FieldDescriptor

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_EDGE_INTS = (
    0,
    1,
    -1,
    2,
    3,
    4,
    5,
    7,
    8,
    15,
    16,
    31,
    32,
    48,
    63,
    64,
    65,
    100,
    255,
    256,
    1023,
    1024,
    4096,
    65535,
    65536,
    10**6,
    2**31 - 1,
    -(2**31),
    2**32 - 1,
    2**62,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    -2,
    -64,
    -1000,
)


def _ints(field: FieldDescriptor) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[field.type]
    edges = [v for v in _EDGE_INTS if lo <= v <= hi]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(-8, 80).filter(lambda v: lo <= v <= hi),
        st.integers(lo, hi),
    )


def _floats(field: FieldDescriptor) -> st.SearchStrategy[float]:
    width = 32 if field.type == F.TYPE_FLOAT else 64
    return st.one_of(
        st.sampled_from(
            [
                0.0,
                -0.0,
                1.0,
                -1.0,
                0.5,
                1e30,
                -1e30,
                float("nan"),
                float("inf"),
                float("-inf"),
                3.4e38,
            ]
        ),
        st.floats(width=width, allow_nan=True, allow_infinity=True),
    )


class Vocabulary:
    """Strings worth trying: names the server knows (models, sites, SAEs) and nasty ones."""

    def __init__(self, words: Sequence[str]) -> None:
        nasty = [
            "",
            " ",
            "*",
            "**",
            "blocks.*",
            "..",
            "../..",
            "/",
            "/etc/passwd",
            "\x00",
            "blocks.-1.hook_resid_pre",
            "blocks.99.mlp.hook_post",
            "blocks.0.mlp.hook_post[",
            "é" * 40,
            "🙂",
            "a" * 300,
            "NaN",
            "-1",
            "0",
            "blocks.0.attn.hook_z[head=9]",
        ]
        self.words = tuple(dict.fromkeys([*words, *nasty]))

    def strategy(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(self.words),
            st.text(max_size=24),
            st.lists(st.sampled_from(self.words), min_size=2, max_size=4).map(
                lambda parts: "".join(parts)
            ),
        )


def _long_list(field: FieldDescriptor, seed: int, first: Any) -> list[Any]:
    """200 to 2,000 values made from a drawn seed (drawing each one would make Hypothesis slow)."""
    rng = random.Random(seed)
    n = rng.randint(200, 2000)
    t = field.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        pool = [v for v in _EDGE_INTS if lo <= v <= hi]
        return [
            first,
            *(
                rng.choice(pool) if rng.random() < 0.5 else rng.randint(lo, hi)
                for _ in range(n - 1)
            ),
        ]
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return [first, *(rng.uniform(-1e6, 1e6) for _ in range(n - 1))]
    if t == F.TYPE_BOOL:
        return [rng.random() < 0.5 for _ in range(n)]
    if t == F.TYPE_ENUM:
        return [rng.choice([v.number for v in field.enum_type.values]) for _ in range(n)]
    return [first] * n  # strings: one (possibly valid) value, repeated


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _real_oneof(field: FieldDescriptor) -> Any:
    oneof = field.containing_oneof
    if (
        oneof is None
        or getattr(oneof, "is_synthetic", False)
        or (len(oneof.fields) == 1 and oneof.name.startswith("_"))
    ):
        return None  # proto3 `optional` fields sit in a synthetic one-field oneof
    return oneof


class MessageFuzzer:
    """Strategies for any message type, built once per field and message type (Hypothesis
    validates each new strategy object, so rebuilding them per draw would dominate the run)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._scalars: dict[str, st.SearchStrategy[Any]] = {}
        self._messages: dict[tuple[str, int], st.SearchStrategy[Message]] = {}
        self._mutations: dict[int, tuple[Message, st.SearchStrategy[Message]]] = {}
        self._text = vocab.strategy()

    def scalar(self, field: FieldDescriptor) -> st.SearchStrategy[Any]:
        """A value for one non-message field."""
        cached = self._scalars.get(field.full_name)
        if cached is None:
            cached = self._scalars[field.full_name] = self._make_scalar(field)
        return cached

    def _make_scalar(self, field: FieldDescriptor) -> st.SearchStrategy[Any]:
        t = field.type
        if t in _INT_RANGES:
            return _ints(field)
        if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
            return _floats(field)
        if t == F.TYPE_BOOL:
            return st.booleans()
        if t == F.TYPE_STRING:
            return self._text
        if t == F.TYPE_BYTES:
            return st.one_of(
                st.binary(max_size=64),
                st.binary(min_size=256, max_size=4096),
                st.sampled_from([b"", b"\x00" * 4, b"\x00\x00\x80\x7f" * 16, b"\xff" * 1024]),
            )
        if t == F.TYPE_ENUM:
            known = [v.number for v in field.enum_type.values]
            return st.sampled_from([*known, -1, 99, 2**31 - 1])
        raise TypeError(f"unhandled field type {t} of {field.full_name}")

    def message(self, desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """A message of type ``desc`` with a random subset of fields set to random values."""
        key = (desc.full_name, depth)
        cached = self._messages.get(key)
        if cached is None:
            cached = self._messages[key] = st.composite(
                lambda draw: self._draw_message(draw, desc, depth)
            )()
        return cached

    def _draw_message(self, draw: st.DrawFn, desc: Descriptor, depth: int) -> Message:
        msg = GetMessageClass(desc)()
        chosen: dict[str, int] = {}
        for oneof in desc.oneofs:
            if _real_oneof(oneof.fields[0]) is not None:
                chosen[oneof.name] = draw(st.integers(-1, len(oneof.fields) - 1))
        for field in desc.fields:
            oneof = _real_oneof(field)
            if oneof is not None:
                pick = chosen[oneof.name]
                if pick < 0 or oneof.fields[pick].name != field.name:
                    continue
            elif not draw(st.booleans()):
                continue
            self.set_random(draw, msg, field, depth)
        return msg

    def set_random(self, draw: st.DrawFn, msg: Message, field: FieldDescriptor, depth: int) -> None:
        """Give ``field`` of ``msg`` a random value (replacing what it had)."""
        msg.ClearField(field.name)
        target = getattr(msg, field.name)
        if _is_map(field):
            key_f = field.message_type.fields_by_name["key"]
            value_f = field.message_type.fields_by_name["value"]
            for _ in range(draw(st.integers(0, 3))):
                key = draw(self.scalar(key_f))
                if value_f.type == F.TYPE_MESSAGE:
                    target[key].CopyFrom(draw(self.message(value_f.message_type, depth + 1)))
                else:
                    target[key] = draw(self.scalar(value_f))
            return
        if field.type == F.TYPE_MESSAGE:
            if depth >= 4:
                if not field.is_repeated:
                    target.SetInParent()
                return
            sub = self.message(field.message_type, depth + 1)
            if field.is_repeated:
                target.extend([draw(sub) for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3, 5])))])
            else:
                target.CopyFrom(draw(sub))
            return
        if field.is_repeated:
            if field.type != F.TYPE_BYTES and draw(st.integers(0, 7)) == 0:
                target.extend(
                    _long_list(field, draw(st.integers(0, 2**32 - 1)), draw(self.scalar(field)))
                )
            else:
                target.extend([draw(self.scalar(field)) for _ in range(draw(st.integers(0, 5)))])
            return
        setattr(msg, field.name, draw(self.scalar(field)))

    def mutated(self, seed: Message) -> st.SearchStrategy[Message]:
        """``seed`` with one to three fields, anywhere in it, replaced by random values or cleared."""
        cached = self._mutations.get(id(seed))
        if cached is None:  # the seed is kept alive with its strategy, so its id stays unique
            cached = self._mutations[id(seed)] = (
                seed,
                st.composite(lambda draw: self._draw_mutation(draw, seed))(),
            )
        return cached[1]

    def _draw_mutation(self, draw: st.DrawFn, seed: Message) -> Message:
        msg = type(seed)()
        msg.CopyFrom(seed)
        for _ in range(draw(st.integers(1, 3))):
            slots = _field_slots(msg)
            if not slots:
                break
            parent, field = slots[draw(st.integers(0, len(slots) - 1))]
            if draw(st.integers(0, 4)) == 0:
                parent.ClearField(field.name)
            else:
                self.set_random(draw, parent, field, depth=2)
        return msg


def _field_slots(msg: Message, depth: int = 0) -> list[tuple[Message, FieldDescriptor]]:
    """Every (message, field) pair reachable through set message fields, set or not."""
    out = [(msg, f) for f in msg.DESCRIPTOR.fields]
    if depth >= 4:
        return out
    for field, value in msg.ListFields():
        if field.type != F.TYPE_MESSAGE or _is_map(field):
            continue
        for sub in value if field.is_repeated else [value]:
            out.extend(_field_slots(sub, depth + 1))
    return out


def unknown_fields() -> st.SearchStrategy[bytes]:
    """Well-formed wire bytes for field numbers no message of ours uses (they must be ignored)."""
    varint = st.integers(0, 2**63 - 1).map(_varint)
    one = st.tuples(
        st.integers(1000, 5000), st.sampled_from([0, 2]), varint, st.binary(max_size=16)
    )
    return st.lists(one, max_size=3).map(
        lambda items: b"".join(
            _varint((n << 3) | wt) + (v if wt == 0 else _varint(len(b)) + b)
            for n, wt, v, b in items
        )
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
