from tdb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limit(_message.Message):
    __slots__ = ("name", "int_value", "float_value", "bool_value", "text_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    int_value: int
    float_value: float
    bool_value: bool
    text_value: str
    def __init__(self, name: _Optional[str] = ..., int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., text_value: _Optional[str] = ...) -> None: ...

class ModelCapabilities(_message.Message):
    __slots__ = ("name", "architecture", "source", "device", "dtype", "is_default", "n_layers", "n_ctx", "d_model", "d_vocab", "saes", "limits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    N_CTX_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    D_VOCAB_FIELD_NUMBER: _ClassVar[int]
    SAES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    source: str
    device: str
    dtype: str
    is_default: bool
    n_layers: int
    n_ctx: int
    d_model: int
    d_vocab: int
    saes: _containers.RepeatedCompositeFieldContainer[_common_pb2.SaeInfo]
    limits: _containers.RepeatedCompositeFieldContainer[Limit]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., source: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., is_default: _Optional[bool] = ..., n_layers: _Optional[int] = ..., n_ctx: _Optional[int] = ..., d_model: _Optional[int] = ..., d_vocab: _Optional[int] = ..., saes: _Optional[_Iterable[_Union[_common_pb2.SaeInfo, _Mapping]]] = ..., limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("auth", "tls", "mutual_tls", "metrics", "explanation_store", "load_sae")
    AUTH_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    MUTUAL_TLS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_STORE_FIELD_NUMBER: _ClassVar[int]
    LOAD_SAE_FIELD_NUMBER: _ClassVar[int]
    auth: bool
    tls: bool
    mutual_tls: bool
    metrics: bool
    explanation_store: bool
    load_sae: bool
    def __init__(self, auth: _Optional[bool] = ..., tls: _Optional[bool] = ..., mutual_tls: _Optional[bool] = ..., metrics: _Optional[bool] = ..., explanation_store: _Optional[bool] = ..., load_sae: _Optional[bool] = ...) -> None: ...

class MethodInfo(_message.Message):
    __slots__ = ("name", "path", "input_type", "output_type", "client_streaming", "server_streaming")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STREAMING_FIELD_NUMBER: _ClassVar[int]
    SERVER_STREAMING_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    input_type: str
    output_type: str
    client_streaming: bool
    server_streaming: bool
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., input_type: _Optional[str] = ..., output_type: _Optional[str] = ..., client_streaming: _Optional[bool] = ..., server_streaming: _Optional[bool] = ...) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("name", "methods")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    name: str
    methods: _containers.RepeatedCompositeFieldContainer[MethodInfo]
    def __init__(self, name: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ...) -> None: ...

class ServerInfoResponse(_message.Message):
    __slots__ = ("version", "library_versions", "models", "default_model", "features", "services", "server_limits")
    class LibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    SERVER_LIMITS_FIELD_NUMBER: _ClassVar[int]
    version: str
    library_versions: _containers.ScalarMap[str, str]
    models: _containers.RepeatedCompositeFieldContainer[ModelCapabilities]
    default_model: str
    features: Features
    services: _containers.RepeatedCompositeFieldContainer[ServiceInfo]
    server_limits: _containers.RepeatedCompositeFieldContainer[Limit]
    def __init__(self, version: _Optional[str] = ..., library_versions: _Optional[_Mapping[str, str]] = ..., models: _Optional[_Iterable[_Union[ModelCapabilities, _Mapping]]] = ..., default_model: _Optional[str] = ..., features: _Optional[_Union[Features, _Mapping]] = ..., services: _Optional[_Iterable[_Union[ServiceInfo, _Mapping]]] = ..., server_limits: _Optional[_Iterable[_Union[Limit, _Mapping]]] = ...) -> None: ...
