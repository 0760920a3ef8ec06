from tdb.v1 import common_pb2 as _common_pb2
from tdb.v1 import explain_pb2 as _explain_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Through(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THROUGH_UNSPECIFIED: _ClassVar[Through]
    THROUGH_Q: _ClassVar[Through]
    THROUGH_K: _ClassVar[Through]
    THROUGH_QK: _ClassVar[Through]
    THROUGH_V: _ClassVar[Through]
THROUGH_UNSPECIFIED: Through
THROUGH_Q: Through
THROUGH_K: Through
THROUGH_QK: Through
THROUGH_V: Through

class LogitDiffLoss(_message.Message):
    __slots__ = ("target", "distractor", "position")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DISTRACTOR_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    target: _common_pb2.Tokens
    distractor: _common_pb2.Tokens
    position: int
    def __init__(self, target: _Optional[_Union[_common_pb2.Tokens, _Mapping]] = ..., distractor: _Optional[_Union[_common_pb2.Tokens, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class LogProbLoss(_message.Message):
    __slots__ = ("target", "position")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    target: _common_pb2.Tokens
    position: int
    def __init__(self, target: _Optional[_Union[_common_pb2.Tokens, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class NeuronTrace(_message.Message):
    __slots__ = ("layer", "neuron", "position")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    layer: int
    neuron: int
    position: int
    def __init__(self, layer: _Optional[int] = ..., neuron: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class HeadTrace(_message.Message):
    __slots__ = ("layer", "head", "query_position", "key_position", "through")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    QUERY_POSITION_FIELD_NUMBER: _ClassVar[int]
    KEY_POSITION_FIELD_NUMBER: _ClassVar[int]
    THROUGH_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    query_position: int
    key_position: int
    through: Through
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ..., query_position: _Optional[int] = ..., key_position: _Optional[int] = ..., through: _Optional[_Union[Through, str]] = ...) -> None: ...

class LatentTrace(_message.Message):
    __slots__ = ("sae", "latent", "position")
    SAE_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    sae: str
    latent: int
    position: int
    def __init__(self, sae: _Optional[str] = ..., latent: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class DirectionLoss(_message.Message):
    __slots__ = ("site", "vector", "position")
    SITE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    site: str
    vector: _common_pb2.Tensor
    position: int
    def __init__(self, site: _Optional[str] = ..., vector: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class Loss(_message.Message):
    __slots__ = ("logit_diff", "log_prob", "neuron", "head", "latent", "direction")
    LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    LOG_PROB_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    logit_diff: LogitDiffLoss
    log_prob: LogProbLoss
    neuron: NeuronTrace
    head: HeadTrace
    latent: LatentTrace
    direction: DirectionLoss
    def __init__(self, logit_diff: _Optional[_Union[LogitDiffLoss, _Mapping]] = ..., log_prob: _Optional[_Union[LogProbLoss, _Mapping]] = ..., neuron: _Optional[_Union[NeuronTrace, _Mapping]] = ..., head: _Optional[_Union[HeadTrace, _Mapping]] = ..., latent: _Optional[_Union[LatentTrace, _Mapping]] = ..., direction: _Optional[_Union[DirectionLoss, _Mapping]] = ...) -> None: ...

class AttributeRequest(_message.Message):
    __slots__ = ("model", "prompt", "logit_diff", "log_prob", "neuron", "head", "latent", "direction", "second_prompt", "interventions", "top_k", "families", "ig_steps", "freeze_norm_scale", "node_tokens", "prepend_bos")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    LOG_PROB_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SECOND_PROMPT_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    IG_STEPS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_NORM_SCALE_FIELD_NUMBER: _ClassVar[int]
    NODE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: _common_pb2.Prompt
    logit_diff: LogitDiffLoss
    log_prob: LogProbLoss
    neuron: NeuronTrace
    head: HeadTrace
    latent: LatentTrace
    direction: DirectionLoss
    second_prompt: _common_pb2.Prompt
    interventions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Intervention]
    top_k: int
    families: _containers.RepeatedScalarFieldContainer[str]
    ig_steps: int
    freeze_norm_scale: bool
    node_tokens: int
    prepend_bos: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., logit_diff: _Optional[_Union[LogitDiffLoss, _Mapping]] = ..., log_prob: _Optional[_Union[LogProbLoss, _Mapping]] = ..., neuron: _Optional[_Union[NeuronTrace, _Mapping]] = ..., head: _Optional[_Union[HeadTrace, _Mapping]] = ..., latent: _Optional[_Union[LatentTrace, _Mapping]] = ..., direction: _Optional[_Union[DirectionLoss, _Mapping]] = ..., second_prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., interventions: _Optional[_Iterable[_Union[_common_pb2.Intervention, _Mapping]]] = ..., top_k: _Optional[int] = ..., families: _Optional[_Iterable[str]] = ..., ig_steps: _Optional[int] = ..., freeze_norm_scale: _Optional[bool] = ..., node_tokens: _Optional[int] = ..., prepend_bos: _Optional[bool] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("family", "layer", "position", "index", "key_position", "sae", "name", "key", "kind")
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_POSITION_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    family: str
    layer: int
    position: int
    index: int
    key_position: int
    sae: str
    name: str
    key: str
    kind: _common_pb2.NodeKind
    def __init__(self, family: _Optional[str] = ..., layer: _Optional[int] = ..., position: _Optional[int] = ..., index: _Optional[int] = ..., key_position: _Optional[int] = ..., sae: _Optional[str] = ..., name: _Optional[str] = ..., key: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.NodeKind, str]] = ...) -> None: ...

class NodeValues(_message.Message):
    __slots__ = ("activation", "write_magnitude", "direct_effect", "total_effect")
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    WRITE_MAGNITUDE_FIELD_NUMBER: _ClassVar[int]
    DIRECT_EFFECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EFFECT_FIELD_NUMBER: _ClassVar[int]
    activation: float
    write_magnitude: float
    direct_effect: float
    total_effect: float
    def __init__(self, activation: _Optional[float] = ..., write_magnitude: _Optional[float] = ..., direct_effect: _Optional[float] = ..., total_effect: _Optional[float] = ...) -> None: ...

class TokenScore(_message.Message):
    __slots__ = ("token_id", "token", "score")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    score: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class NodeRow(_message.Message):
    __slots__ = ("node", "values", "upvoted", "downvoted", "input_tokens", "explanation")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    UPVOTED_FIELD_NUMBER: _ClassVar[int]
    DOWNVOTED_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    node: Node
    values: _containers.RepeatedCompositeFieldContainer[NodeValues]
    upvoted: _containers.RepeatedCompositeFieldContainer[TokenScore]
    downvoted: _containers.RepeatedCompositeFieldContainer[TokenScore]
    input_tokens: _containers.RepeatedCompositeFieldContainer[TokenScore]
    explanation: _explain_pb2.Explanation
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., values: _Optional[_Iterable[_Union[NodeValues, _Mapping]]] = ..., upvoted: _Optional[_Iterable[_Union[TokenScore, _Mapping]]] = ..., downvoted: _Optional[_Iterable[_Union[TokenScore, _Mapping]]] = ..., input_tokens: _Optional[_Iterable[_Union[TokenScore, _Mapping]]] = ..., explanation: _Optional[_Union[_explain_pb2.Explanation, _Mapping]] = ...) -> None: ...

class PositionValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class AttributeResponse(_message.Message):
    __slots__ = ("model", "prompts", "loss_values", "rows", "token_attribution", "bias_direct_effect", "constant", "loss_position", "nodes_ranked")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    LOSS_VALUES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    BIAS_DIRECT_EFFECT_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    LOSS_POSITION_FIELD_NUMBER: _ClassVar[int]
    NODES_RANKED_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.PromptTokens]
    loss_values: _containers.RepeatedScalarFieldContainer[float]
    rows: _containers.RepeatedCompositeFieldContainer[NodeRow]
    token_attribution: _containers.RepeatedCompositeFieldContainer[PositionValues]
    bias_direct_effect: _containers.RepeatedScalarFieldContainer[float]
    constant: _containers.RepeatedScalarFieldContainer[float]
    loss_position: int
    nodes_ranked: int
    def __init__(self, model: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.PromptTokens, _Mapping]]] = ..., loss_values: _Optional[_Iterable[float]] = ..., rows: _Optional[_Iterable[_Union[NodeRow, _Mapping]]] = ..., token_attribution: _Optional[_Iterable[_Union[PositionValues, _Mapping]]] = ..., bias_direct_effect: _Optional[_Iterable[float]] = ..., constant: _Optional[_Iterable[float]] = ..., loss_position: _Optional[int] = ..., nodes_ranked: _Optional[int] = ...) -> None: ...
