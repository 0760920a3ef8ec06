from tdb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ForwardRequest(_message.Message):
    __slots__ = ("model", "prompts", "captures", "interventions", "sources", "references", "logit_positions", "top_k", "prepend_bos")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    LOGIT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Capture]
    interventions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Intervention]
    sources: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    references: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    logit_positions: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    prepend_bos: bool
    def __init__(self, model: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.Capture, _Mapping]]] = ..., interventions: _Optional[_Iterable[_Union[_common_pb2.Intervention, _Mapping]]] = ..., sources: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., references: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., logit_positions: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., prepend_bos: _Optional[bool] = ...) -> None: ...

class ForwardHeader(_message.Message):
    __slots__ = ("model", "prompts", "captures", "top_logits")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.PromptTokens]
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.CaptureResult]
    top_logits: _containers.RepeatedCompositeFieldContainer[_common_pb2.PromptTopLogits]
    def __init__(self, model: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.PromptTokens, _Mapping]]] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.CaptureResult, _Mapping]]] = ..., top_logits: _Optional[_Iterable[_Union[_common_pb2.PromptTopLogits, _Mapping]]] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ForwardHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[ForwardHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...
