from tdb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListSaesRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListSaesResponse(_message.Message):
    __slots__ = ("saes",)
    SAES_FIELD_NUMBER: _ClassVar[int]
    saes: _containers.RepeatedCompositeFieldContainer[_common_pb2.SaeInfo]
    def __init__(self, saes: _Optional[_Iterable[_Union[_common_pb2.SaeInfo, _Mapping]]] = ...) -> None: ...

class Activations(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _common_pb2.Tensor
    def __init__(self, values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class PromptList(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    def __init__(self, prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "sae", "prompts", "activations", "top_k", "dense", "prepend_bos")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    model: str
    sae: str
    prompts: PromptList
    activations: Activations
    top_k: int
    dense: bool
    prepend_bos: bool
    def __init__(self, model: _Optional[str] = ..., sae: _Optional[str] = ..., prompts: _Optional[_Union[PromptList, _Mapping]] = ..., activations: _Optional[_Union[Activations, _Mapping]] = ..., top_k: _Optional[int] = ..., dense: _Optional[bool] = ..., prepend_bos: _Optional[bool] = ...) -> None: ...

class EncodeHeader(_message.Message):
    __slots__ = ("model", "sae", "prompts", "top_values", "top_indices", "dense", "l0", "mse", "explained_variance", "mean_l0")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    TOP_VALUES_FIELD_NUMBER: _ClassVar[int]
    TOP_INDICES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    L0_FIELD_NUMBER: _ClassVar[int]
    MSE_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_L0_FIELD_NUMBER: _ClassVar[int]
    model: str
    sae: str
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.PromptTokens]
    top_values: _common_pb2.Tensor
    top_indices: _common_pb2.Tensor
    dense: _common_pb2.Tensor
    l0: _common_pb2.Tensor
    mse: _common_pb2.Tensor
    explained_variance: float
    mean_l0: float
    def __init__(self, model: _Optional[str] = ..., sae: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.PromptTokens, _Mapping]]] = ..., top_values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., top_indices: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., dense: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., l0: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., mse: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., explained_variance: _Optional[float] = ..., mean_l0: _Optional[float] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: EncodeHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[EncodeHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("model", "sae", "latents")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    sae: str
    latents: _common_pb2.Tensor
    def __init__(self, model: _Optional[str] = ..., sae: _Optional[str] = ..., latents: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("vectors",)
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    vectors: _common_pb2.Tensor
    def __init__(self, vectors: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class LoadSaeRequest(_message.Message):
    __slots__ = ("model", "id", "path", "site")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    model: str
    id: str
    path: str
    site: str
    def __init__(self, model: _Optional[str] = ..., id: _Optional[str] = ..., path: _Optional[str] = ..., site: _Optional[str] = ...) -> None: ...

class LoadSaeResponse(_message.Message):
    __slots__ = ("sae",)
    SAE_FIELD_NUMBER: _ClassVar[int]
    sae: _common_pb2.SaeInfo
    def __init__(self, sae: _Optional[_Union[_common_pb2.SaeInfo, _Mapping]] = ...) -> None: ...
