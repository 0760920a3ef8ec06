from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]

class TopKMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOP_K_MODE_UNSPECIFIED: _ClassVar[TopKMode]
    TOP_K_MODE_LARGEST: _ClassVar[TopKMode]
    TOP_K_MODE_SMALLEST: _ClassVar[TopKMode]
    TOP_K_MODE_ABS: _ClassVar[TopKMode]

class Pass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PASS_UNSPECIFIED: _ClassVar[Pass]
    PASS_FORWARD: _ClassVar[Pass]
    PASS_BACKWARD: _ClassVar[Pass]

class NodeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_KIND_UNSPECIFIED: _ClassVar[NodeKind]
    NODE_KIND_EMBEDDING: _ClassVar[NodeKind]
    NODE_KIND_MLP_NEURON: _ClassVar[NodeKind]
    NODE_KIND_ATTN_HEAD: _ClassVar[NodeKind]
    NODE_KIND_ATTN_HEAD_PAIR: _ClassVar[NodeKind]
    NODE_KIND_SAE_LATENT: _ClassVar[NodeKind]
    NODE_KIND_UNIT: _ClassVar[NodeKind]
    NODE_KIND_VECTOR: _ClassVar[NodeKind]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT64: DType
DTYPE_INT64: DType
DTYPE_INT32: DType
DTYPE_BOOL: DType
TOP_K_MODE_UNSPECIFIED: TopKMode
TOP_K_MODE_LARGEST: TopKMode
TOP_K_MODE_SMALLEST: TopKMode
TOP_K_MODE_ABS: TopKMode
PASS_UNSPECIFIED: Pass
PASS_FORWARD: Pass
PASS_BACKWARD: Pass
NODE_KIND_UNSPECIFIED: NodeKind
NODE_KIND_EMBEDDING: NodeKind
NODE_KIND_MLP_NEURON: NodeKind
NODE_KIND_ATTN_HEAD: NodeKind
NODE_KIND_ATTN_HEAD_PAIR: NodeKind
NODE_KIND_SAE_LATENT: NodeKind
NODE_KIND_UNIT: NodeKind
NODE_KIND_VECTOR: NodeKind

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "stream_id")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    stream_id: int
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., stream_id: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("stream_id", "data")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    data: bytes
    def __init__(self, stream_id: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class PromptTokens(_message.Message):
    __slots__ = ("token_ids", "tokens")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("k", "mode")
    K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    k: int
    mode: TopKMode
    def __init__(self, k: _Optional[int] = ..., mode: _Optional[_Union[TopKMode, str]] = ...) -> None: ...

class Capture(_message.Message):
    __slots__ = ("site", "positions", "units", "top_k", "dtype")
    SITE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    site: str
    positions: _containers.RepeatedScalarFieldContainer[int]
    units: _containers.RepeatedScalarFieldContainer[int]
    top_k: TopK
    dtype: DType
    def __init__(self, site: _Optional[str] = ..., positions: _Optional[_Iterable[int]] = ..., units: _Optional[_Iterable[int]] = ..., top_k: _Optional[_Union[TopK, _Mapping]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class CaptureResult(_message.Message):
    __slots__ = ("site", "dims", "values", "indices", "positions", "units")
    SITE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    site: str
    dims: _containers.RepeatedScalarFieldContainer[str]
    values: Tensor
    indices: Tensor
    positions: Tensor
    units: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, site: _Optional[str] = ..., dims: _Optional[_Iterable[str]] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ..., positions: _Optional[_Union[Tensor, _Mapping]] = ..., units: _Optional[_Iterable[int]] = ...) -> None: ...

class TopLogits(_message.Message):
    __slots__ = ("position", "token_ids", "tokens", "logits", "probs")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    logits: _containers.RepeatedScalarFieldContainer[float]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., logits: _Optional[_Iterable[float]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class PromptTopLogits(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedCompositeFieldContainer[TopLogits]
    def __init__(self, positions: _Optional[_Iterable[_Union[TopLogits, _Mapping]]] = ...) -> None: ...

class ZeroOp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetValueOp(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: float
    def __init__(self, value: _Optional[float] = ...) -> None: ...

class ScaleOp(_message.Message):
    __slots__ = ("factor",)
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    factor: float
    def __init__(self, factor: _Optional[float] = ...) -> None: ...

class AddOp(_message.Message):
    __slots__ = ("vector", "coeff")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    COEFF_FIELD_NUMBER: _ClassVar[int]
    vector: Tensor
    coeff: float
    def __init__(self, vector: _Optional[_Union[Tensor, _Mapping]] = ..., coeff: _Optional[float] = ...) -> None: ...

class MeanOverPositionsOp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MeanOverReferenceOp(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PatchFromOp(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: int
    def __init__(self, source: _Optional[int] = ...) -> None: ...

class Intervention(_message.Message):
    __slots__ = ("site", "positions", "units", "key_positions", "zero", "set_value", "set_tensor", "scale", "add", "mean_over_positions", "mean_over_reference", "patch")
    SITE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    PASS_FIELD_NUMBER: _ClassVar[int]
    KEY_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    ZERO_FIELD_NUMBER: _ClassVar[int]
    SET_VALUE_FIELD_NUMBER: _ClassVar[int]
    SET_TENSOR_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    MEAN_OVER_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    MEAN_OVER_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    site: str
    positions: _containers.RepeatedScalarFieldContainer[int]
    units: _containers.RepeatedScalarFieldContainer[int]
    key_positions: _containers.RepeatedScalarFieldContainer[int]
    zero: ZeroOp
    set_value: SetValueOp
    set_tensor: Tensor
    scale: ScaleOp
    add: AddOp
    mean_over_positions: MeanOverPositionsOp
    mean_over_reference: MeanOverReferenceOp
    patch: PatchFromOp
    def __init__(self, site: _Optional[str] = ..., positions: _Optional[_Iterable[int]] = ..., units: _Optional[_Iterable[int]] = ..., key_positions: _Optional[_Iterable[int]] = ..., zero: _Optional[_Union[ZeroOp, _Mapping]] = ..., set_value: _Optional[_Union[SetValueOp, _Mapping]] = ..., set_tensor: _Optional[_Union[Tensor, _Mapping]] = ..., scale: _Optional[_Union[ScaleOp, _Mapping]] = ..., add: _Optional[_Union[AddOp, _Mapping]] = ..., mean_over_positions: _Optional[_Union[MeanOverPositionsOp, _Mapping]] = ..., mean_over_reference: _Optional[_Union[MeanOverReferenceOp, _Mapping]] = ..., patch: _Optional[_Union[PatchFromOp, _Mapping]] = ..., **kwargs) -> None: ...

class Tokens(_message.Message):
    __slots__ = ("strings", "ids")
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    strings: _containers.RepeatedScalarFieldContainer[str]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, strings: _Optional[_Iterable[str]] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class InterventionSet(_message.Message):
    __slots__ = ("name", "interventions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    interventions: _containers.RepeatedCompositeFieldContainer[Intervention]
    def __init__(self, name: _Optional[str] = ..., interventions: _Optional[_Iterable[_Union[Intervention, _Mapping]]] = ...) -> None: ...

class SaeInfo(_message.Message):
    __slots__ = ("id", "model", "site", "kind", "d_in", "d_sae", "input_norm", "k", "source", "sites")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    D_IN_FIELD_NUMBER: _ClassVar[int]
    D_SAE_FIELD_NUMBER: _ClassVar[int]
    INPUT_NORM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    site: str
    kind: str
    d_in: int
    d_sae: int
    input_norm: str
    k: int
    source: str
    sites: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., site: _Optional[str] = ..., kind: _Optional[str] = ..., d_in: _Optional[int] = ..., d_sae: _Optional[int] = ..., input_norm: _Optional[str] = ..., k: _Optional[int] = ..., source: _Optional[str] = ..., sites: _Optional[_Iterable[str]] = ...) -> None: ...
