from tdb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WeightViewKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHT_VIEW_KIND_UNSPECIFIED: _ClassVar[WeightViewKind]
    WEIGHT_VIEW_KIND_NEURON_LOGITS: _ClassVar[WeightViewKind]
    WEIGHT_VIEW_KIND_HEAD_OV: _ClassVar[WeightViewKind]
    WEIGHT_VIEW_KIND_HEAD_QK: _ClassVar[WeightViewKind]
WEIGHT_VIEW_KIND_UNSPECIFIED: WeightViewKind
WEIGHT_VIEW_KIND_NEURON_LOGITS: WeightViewKind
WEIGHT_VIEW_KIND_HEAD_OV: WeightViewKind
WEIGHT_VIEW_KIND_HEAD_QK: WeightViewKind

class WeightView(_message.Message):
    __slots__ = ("kind", "layer", "unit", "source_token", "destination_token")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    kind: WeightViewKind
    layer: int
    unit: int
    source_token: int
    destination_token: int
    def __init__(self, kind: _Optional[_Union[WeightViewKind, str]] = ..., layer: _Optional[int] = ..., unit: _Optional[int] = ..., source_token: _Optional[int] = ..., destination_token: _Optional[int] = ...) -> None: ...

class GetWeightsRequest(_message.Message):
    __slots__ = ("model", "names", "heads", "neurons", "dtype", "views")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    NEURONS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    model: str
    names: _containers.RepeatedScalarFieldContainer[str]
    heads: _containers.RepeatedScalarFieldContainer[int]
    neurons: _containers.RepeatedScalarFieldContainer[int]
    dtype: _common_pb2.DType
    views: _containers.RepeatedCompositeFieldContainer[WeightView]
    def __init__(self, model: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ..., heads: _Optional[_Iterable[int]] = ..., neurons: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[_common_pb2.DType, str]] = ..., views: _Optional[_Iterable[_Union[WeightView, _Mapping]]] = ...) -> None: ...

class Weight(_message.Message):
    __slots__ = ("name", "dims", "values", "kept")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    name: str
    dims: _containers.RepeatedScalarFieldContainer[str]
    values: _common_pb2.Tensor
    kept: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dims: _Optional[_Iterable[str]] = ..., values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., kept: _Optional[_Iterable[int]] = ...) -> None: ...

class GetWeightsHeader(_message.Message):
    __slots__ = ("model", "weights")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.RepeatedCompositeFieldContainer[Weight]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[Weight, _Mapping]]] = ...) -> None: ...

class GetWeightsResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: GetWeightsHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[GetWeightsHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "architecture", "source", "is_default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    source: str
    is_default: bool
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., source: _Optional[str] = ..., is_default: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("name", "kind", "layer", "dims", "sizes", "unit_dim", "meaning")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    UNIT_DIM_FIELD_NUMBER: _ClassVar[int]
    MEANING_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    layer: int
    dims: _containers.RepeatedScalarFieldContainer[str]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    unit_dim: str
    meaning: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., layer: _Optional[int] = ..., dims: _Optional[_Iterable[str]] = ..., sizes: _Optional[_Iterable[int]] = ..., unit_dim: _Optional[str] = ..., meaning: _Optional[str] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("name", "architecture", "source", "n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx", "device", "dtype", "sites", "bos_token_id", "eos_token_id", "saes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_HEADS_FIELD_NUMBER: _ClassVar[int]
    N_KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    D_HEAD_FIELD_NUMBER: _ClassVar[int]
    D_MLP_FIELD_NUMBER: _ClassVar[int]
    D_VOCAB_FIELD_NUMBER: _ClassVar[int]
    N_CTX_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    BOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    source: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    device: str
    dtype: str
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    bos_token_id: int
    eos_token_id: int
    saes: _containers.RepeatedCompositeFieldContainer[_common_pb2.SaeInfo]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., source: _Optional[str] = ..., n_layers: _Optional[int] = ..., n_heads: _Optional[int] = ..., n_kv_heads: _Optional[int] = ..., d_model: _Optional[int] = ..., d_head: _Optional[int] = ..., d_mlp: _Optional[int] = ..., d_vocab: _Optional[int] = ..., n_ctx: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ..., bos_token_id: _Optional[int] = ..., eos_token_id: _Optional[int] = ..., saes: _Optional[_Iterable[_Union[_common_pb2.SaeInfo, _Mapping]]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("model", "texts", "prepend_bos")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    prepend_bos: bool
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., prepend_bos: _Optional[bool] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.PromptTokens]
    def __init__(self, prompts: _Optional[_Iterable[_Union[_common_pb2.PromptTokens, _Mapping]]] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("model", "token_ids")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("text", "tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...
