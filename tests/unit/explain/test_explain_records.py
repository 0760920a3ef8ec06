"""The original JSON record format, our wrapper, the interleaved splits and token-pair indexing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tdb_core.explain.records import (
    ActivationRecord,
    NeuronId,
    NeuronRecord,
    NodeRecords,
    RecordKind,
    check_record,
    flat_index_to_pair,
    load_node_records,
    n_token_pairs,
    n_tokens_for_pairs,
    neuron_record_from_json,
    neuron_record_to_json,
    node_records_from_json,
    node_records_to_json,
    pair_to_flat_index,
    save_node_records,
    split_records,
)


def _records(n: int, tag: str) -> tuple[ActivationRecord, ...]:
    return tuple(ActivationRecord(tokens=(f"{tag}{i}",), activations=(float(i),)) for i in range(n))


def test_neuron_record_json_uses_the_original_field_names() -> None:
    """Serialized records carry the original's fields and "dataclass_name"; NaN moments become null."""
    record = NeuronRecord(
        neuron_id=NeuronId(3, 17),
        random_sample=_records(1, "r"),
        mean=0.5,
        variance=math.nan,
        most_positive_activation_records=_records(2, "t"),
    )
    obj = neuron_record_to_json(record)
    assert obj["dataclass_name"] == "NeuronRecord"
    assert obj["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 3, "neuron_index": 17}
    assert set(obj) == {
        "dataclass_name",
        "neuron_id",
        "random_sample",
        "random_sample_by_quantile",
        "quantile_boundaries",
        "mean",
        "variance",
        "skewness",
        "kurtosis",
        "most_positive_activation_records",
    }
    assert obj["most_positive_activation_records"][1] == {
        "dataclass_name": "ActivationRecord",
        "tokens": ["t1"],
        "activations": [1.0],
    }
    assert obj["variance"] is None
    back = neuron_record_from_json(json.loads(json.dumps(obj)))
    assert back == NeuronRecord(
        neuron_id=NeuronId(3, 17),
        random_sample=_records(1, "r"),
        mean=0.5,
        variance=None,
        most_positive_activation_records=_records(2, "t"),
    )


def test_node_records_wrapper_round_trip_keeps_the_original_object_untouched() -> None:
    """Our fields sit beside the original object, which is stored unchanged under "neuron_record"."""
    node = NodeRecords(
        node_key="mlp:0:1",
        kind=RecordKind.TOKEN,
        record=NeuronRecord(
            neuron_id=NeuronId(0, 1), most_positive_activation_records=_records(1, "x")
        ),
        density=0.25,
        max_activation=2.0,
        n_positions=40,
    )
    obj = node_records_to_json(node)
    assert obj["neuron_record"] == neuron_record_to_json(node.record)
    assert node_records_from_json(json.loads(json.dumps(obj))) == node


def test_malformed_json_is_invalid_argument() -> None:
    """Missing fields, wrong types and unknown kinds are InvalidArgumentError with the field named."""
    with pytest.raises(InvalidArgumentError, match="neuron_id"):
        neuron_record_from_json({"random_sample": []})
    with pytest.raises(InvalidArgumentError, match="tokens"):
        neuron_record_from_json(
            {
                "neuron_id": {"layer_index": 0, "neuron_index": 0},
                "random_sample": [{"tokens": "abc", "activations": []}],
            }
        )
    with pytest.raises(InvalidArgumentError, match="kind"):
        node_records_from_json({"kind": "bogus"})


def test_splits_interleave_top_by_four_and_random_by_three() -> None:
    """train = top[0::4], calibration/valid/test = top[1|2|3::4] + random[0|1|2::3] (original layout)."""
    record = NeuronRecord(
        neuron_id=NeuronId(0, 0),
        random_sample=_records(9, "r"),
        most_positive_activation_records=_records(12, "t"),
    )
    splits = split_records(record)
    assert splits.n_examples_per_split == 3
    assert [r.tokens[0] for r in splits.train] == ["t0", "t4", "t8"]
    assert [r.tokens[0] for r in splits.valid_top] == ["t2", "t6", "t10"]
    assert [r.tokens[0] for r in splits.test_top] == ["t3", "t7", "t11"]
    assert [r.tokens[0] for r in splits.calibration_random] == ["r0", "r3", "r6"]
    assert [r.tokens[0] for r in splits.valid_random] == ["r1", "r4", "r7"]
    assert [r.tokens[0] for r in split_records(record, 2).valid_top] == ["t2", "t6"]


def test_splits_with_too_few_records_say_what_is_needed() -> None:
    """Asking for more examples than mined is a FailedPreconditionError with the numbers."""
    record = NeuronRecord(
        neuron_id=NeuronId(0, 0),
        random_sample=_records(3, "r"),
        most_positive_activation_records=_records(7, "t"),
    )
    with pytest.raises(FailedPreconditionError, match="7 top-activating and 3 random"):
        split_records(record, 5)
    with pytest.raises(FailedPreconditionError, match="mine more text"):
        split_records(NeuronRecord(neuron_id=NeuronId(0, 0)))
    with pytest.raises(InvalidArgumentError, match=">= 1"):
        split_records(record, 0)


def test_pair_indexing_is_the_row_major_lower_triangle() -> None:
    """flat = q(q+1)/2 + k enumerates (0,0), (1,0), (1,1), (2,0), ... and inverts exactly."""
    expected = [(q, k) for q in range(40) for k in range(q + 1)]
    assert [flat_index_to_pair(i) for i in range(len(expected))] == expected
    assert [pair_to_flat_index(q, k) for q, k in expected] == list(range(len(expected)))
    assert n_token_pairs(4) == 10 and n_tokens_for_pairs(10) == 4 and n_tokens_for_pairs(11) is None


def test_check_record_validates_lengths_and_values() -> None:
    """Token records need one value per token, pair records T(T+1)/2, all finite."""
    check_record(ActivationRecord(("a", "b"), (1.0, 2.0)), RecordKind.TOKEN)
    check_record(ActivationRecord(("a", "b"), (1.0, 2.0, 3.0)), RecordKind.TOKEN_PAIR)
    with pytest.raises(InvalidArgumentError, match="needs 3"):
        check_record(ActivationRecord(("a", "b"), (1.0, 2.0)), RecordKind.TOKEN_PAIR)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        check_record(ActivationRecord(("a",), (math.nan,)), RecordKind.TOKEN)


def test_save_and_load_use_the_original_file_layout(tmp_path: Path) -> None:
    """{layer}/{index}.json holds exactly the original NeuronRecord JSON; our fields sit beside it."""
    node = NodeRecords(
        node_key="sae:5:9",
        kind=RecordKind.TOKEN,
        record=NeuronRecord(
            neuron_id=NeuronId(5, 9), most_positive_activation_records=_records(2, "x")
        ),
        density=0.1,
        max_activation=1.0,
        n_positions=10,
    )
    path = save_node_records(node, tmp_path)
    assert path == tmp_path / "5" / "9.json"
    assert json.loads(path.read_text()) == neuron_record_to_json(node.record)
    assert load_node_records(tmp_path, 5, 9) == node
    with pytest.raises(NotFoundError, match="layer 5, index 10"):
        load_node_records(tmp_path, 5, 10)
