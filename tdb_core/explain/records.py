"""Activation records: the data an explanation is written from and scored against.

The first three classes mirror the JSON format of OpenAI's ``automated-interpretability``
(``neuron_explainer/activations/activations.py``) field for field, so records mined here can be read
by that code and records published by OpenAI can be read here:

    ActivationRecord{tokens: [str], activations: [float]}
    NeuronId{layer_index, neuron_index}
    NeuronRecord{neuron_id, random_sample, random_sample_by_quantile, quantile_boundaries,
                 mean, variance, skewness, kurtosis, most_positive_activation_records}

Every serialized object carries a ``"dataclass_name"`` field, as the original's ``FastDataclass``
does. Our own per-node facts (node key, record kind, density, max activation) live in the separate
``NodeRecords`` wrapper; the original format is never extended.

Two kinds of record exist. A *token* record (MLP neuron, SAE latent) has one activation per token.
A *token-pair* record (attention head) has one activation per (query, key) pair with key <= query,
flattened row by row over the lower triangle exactly as TDB stores head records:
``flat = q * (q + 1) // 2 + k``, so a window of T tokens has T * (T + 1) / 2 activations.

Splits follow the original: top records are interleaved into train / calibration / valid / test
(stride 4) and random records into calibration / valid / test (stride 3). ``train`` is top records
only (explanations are written from it); the other splits are top + random 1:1, and ``valid`` is
the "top-and-random" set that scores are computed on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError

TOP_SPLITS = ("train", "calibration", "valid", "test")
RANDOM_SPLITS = ("calibration", "valid", "test")


@dataclass(frozen=True)
class ActivationRecord:
    """Tokens of one text window and the node's raw activation on each (or on each token pair)."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]


@dataclass(frozen=True)
class NeuronId:
    """The original format's node identifier: a layer and an index within it (neuron, latent, head)."""

    layer_index: int
    neuron_index: int


@dataclass(frozen=True)
class NeuronRecord:
    """Top-activating and random records of one node, with moments of its activation distribution."""

    neuron_id: NeuronId
    random_sample: tuple[ActivationRecord, ...] = ()
    random_sample_by_quantile: tuple[tuple[ActivationRecord, ...], ...] | None = None
    quantile_boundaries: tuple[float, ...] | None = None
    mean: float | None = None
    variance: float | None = None
    skewness: float | None = None
    kurtosis: float | None = None
    most_positive_activation_records: tuple[ActivationRecord, ...] = ()


class RecordKind(str, Enum):
    """Whether a record has one activation per token or one per (query, key) token pair."""

    TOKEN = "token"
    TOKEN_PAIR = "token_pair"


@dataclass(frozen=True)
class NodeRecords:
    """Our wrapper around one node's ``NeuronRecord``: the facts the original format has no field for.

    ``density`` is the fraction of positions (tokens, or token pairs for heads) seen while mining
    whose activation was > 0; ``max_activation`` the largest activation seen; ``n_positions`` how
    many positions were seen.
    """

    node_key: str
    kind: RecordKind
    record: NeuronRecord
    density: float
    max_activation: float
    n_positions: int


@dataclass(frozen=True)
class RecordSplits:
    """The original's interleaved splits of one node's records (see the module docstring)."""

    n_examples_per_split: int
    train: tuple[ActivationRecord, ...]
    calibration_top: tuple[ActivationRecord, ...]
    calibration_random: tuple[ActivationRecord, ...]
    valid_top: tuple[ActivationRecord, ...]
    valid_random: tuple[ActivationRecord, ...]
    test_top: tuple[ActivationRecord, ...]
    test_random: tuple[ActivationRecord, ...]


# ------------------------------------------------------------------------------------------------
# Token-pair indexing (TDB's flattened lower triangle)


def n_token_pairs(n_tokens: int) -> int:
    """Number of (query, key <= query) pairs in a window of ``n_tokens`` tokens."""
    return n_tokens * (n_tokens + 1) // 2


def pair_to_flat_index(query: int, key: int) -> int:
    """Flat index of the pair (query, key) with key <= query, row by row over the lower triangle."""
    return query * (query + 1) // 2 + key


def flat_index_to_pair(flat_index: int) -> tuple[int, int]:
    """Inverse of :func:`pair_to_flat_index`: the (query, key) pair at ``flat_index``."""
    query = (math.isqrt(8 * flat_index + 1) - 1) // 2
    return query, flat_index - query * (query + 1) // 2


def n_tokens_for_pairs(n_pairs: int) -> int | None:
    """The T with T * (T + 1) / 2 == n_pairs, or None when ``n_pairs`` is not triangular."""
    n_tokens = (math.isqrt(8 * n_pairs + 1) - 1) // 2
    return n_tokens if n_token_pairs(n_tokens) == n_pairs else None


def check_record(record: ActivationRecord, kind: RecordKind) -> None:
    """Raise InvalidArgumentError unless the record's activations fit its tokens and are finite."""
    n_tokens, n_acts = len(record.tokens), len(record.activations)
    expected = n_tokens if kind is RecordKind.TOKEN else n_token_pairs(n_tokens)
    if n_acts != expected:
        what = "one per token" if kind is RecordKind.TOKEN else "one per (query, key<=query) pair"
        raise InvalidArgumentError(
            f"an activation record has {n_tokens} tokens and {n_acts} activations; a {kind.value} "
            f"record needs {expected} ({what})"
        )
    if n_tokens == 0:
        raise InvalidArgumentError("an activation record has no tokens; records need at least one")
    if not all(math.isfinite(a) for a in record.activations):
        raise InvalidArgumentError("an activation record contains NaN or infinite activations")


# ------------------------------------------------------------------------------------------------
# Splits


def split_records(record: NeuronRecord, n_examples_per_split: int | None = None) -> RecordSplits:
    """Split a node's records into the original's train / calibration / valid / test sets.

    ``n_examples_per_split=None`` takes the largest size the record supports
    (``min(#top // 4, #random // 3)``); the original's published setting is 5.
    """
    tops, randoms = record.most_positive_activation_records, record.random_sample
    largest = min(len(tops) // len(TOP_SPLITS), len(randoms) // len(RANDOM_SPLITS))
    n = largest if n_examples_per_split is None else n_examples_per_split
    if n_examples_per_split is not None and n_examples_per_split < 1:
        raise InvalidArgumentError(
            f"n_examples_per_split is {n_examples_per_split}; it must be >= 1 (or unset for auto)"
        )
    if n < 1 or n > largest:
        raise FailedPreconditionError(
            f"the node has {len(tops)} top-activating and {len(randoms)} random records; "
            f"{max(n, 1)} example(s) per split need {4 * max(n, 1)} top and {3 * max(n, 1)} random "
            f"records (the largest size these records allow is {largest}); mine more text, raise "
            "top_k / n_random, or lower n_examples_per_split"
        )

    def take(
        items: Sequence[ActivationRecord], start: int, stride: int
    ) -> tuple[ActivationRecord, ...]:
        return tuple(items[start : n * stride : stride])

    return RecordSplits(
        n_examples_per_split=n,
        train=take(tops, 0, 4),
        calibration_top=take(tops, 1, 4),
        valid_top=take(tops, 2, 4),
        test_top=take(tops, 3, 4),
        calibration_random=take(randoms, 0, 3),
        valid_random=take(randoms, 1, 3),
        test_random=take(randoms, 2, 3),
    )


# ------------------------------------------------------------------------------------------------
# JSON (the original's field names plus "dataclass_name")


def _float_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def activation_record_to_json(record: ActivationRecord) -> dict[str, Any]:
    """The original's JSON object for an ActivationRecord."""
    return {
        "dataclass_name": "ActivationRecord",
        "tokens": list(record.tokens),
        "activations": [float(a) for a in record.activations],
    }


def neuron_record_to_json(record: NeuronRecord) -> dict[str, Any]:
    """The original's JSON object for a NeuronRecord (NaN moments become null, as orjson writes them)."""
    by_quantile = record.random_sample_by_quantile
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {
            "dataclass_name": "NeuronId",
            "layer_index": record.neuron_id.layer_index,
            "neuron_index": record.neuron_id.neuron_index,
        },
        "random_sample": [activation_record_to_json(r) for r in record.random_sample],
        "random_sample_by_quantile": None
        if by_quantile is None
        else [[activation_record_to_json(r) for r in q] for q in by_quantile],
        "quantile_boundaries": None
        if record.quantile_boundaries is None
        else list(record.quantile_boundaries),
        "mean": _float_or_none(record.mean),
        "variance": _float_or_none(record.variance),
        "skewness": _float_or_none(record.skewness),
        "kurtosis": _float_or_none(record.kurtosis),
        "most_positive_activation_records": [
            activation_record_to_json(r) for r in record.most_positive_activation_records
        ],
    }


def node_records_to_json(node: NodeRecords) -> dict[str, Any]:
    """Our wrapper as JSON: our fields plus the untouched original object under ``neuron_record``."""
    return {
        "node_key": node.node_key,
        "kind": node.kind.value,
        "density": node.density,
        "max_activation": node.max_activation,
        "n_positions": node.n_positions,
        "neuron_record": neuron_record_to_json(node.record),
    }


def _require(obj: Mapping[str, Any], field: str, what: str) -> Any:
    if field not in obj:
        raise InvalidArgumentError(f"{what} JSON lacks the field {field!r}; it has {sorted(obj)}")
    return obj[field]


def activation_record_from_json(obj: Mapping[str, Any]) -> ActivationRecord:
    """Parse the original's ActivationRecord JSON object."""
    if not isinstance(obj, Mapping):
        raise InvalidArgumentError(
            f"an ActivationRecord must be a JSON object, got {type(obj).__name__}"
        )
    tokens = _require(obj, "tokens", "ActivationRecord")
    activations = _require(obj, "activations", "ActivationRecord")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise InvalidArgumentError("ActivationRecord.tokens must be a list of strings")
    if not isinstance(activations, list) or not all(
        isinstance(a, int | float) and not isinstance(a, bool) for a in activations
    ):
        raise InvalidArgumentError("ActivationRecord.activations must be a list of numbers")
    return ActivationRecord(tokens=tuple(tokens), activations=tuple(float(a) for a in activations))


def neuron_record_from_json(obj: Mapping[str, Any]) -> NeuronRecord:
    """Parse the original's NeuronRecord JSON object (as published by OpenAI or written here)."""
    if not isinstance(obj, Mapping):
        raise InvalidArgumentError(
            f"a NeuronRecord must be a JSON object, got {type(obj).__name__}"
        )
    nid = _require(obj, "neuron_id", "NeuronRecord")
    by_quantile = obj.get("random_sample_by_quantile")
    boundaries = obj.get("quantile_boundaries")

    def moment(name: str) -> float | None:
        value = obj.get(name)
        return None if value is None else _float_or_none(float(value))

    return NeuronRecord(
        neuron_id=NeuronId(
            layer_index=int(_require(nid, "layer_index", "NeuronId")),
            neuron_index=int(_require(nid, "neuron_index", "NeuronId")),
        ),
        random_sample=tuple(activation_record_from_json(r) for r in obj.get("random_sample", [])),
        random_sample_by_quantile=None
        if by_quantile is None
        else tuple(tuple(activation_record_from_json(r) for r in q) for q in by_quantile),
        quantile_boundaries=None if boundaries is None else tuple(float(b) for b in boundaries),
        mean=moment("mean"),
        variance=moment("variance"),
        skewness=moment("skewness"),
        kurtosis=moment("kurtosis"),
        most_positive_activation_records=tuple(
            activation_record_from_json(r) for r in obj.get("most_positive_activation_records", [])
        ),
    )


def node_records_from_json(obj: Mapping[str, Any]) -> NodeRecords:
    """Parse :func:`node_records_to_json` output, checking every record against its kind."""
    kind_value = _require(obj, "kind", "NodeRecords")
    try:
        kind = RecordKind(kind_value)
    except ValueError:
        raise InvalidArgumentError(
            f"NodeRecords.kind is {kind_value!r}; allowed: {[k.value for k in RecordKind]}"
        ) from None
    node = NodeRecords(
        node_key=str(_require(obj, "node_key", "NodeRecords")),
        kind=kind,
        record=neuron_record_from_json(_require(obj, "neuron_record", "NodeRecords")),
        density=float(_require(obj, "density", "NodeRecords")),
        max_activation=float(_require(obj, "max_activation", "NodeRecords")),
        n_positions=int(_require(obj, "n_positions", "NodeRecords")),
    )
    for r in node.record.most_positive_activation_records + node.record.random_sample:
        check_record(r, kind)
    return node


# ------------------------------------------------------------------------------------------------
# Files: the original's layout, {directory}/{layer_index}/{neuron_index}.json


def save_node_records(node: NodeRecords, directory: str | os.PathLike[str]) -> Path:
    """Write ``{layer}/{index}.json`` (the original NeuronRecord JSON, readable by OpenAI's code) and
    ``{layer}/{index}.node.json`` (our wrapper fields) under ``directory``; returns the first path."""
    folder = Path(directory) / str(node.record.neuron_id.layer_index)
    folder.mkdir(parents=True, exist_ok=True)
    index = node.record.neuron_id.neuron_index
    record_path = folder / f"{index}.json"
    record_path.write_text(json.dumps(neuron_record_to_json(node.record)), encoding="utf-8")
    wrapper = node_records_to_json(node)
    del wrapper["neuron_record"]
    (folder / f"{index}.node.json").write_text(json.dumps(wrapper), encoding="utf-8")
    return record_path


def load_node_records(
    directory: str | os.PathLike[str], layer_index: int, neuron_index: int
) -> NodeRecords:
    """Read what :func:`save_node_records` wrote; NotFoundError when the node was never saved."""
    folder = Path(directory) / str(layer_index)
    record_path, wrapper_path = (
        folder / f"{neuron_index}.json",
        folder / f"{neuron_index}.node.json",
    )
    if not record_path.is_file() or not wrapper_path.is_file():
        raise NotFoundError(
            f"no records saved for layer {layer_index}, index {neuron_index} under {str(directory)!r}"
        )
    try:
        wrapper = json.loads(wrapper_path.read_text(encoding="utf-8"))
        wrapper["neuron_record"] = json.loads(record_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"saved records in {str(folder)!r} are not valid JSON: {exc}"
        ) from None
    return node_records_from_json(wrapper)
