from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TextList(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "texts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    texts: TextList
    def __init__(self, name: _Optional[str] = ..., texts: _Optional[_Union[TextList, _Mapping]] = ...) -> None: ...

class MiningOptions(_message.Message):
    __slots__ = ("window_len", "top_k", "n_random", "max_windows", "batch_size", "seed")
    WINDOW_LEN_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    N_RANDOM_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    window_len: int
    top_k: int
    n_random: int
    max_windows: int
    batch_size: int
    seed: int
    def __init__(self, window_len: _Optional[int] = ..., top_k: _Optional[int] = ..., n_random: _Optional[int] = ..., max_windows: _Optional[int] = ..., batch_size: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ActivationRecord(_message.Message):
    __slots__ = ("tokens", "activations")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    activations: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, tokens: _Optional[_Iterable[str]] = ..., activations: _Optional[_Iterable[float]] = ...) -> None: ...

class NodeRecords(_message.Message):
    __slots__ = ("node", "kind", "density", "max_activation", "top", "random", "n_positions", "neuron_record_json")
    NODE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    N_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    NEURON_RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    node: str
    kind: str
    density: float
    max_activation: float
    top: _containers.RepeatedCompositeFieldContainer[ActivationRecord]
    random: _containers.RepeatedCompositeFieldContainer[ActivationRecord]
    n_positions: int
    neuron_record_json: str
    def __init__(self, node: _Optional[str] = ..., kind: _Optional[str] = ..., density: _Optional[float] = ..., max_activation: _Optional[float] = ..., top: _Optional[_Iterable[_Union[ActivationRecord, _Mapping]]] = ..., random: _Optional[_Iterable[_Union[ActivationRecord, _Mapping]]] = ..., n_positions: _Optional[int] = ..., neuron_record_json: _Optional[str] = ...) -> None: ...

class GetActivationRecordsRequest(_message.Message):
    __slots__ = ("model", "nodes", "dataset", "mining")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MINING_FIELD_NUMBER: _ClassVar[int]
    model: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    dataset: Dataset
    mining: MiningOptions
    def __init__(self, model: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., mining: _Optional[_Union[MiningOptions, _Mapping]] = ...) -> None: ...

class GetActivationRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[NodeRecords]
    def __init__(self, records: _Optional[_Iterable[_Union[NodeRecords, _Mapping]]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("model", "sae", "node", "method", "explainer", "explanation", "score", "score_reason", "scores_json", "records_used_json", "created_at", "updated_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EXPLAINER_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORE_REASON_FIELD_NUMBER: _ClassVar[int]
    SCORES_JSON_FIELD_NUMBER: _ClassVar[int]
    RECORDS_USED_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    sae: str
    node: str
    method: str
    explainer: str
    explanation: str
    score: float
    score_reason: str
    scores_json: str
    records_used_json: str
    created_at: float
    updated_at: float
    def __init__(self, model: _Optional[str] = ..., sae: _Optional[str] = ..., node: _Optional[str] = ..., method: _Optional[str] = ..., explainer: _Optional[str] = ..., explanation: _Optional[str] = ..., score: _Optional[float] = ..., score_reason: _Optional[str] = ..., scores_json: _Optional[str] = ..., records_used_json: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ExplainNodeRequest(_message.Message):
    __slots__ = ("model", "nodes", "dataset", "mining", "method", "n_examples_per_split", "save")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MINING_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    N_EXAMPLES_PER_SPLIT_FIELD_NUMBER: _ClassVar[int]
    SAVE_FIELD_NUMBER: _ClassVar[int]
    model: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    dataset: Dataset
    mining: MiningOptions
    method: str
    n_examples_per_split: int
    save: bool
    def __init__(self, model: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., mining: _Optional[_Union[MiningOptions, _Mapping]] = ..., method: _Optional[str] = ..., n_examples_per_split: _Optional[int] = ..., save: _Optional[bool] = ...) -> None: ...

class ExplainProgress(_message.Message):
    __slots__ = ("node", "phase", "done", "total", "message")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node: str
    phase: str
    done: int
    total: int
    message: str
    def __init__(self, node: _Optional[str] = ..., phase: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ExplainNodeResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: ExplainProgress
    result: Explanation
    def __init__(self, progress: _Optional[_Union[ExplainProgress, _Mapping]] = ..., result: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class ScoreExplanationRequest(_message.Message):
    __slots__ = ("model", "node", "explanation", "dataset", "mining", "method", "n_examples_per_split", "save")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MINING_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    N_EXAMPLES_PER_SPLIT_FIELD_NUMBER: _ClassVar[int]
    SAVE_FIELD_NUMBER: _ClassVar[int]
    model: str
    node: str
    explanation: str
    dataset: Dataset
    mining: MiningOptions
    method: str
    n_examples_per_split: int
    save: bool
    def __init__(self, model: _Optional[str] = ..., node: _Optional[str] = ..., explanation: _Optional[str] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., mining: _Optional[_Union[MiningOptions, _Mapping]] = ..., method: _Optional[str] = ..., n_examples_per_split: _Optional[int] = ..., save: _Optional[bool] = ...) -> None: ...

class ScoreExplanationResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: Explanation
    def __init__(self, result: _Optional[_Union[Explanation, _Mapping]] = ...) -> None: ...

class ListExplanationsRequest(_message.Message):
    __slots__ = ("model", "sae", "node", "node_prefix", "method", "min_score", "limit", "offset")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NODE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    model: str
    sae: str
    node: str
    node_prefix: str
    method: str
    min_score: float
    limit: int
    offset: int
    def __init__(self, model: _Optional[str] = ..., sae: _Optional[str] = ..., node: _Optional[str] = ..., node_prefix: _Optional[str] = ..., method: _Optional[str] = ..., min_score: _Optional[float] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class ListExplanationsResponse(_message.Message):
    __slots__ = ("explanations", "methods", "default_method", "datasets", "next_offset")
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_METHOD_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    methods: _containers.RepeatedScalarFieldContainer[str]
    default_method: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    next_offset: int
    def __init__(self, explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ..., methods: _Optional[_Iterable[str]] = ..., default_method: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., next_offset: _Optional[int] = ...) -> None: ...
