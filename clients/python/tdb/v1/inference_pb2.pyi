from tdb.v1 import attribution_pb2 as _attribution_pb2
from tdb.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SweepBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWEEP_BY_UNSPECIFIED: _ClassVar[SweepBy]
    SWEEP_BY_POSITION: _ClassVar[SweepBy]
    SWEEP_BY_HEAD: _ClassVar[SweepBy]

class PatchMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PATCH_METHOD_UNSPECIFIED: _ClassVar[PatchMethod]
    PATCH_METHOD_EXACT: _ClassVar[PatchMethod]
    PATCH_METHOD_ATTRIBUTION: _ClassVar[PatchMethod]

class LensScale(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LENS_SCALE_UNSPECIFIED: _ClassVar[LensScale]
    LENS_SCALE_RECOMPUTED: _ClassVar[LensScale]
    LENS_SCALE_FROZEN: _ClassVar[LensScale]

class GenerateScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATE_SCOPE_UNSPECIFIED: _ClassVar[GenerateScope]
    GENERATE_SCOPE_ALL: _ClassVar[GenerateScope]
    GENERATE_SCOPE_PROMPT: _ClassVar[GenerateScope]
    GENERATE_SCOPE_GENERATED: _ClassVar[GenerateScope]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_MAX_NEW_TOKENS: _ClassVar[StopReason]
    STOP_REASON_EOS: _ClassVar[StopReason]
    STOP_REASON_STOP_TOKEN: _ClassVar[StopReason]
    STOP_REASON_STOP_STRING: _ClassVar[StopReason]
SWEEP_BY_UNSPECIFIED: SweepBy
SWEEP_BY_POSITION: SweepBy
SWEEP_BY_HEAD: SweepBy
PATCH_METHOD_UNSPECIFIED: PatchMethod
PATCH_METHOD_EXACT: PatchMethod
PATCH_METHOD_ATTRIBUTION: PatchMethod
LENS_SCALE_UNSPECIFIED: LensScale
LENS_SCALE_RECOMPUTED: LensScale
LENS_SCALE_FROZEN: LensScale
GENERATE_SCOPE_UNSPECIFIED: GenerateScope
GENERATE_SCOPE_ALL: GenerateScope
GENERATE_SCOPE_PROMPT: GenerateScope
GENERATE_SCOPE_GENERATED: GenerateScope
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_MAX_NEW_TOKENS: StopReason
STOP_REASON_EOS: StopReason
STOP_REASON_STOP_TOKEN: StopReason
STOP_REASON_STOP_STRING: StopReason

class ForwardRequest(_message.Message):
    __slots__ = ("model", "prompts", "captures", "interventions", "sources", "references", "logit_positions", "top_k", "prepend_bos", "loss", "grad_captures", "freeze_norm_scale")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    LOGIT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_CAPTURES_FIELD_NUMBER: _ClassVar[int]
    FREEZE_NORM_SCALE_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Capture]
    interventions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Intervention]
    sources: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    references: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    logit_positions: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    prepend_bos: bool
    loss: _attribution_pb2.Loss
    grad_captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Capture]
    freeze_norm_scale: bool
    def __init__(self, model: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.Capture, _Mapping]]] = ..., interventions: _Optional[_Iterable[_Union[_common_pb2.Intervention, _Mapping]]] = ..., sources: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., references: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., logit_positions: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., prepend_bos: _Optional[bool] = ..., loss: _Optional[_Union[_attribution_pb2.Loss, _Mapping]] = ..., grad_captures: _Optional[_Iterable[_Union[_common_pb2.Capture, _Mapping]]] = ..., freeze_norm_scale: _Optional[bool] = ...) -> None: ...

class ForwardHeader(_message.Message):
    __slots__ = ("model", "prompts", "captures", "top_logits", "grad_captures", "loss_values")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGITS_FIELD_NUMBER: _ClassVar[int]
    GRAD_CAPTURES_FIELD_NUMBER: _ClassVar[int]
    LOSS_VALUES_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.PromptTokens]
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.CaptureResult]
    top_logits: _containers.RepeatedCompositeFieldContainer[_common_pb2.PromptTopLogits]
    grad_captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.CaptureResult]
    loss_values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.PromptTokens, _Mapping]]] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.CaptureResult, _Mapping]]] = ..., top_logits: _Optional[_Iterable[_Union[_common_pb2.PromptTopLogits, _Mapping]]] = ..., grad_captures: _Optional[_Iterable[_Union[_common_pb2.CaptureResult, _Mapping]]] = ..., loss_values: _Optional[_Iterable[float]] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ForwardHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[ForwardHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class AblateRequest(_message.Message):
    __slots__ = ("model", "prompt", "sets", "position", "target", "distractor", "top_k", "captures", "sources", "references", "prepend_bos", "loss", "grad_captures", "freeze_norm_scale")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DISTRACTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_CAPTURES_FIELD_NUMBER: _ClassVar[int]
    FREEZE_NORM_SCALE_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: _common_pb2.Prompt
    sets: _containers.RepeatedCompositeFieldContainer[_common_pb2.InterventionSet]
    position: int
    target: _common_pb2.Tokens
    distractor: _common_pb2.Tokens
    top_k: int
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Capture]
    sources: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    references: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    prepend_bos: bool
    loss: _attribution_pb2.Loss
    grad_captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Capture]
    freeze_norm_scale: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., sets: _Optional[_Iterable[_Union[_common_pb2.InterventionSet, _Mapping]]] = ..., position: _Optional[int] = ..., target: _Optional[_Union[_common_pb2.Tokens, _Mapping]] = ..., distractor: _Optional[_Union[_common_pb2.Tokens, _Mapping]] = ..., top_k: _Optional[int] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.Capture, _Mapping]]] = ..., sources: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., references: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., prepend_bos: _Optional[bool] = ..., loss: _Optional[_Union[_attribution_pb2.Loss, _Mapping]] = ..., grad_captures: _Optional[_Iterable[_Union[_common_pb2.Capture, _Mapping]]] = ..., freeze_norm_scale: _Optional[bool] = ...) -> None: ...

class AblateRow(_message.Message):
    __slots__ = ("name", "top", "logit_diff", "logit_diff_change", "kl_from_baseline", "target_prob")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DIFF_CHANGE_FIELD_NUMBER: _ClassVar[int]
    KL_FROM_BASELINE_FIELD_NUMBER: _ClassVar[int]
    TARGET_PROB_FIELD_NUMBER: _ClassVar[int]
    name: str
    top: _common_pb2.TopLogits
    logit_diff: float
    logit_diff_change: float
    kl_from_baseline: float
    target_prob: float
    def __init__(self, name: _Optional[str] = ..., top: _Optional[_Union[_common_pb2.TopLogits, _Mapping]] = ..., logit_diff: _Optional[float] = ..., logit_diff_change: _Optional[float] = ..., kl_from_baseline: _Optional[float] = ..., target_prob: _Optional[float] = ...) -> None: ...

class AblateHeader(_message.Message):
    __slots__ = ("model", "prompt", "position", "rows", "captures", "target_ids", "distractor_ids", "grad_captures", "loss_values")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    TARGET_IDS_FIELD_NUMBER: _ClassVar[int]
    DISTRACTOR_IDS_FIELD_NUMBER: _ClassVar[int]
    GRAD_CAPTURES_FIELD_NUMBER: _ClassVar[int]
    LOSS_VALUES_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: _common_pb2.PromptTokens
    position: int
    rows: _containers.RepeatedCompositeFieldContainer[AblateRow]
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.CaptureResult]
    target_ids: _containers.RepeatedScalarFieldContainer[int]
    distractor_ids: _containers.RepeatedScalarFieldContainer[int]
    grad_captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.CaptureResult]
    loss_values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.PromptTokens, _Mapping]] = ..., position: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[AblateRow, _Mapping]]] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.CaptureResult, _Mapping]]] = ..., target_ids: _Optional[_Iterable[int]] = ..., distractor_ids: _Optional[_Iterable[int]] = ..., grad_captures: _Optional[_Iterable[_Union[_common_pb2.CaptureResult, _Mapping]]] = ..., loss_values: _Optional[_Iterable[float]] = ...) -> None: ...

class AblateResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AblateHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[AblateHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class PatchSweepRequest(_message.Message):
    __slots__ = ("model", "clean", "corrupted", "site", "target", "distractor", "by", "positions", "layers", "position", "prepend_bos", "method")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLEAN_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DISTRACTOR_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model: str
    clean: _common_pb2.Prompt
    corrupted: _common_pb2.Prompt
    site: str
    target: _common_pb2.Tokens
    distractor: _common_pb2.Tokens
    by: SweepBy
    positions: _containers.RepeatedScalarFieldContainer[int]
    layers: _containers.RepeatedScalarFieldContainer[int]
    position: int
    prepend_bos: bool
    method: PatchMethod
    def __init__(self, model: _Optional[str] = ..., clean: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., corrupted: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., site: _Optional[str] = ..., target: _Optional[_Union[_common_pb2.Tokens, _Mapping]] = ..., distractor: _Optional[_Union[_common_pb2.Tokens, _Mapping]] = ..., by: _Optional[_Union[SweepBy, str]] = ..., positions: _Optional[_Iterable[int]] = ..., layers: _Optional[_Iterable[int]] = ..., position: _Optional[int] = ..., prepend_bos: _Optional[bool] = ..., method: _Optional[_Union[PatchMethod, str]] = ...) -> None: ...

class PatchSweepResponse(_message.Message):
    __slots__ = ("model", "site", "by", "layers", "columns", "column_labels", "recovered", "logit_diffs", "clean_logit_diff", "corrupted_logit_diff", "clean", "corrupted", "method")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    COLUMN_LABELS_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    LOGIT_DIFFS_FIELD_NUMBER: _ClassVar[int]
    CLEAN_LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    CLEAN_FIELD_NUMBER: _ClassVar[int]
    CORRUPTED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model: str
    site: str
    by: SweepBy
    layers: _containers.RepeatedScalarFieldContainer[int]
    columns: _containers.RepeatedScalarFieldContainer[int]
    column_labels: _containers.RepeatedScalarFieldContainer[str]
    recovered: _common_pb2.Tensor
    logit_diffs: _common_pb2.Tensor
    clean_logit_diff: float
    corrupted_logit_diff: float
    clean: _common_pb2.PromptTokens
    corrupted: _common_pb2.PromptTokens
    method: PatchMethod
    def __init__(self, model: _Optional[str] = ..., site: _Optional[str] = ..., by: _Optional[_Union[SweepBy, str]] = ..., layers: _Optional[_Iterable[int]] = ..., columns: _Optional[_Iterable[int]] = ..., column_labels: _Optional[_Iterable[str]] = ..., recovered: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., logit_diffs: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., clean_logit_diff: _Optional[float] = ..., corrupted_logit_diff: _Optional[float] = ..., clean: _Optional[_Union[_common_pb2.PromptTokens, _Mapping]] = ..., corrupted: _Optional[_Union[_common_pb2.PromptTokens, _Mapping]] = ..., method: _Optional[_Union[PatchMethod, str]] = ...) -> None: ...

class LogitLensRequest(_message.Message):
    __slots__ = ("model", "prompt", "site", "layers", "positions", "top_k", "scale", "prepend_bos")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: _common_pb2.Prompt
    site: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    top_k: int
    scale: LensScale
    prepend_bos: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., site: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., positions: _Optional[_Iterable[int]] = ..., top_k: _Optional[int] = ..., scale: _Optional[_Union[LensScale, str]] = ..., prepend_bos: _Optional[bool] = ...) -> None: ...

class LensCell(_message.Message):
    __slots__ = ("layer", "position", "token_ids", "tokens", "logits", "probs")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    position: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    logits: _containers.RepeatedScalarFieldContainer[float]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, layer: _Optional[int] = ..., position: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., logits: _Optional[_Iterable[float]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class LogitLensResponse(_message.Message):
    __slots__ = ("model", "prompt", "site", "layers", "positions", "cells", "scale")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: _common_pb2.PromptTokens
    site: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    cells: _containers.RepeatedCompositeFieldContainer[LensCell]
    scale: LensScale
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.PromptTokens, _Mapping]] = ..., site: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., positions: _Optional[_Iterable[int]] = ..., cells: _Optional[_Iterable[_Union[LensCell, _Mapping]]] = ..., scale: _Optional[_Union[LensScale, str]] = ...) -> None: ...

class SteerLatent(_message.Message):
    __slots__ = ("sae", "latent", "coeff", "positions")
    SAE_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    COEFF_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    sae: str
    latent: int
    coeff: float
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sae: _Optional[str] = ..., latent: _Optional[int] = ..., coeff: _Optional[float] = ..., positions: _Optional[_Iterable[int]] = ...) -> None: ...

class ClampLatent(_message.Message):
    __slots__ = ("sae", "latent", "value", "positions")
    SAE_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    sae: str
    latent: int
    value: float
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sae: _Optional[str] = ..., latent: _Optional[int] = ..., value: _Optional[float] = ..., positions: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateEdit(_message.Message):
    __slots__ = ("scope", "intervention", "steer_latent", "clamp_latent")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    INTERVENTION_FIELD_NUMBER: _ClassVar[int]
    STEER_LATENT_FIELD_NUMBER: _ClassVar[int]
    CLAMP_LATENT_FIELD_NUMBER: _ClassVar[int]
    scope: GenerateScope
    intervention: _common_pb2.Intervention
    steer_latent: SteerLatent
    clamp_latent: ClampLatent
    def __init__(self, scope: _Optional[_Union[GenerateScope, str]] = ..., intervention: _Optional[_Union[_common_pb2.Intervention, _Mapping]] = ..., steer_latent: _Optional[_Union[SteerLatent, _Mapping]] = ..., clamp_latent: _Optional[_Union[ClampLatent, _Mapping]] = ...) -> None: ...

class GenerateSet(_message.Message):
    __slots__ = ("name", "edits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    edits: _containers.RepeatedCompositeFieldContainer[GenerateEdit]
    def __init__(self, name: _Optional[str] = ..., edits: _Optional[_Iterable[_Union[GenerateEdit, _Mapping]]] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "prompt", "sets", "max_new_tokens", "sampling", "stop_strings", "stop_token_ids", "stop_at_eos", "top_k", "captures", "prepend_bos")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    STOP_STRINGS_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_EOS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: _common_pb2.Prompt
    sets: _containers.RepeatedCompositeFieldContainer[GenerateSet]
    max_new_tokens: int
    sampling: Sampling
    stop_strings: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    stop_at_eos: bool
    top_k: int
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.Capture]
    prepend_bos: bool
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., sets: _Optional[_Iterable[_Union[GenerateSet, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., stop_strings: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., stop_at_eos: _Optional[bool] = ..., top_k: _Optional[int] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.Capture, _Mapping]]] = ..., prepend_bos: _Optional[bool] = ...) -> None: ...

class TokenChoice(_message.Message):
    __slots__ = ("token_id", "token", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class GenerateStart(_message.Message):
    __slots__ = ("model", "prompt", "names", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: _common_pb2.PromptTokens
    names: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.PromptTokens, _Mapping]] = ..., names: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRowStep(_message.Message):
    __slots__ = ("active", "token", "top", "captures", "finished")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    active: bool
    token: TokenChoice
    top: _containers.RepeatedCompositeFieldContainer[TokenChoice]
    captures: _containers.RepeatedCompositeFieldContainer[_common_pb2.CaptureResult]
    finished: StopReason
    def __init__(self, active: _Optional[bool] = ..., token: _Optional[_Union[TokenChoice, _Mapping]] = ..., top: _Optional[_Iterable[_Union[TokenChoice, _Mapping]]] = ..., captures: _Optional[_Iterable[_Union[_common_pb2.CaptureResult, _Mapping]]] = ..., finished: _Optional[_Union[StopReason, str]] = ...) -> None: ...

class GenerateStep(_message.Message):
    __slots__ = ("step", "position", "rows")
    STEP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    step: int
    position: int
    rows: _containers.RepeatedCompositeFieldContainer[GenerateRowStep]
    def __init__(self, step: _Optional[int] = ..., position: _Optional[int] = ..., rows: _Optional[_Iterable[_Union[GenerateRowStep, _Mapping]]] = ...) -> None: ...

class GenerateRowResult(_message.Message):
    __slots__ = ("name", "token_ids", "text", "stop_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    stop_reason: StopReason
    def __init__(self, name: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., stop_reason: _Optional[_Union[StopReason, str]] = ...) -> None: ...

class GenerateFinish(_message.Message):
    __slots__ = ("rows", "steps", "seconds")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[GenerateRowResult]
    steps: int
    seconds: float
    def __init__(self, rows: _Optional[_Iterable[_Union[GenerateRowResult, _Mapping]]] = ..., steps: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("start", "step", "finish")
    START_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    start: GenerateStart
    step: GenerateStep
    finish: GenerateFinish
    def __init__(self, start: _Optional[_Union[GenerateStart, _Mapping]] = ..., step: _Optional[_Union[GenerateStep, _Mapping]] = ..., finish: _Optional[_Union[GenerateFinish, _Mapping]] = ...) -> None: ...
