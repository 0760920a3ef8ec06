"""Pure converters between protobuf messages and domain specs/results. The one place they live.

Requests become frozen domain specs (``HasField`` becomes ``None``); domain results become
messages. Tensors are raw little-endian C-order bytes; large ones are handed to a
:class:`TensorSink`, which streams them as ~1 MiB :class:`TensorChunk` messages after the header
instead of inlining them, so no message approaches gRPC's 4 MiB default limit. The chunk messages
are written straight from slices of the tensor's own buffer (:meth:`TensorSink.encoded_chunks`):
one copy, into the bytes gRPC sends, and no per-chunk message objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import common_pb2 as cpb
from tdb.v1 import explain_pb2 as epb
from tdb.v1 import inference_pb2 as ipb
from tdb.v1 import model_pb2 as mpb
from tdb.v1 import sae_pb2 as spb
from tdb.v1 import server_pb2 as svpb
from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError
from tdb_core.explain import workflow
from tdb_core.explain.records import NodeRecords, neuron_record_to_json
from tdb_core.explain.store import StoredExplanation
from tdb_core.nodes import Node, NodeKind
from tdb_core.ops import ablate, generate, lens, patch_sweep, weights
from tdb_core.ops import attribute as attribution
from tdb_core.ops import encode as sae_encode
from tdb_core.ops.mine import MiningOptions
from tdb_core.runner import ModelRunner
from tdb_core.sae.attach import AttachedSae

CHUNK_BYTES = 1 << 20

_TORCH_TO_PB = {
    torch.float32: cpb.DTYPE_FLOAT32,
    torch.float16: cpb.DTYPE_FLOAT16,
    torch.bfloat16: cpb.DTYPE_BFLOAT16,
    torch.float64: cpb.DTYPE_FLOAT64,
    torch.int64: cpb.DTYPE_INT64,
    torch.int32: cpb.DTYPE_INT32,
    torch.bool: cpb.DTYPE_BOOL,
}
_PB_TO_TORCH = {v: k for k, v in _TORCH_TO_PB.items()}
assert sys.byteorder == "little", "tensor bytes are little-endian; big-endian hosts are unsupported"


def dtype_from_pb(d: cpb.DType) -> torch.dtype | None:
    """DTYPE_UNSPECIFIED -> None; float dtypes map to torch dtypes."""
    if d == cpb.DTYPE_UNSPECIFIED:
        return None
    if d not in _PB_TO_TORCH:
        raise InvalidArgumentError(f"unknown dtype enum value {d}")
    return _PB_TO_TORCH[d]


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's elements as little-endian C-order bytes (bfloat16 as its raw 16 bits)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if t.numel() == 0:  # memoryview cannot cast a view with a zero in its shape
        return memoryview(b"")
    return t.numpy().data.cast("B")


class TensorSink:
    """Decides, per tensor, whether its bytes ride in the header or follow as chunks."""

    def __init__(self, inline_budget: int = CHUNK_BYTES, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.inline_left = inline_budget
        self.chunk_bytes = chunk_bytes
        self._pending: list[tuple[int, memoryview]] = []

    def put(self, msg: cpb.Tensor, t: torch.Tensor) -> cpb.Tensor:
        if t.dtype not in _TORCH_TO_PB:
            raise TypeError(f"cannot send dtype {t.dtype}")
        msg.dtype = _TORCH_TO_PB[t.dtype]
        msg.shape[:] = list(t.shape)
        data = tensor_bytes(t)
        if data.nbytes <= self.inline_left:
            msg.data = data.tobytes()
            self.inline_left -= data.nbytes
        else:
            msg.stream_id = len(self._pending) + 1
            self._pending.append((msg.stream_id, data))
        return msg

    def pieces(self) -> Iterator[tuple[int, memoryview]]:
        """``(stream_id, bytes)`` of every chunk, in order: slices of the tensors' buffers."""
        for stream_id, data in self._pending:
            for start in range(0, data.nbytes, self.chunk_bytes):
                yield stream_id, data[start : start + self.chunk_bytes]

    def chunks(self) -> Iterator[cpb.TensorChunk]:
        for stream_id, piece in self.pieces():
            yield cpb.TensorChunk(stream_id=stream_id, data=piece.tobytes())

    def encoded_chunks(self, response: type[Message]) -> Iterator[bytes]:
        """The chunks as serialized ``response`` messages (its ``chunk`` field set), each built
        by one copy of a slice of the tensor's buffer into the bytes gRPC sends. They are
        byte-identical to ``response(chunk=chunk).SerializeToString()`` for each of
        :meth:`chunks`; the server's interceptor passes ``bytes`` responses through unchanged."""
        outer_tag = _key(response.DESCRIPTOR.fields_by_name["chunk"].number, 2)
        for stream_id, piece in self.pieces():
            inner = _key(1, 0) + _varint(stream_id) if stream_id else b""
            if piece.nbytes:
                inner += _key(2, 2) + _varint(piece.nbytes)
            size = len(inner) + piece.nbytes
            yield b"".join((outer_tag, _varint(size), inner, piece))

    @property
    def streamed_bytes(self) -> int:
        return sum(d.nbytes for _, d in self._pending)


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def tensor_from_pb(msg: cpb.Tensor, what: str = "tensor") -> torch.Tensor:
    """A request tensor (inline data only), validated: dtype known, byte count matches the shape."""
    dtype = dtype_from_pb(msg.dtype)
    if dtype is None:
        raise InvalidArgumentError(f"{what} has no dtype")
    if msg.HasField("stream_id"):
        raise InvalidArgumentError(f"{what}: request tensors must carry their data inline")
    shape = tuple(int(s) for s in msg.shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    checks.tensor_data(shape, len(msg.data), itemsize, str(dtype).removeprefix("torch."), what)
    if dtype == torch.bfloat16:
        arr = np.frombuffer(msg.data, dtype=np.int16).reshape(shape)
        return torch.from_numpy(arr.copy()).view(torch.bfloat16)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    arr = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
    return torch.from_numpy(arr.copy())


# --------------------------------------------------------------------------------------------------
# Requests -> specs


def prompt_from_pb(p: cpb.Prompt) -> specs.Prompt:
    which = p.WhichOneof("input")
    if which == "text":
        return specs.Prompt(text=p.text)
    if which == "token_ids":
        return specs.Prompt(token_ids=tuple(p.token_ids.ids))
    raise InvalidArgumentError("a prompt has neither text nor token ids")


def _top_k_from_pb(t: cpb.TopK) -> specs.TopK:
    mode = {
        cpb.TOP_K_MODE_UNSPECIFIED: specs.TopKMode.LARGEST,
        cpb.TOP_K_MODE_LARGEST: specs.TopKMode.LARGEST,
        cpb.TOP_K_MODE_SMALLEST: specs.TopKMode.SMALLEST,
        cpb.TOP_K_MODE_ABS: specs.TopKMode.ABS,
    }.get(t.mode)
    if mode is None:
        raise InvalidArgumentError(f"unknown top-k mode {t.mode}")
    return specs.TopK(k=t.k, mode=mode)


def capture_from_pb(c: cpb.Capture) -> specs.Capture:
    return specs.Capture(
        site=c.site,
        positions=tuple(c.positions) or None,
        units=tuple(c.units) or None,
        top_k=_top_k_from_pb(c.top_k) if c.HasField("top_k") else None,
        dtype=dtype_from_pb(c.dtype),
    )


def _op_from_pb(iv: cpb.Intervention) -> specs.Op:
    which = iv.WhichOneof("op")
    if which == "zero":
        return specs.Zero()
    if which == "set_value":
        return specs.SetValue(iv.set_value.value)
    if which == "set_tensor":
        return specs.SetTensor(tensor_from_pb(iv.set_tensor, "set_tensor operand"))
    if which == "scale":
        return specs.Scale(iv.scale.factor)
    if which == "add":
        return specs.AddVector(
            tensor_from_pb(iv.add.vector, "add vector"), iv.add.coeff if iv.add.coeff != 0 else 1.0
        )
    if which == "mean_over_positions":
        return specs.MeanOverPositions()
    if which == "mean_over_reference":
        return specs.MeanOverReference()
    if which == "patch":
        return specs.PatchFrom(iv.patch.source)
    raise InvalidArgumentError(
        f"intervention on {checks.quote(iv.site)} has no operation; set one of zero, "
        "set_value, set_tensor, scale, add, mean_over_positions, "
        "mean_over_reference, patch"
    )


def intervention_from_pb(iv: cpb.Intervention) -> specs.Intervention:
    pass_ = {
        cpb.PASS_UNSPECIFIED: specs.Pass.FORWARD,
        cpb.PASS_FORWARD: specs.Pass.FORWARD,
        cpb.PASS_BACKWARD: specs.Pass.BACKWARD,
    }.get(getattr(iv, "pass"))  # `pass` is a Python keyword
    if pass_ is None:
        raise InvalidArgumentError("unknown pass value")
    return specs.Intervention(
        site=iv.site,
        op=_op_from_pb(iv),
        positions=tuple(iv.positions) or None,
        units=tuple(iv.units) or None,
        pass_=pass_,
        key_positions=tuple(iv.key_positions) or None,
    )


def forward_spec_from_pb(r: ipb.ForwardRequest) -> specs.ForwardSpec:
    return specs.ForwardSpec(
        prompts=tuple(prompt_from_pb(p) for p in r.prompts),
        captures=tuple(capture_from_pb(c) for c in r.captures),
        interventions=tuple(intervention_from_pb(i) for i in r.interventions),
        sources=tuple(prompt_from_pb(p) for p in r.sources),
        references=tuple(prompt_from_pb(p) for p in r.references),
        logit_positions=tuple(r.logit_positions) or (-1,),
        top_k=r.top_k if r.HasField("top_k") else 10,
        prepend_bos=r.prepend_bos if r.HasField("prepend_bos") else None,
    )


def forward_spec_with_loss_from_pb(runner: ModelRunner, r: ipb.ForwardRequest) -> specs.ForwardSpec:
    """A Forward spec with its loss and gradient captures (token strings need the model)."""
    return dataclasses.replace(forward_spec_from_pb(r), **gradient_fields_from_pb(runner, r))


def gradient_fields_from_pb(
    runner: ModelRunner, r: ipb.ForwardRequest | ipb.AblateRequest
) -> dict[str, Any]:
    """The loss, grad_captures and freeze_norm_scale fields of a Forward or Ablate request."""
    return {
        "loss": loss_from_pb(runner, r.loss) if r.HasField("loss") else None,
        "grad_captures": tuple(capture_from_pb(c) for c in r.grad_captures),
        "freeze_norm_scale": r.freeze_norm_scale if r.HasField("freeze_norm_scale") else True,
    }


# --------------------------------------------------------------------------------------------------
# Results -> messages


def prompt_tokens_to_pb(p: specs.PromptTokens) -> cpb.PromptTokens:
    return cpb.PromptTokens(token_ids=list(p.token_ids), tokens=list(p.tokens))


def top_logits_to_pb(t: specs.TopLogits) -> cpb.TopLogits:
    return cpb.TopLogits(
        position=t.position,
        token_ids=list(t.token_ids),
        tokens=list(t.tokens),
        logits=list(t.logits),
        probs=list(t.probs),
    )


def capture_to_pb(c: specs.CaptureResult, sink: TensorSink) -> cpb.CaptureResult:
    msg = cpb.CaptureResult(site=c.site, dims=["batch", *c.dims], units=list(c.units or ()))
    sink.put(msg.values, c.values)
    if c.indices is not None:
        sink.put(msg.indices, c.indices)
    sink.put(msg.positions, c.positions)
    return msg


def forward_header_to_pb(model: str, r: specs.ForwardResult, sink: TensorSink) -> ipb.ForwardHeader:
    return ipb.ForwardHeader(
        model=model,
        prompts=[prompt_tokens_to_pb(p) for p in r.prompts],
        captures=[capture_to_pb(c, sink) for c in r.captures],
        top_logits=[
            cpb.PromptTopLogits(positions=[top_logits_to_pb(t) for t in per])
            for per in r.top_logits
        ],
        grad_captures=[capture_to_pb(c, sink) for c in r.grad_captures],
        loss_values=list(r.loss_values),
    )


def model_info_to_pb(runner: ModelRunner) -> mpb.GetModelInfoResponse:
    loaded, schema, dims = runner.loaded, runner.schema, runner.schema.dims
    model = loaded.adapter.model
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    sites = []
    for s in schema.sites:
        sizes = [-1 if d in ("pos", "q_pos", "k_pos") else schema.dim_size(s, d, 0) for d in s.dims]
        info = mpb.SiteInfo(
            name=s.name,
            kind=s.kind.key,
            dims=list(s.dims),
            sizes=sizes,
            unit_dim=s.kind.unit_dim or "",
            meaning=s.kind.meaning,
        )
        if s.layer is not None:
            info.layer = s.layer
        sites.append(info)
    msg = mpb.GetModelInfoResponse(
        name=loaded.name,
        architecture=arch,
        source=public_source(loaded.source),
        n_layers=dims.n_layers,
        n_heads=dims.n_heads,
        n_kv_heads=dims.n_kv_heads,
        d_model=dims.d_model,
        d_head=dims.d_head,
        d_mlp=dims.d_mlp,
        d_vocab=dims.d_vocab,
        n_ctx=dims.n_ctx,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        sites=sites,
    )
    msg.saes.extend(sae_info_to_pb(runner.name, a) for a in runner.saes.values())
    tok = loaded.tokenizer
    if tok.bos_token_id is not None:
        msg.bos_token_id = tok.bos_token_id
    if tok.eos_token_id is not None:
        msg.eos_token_id = tok.eos_token_id
    return msg


# --------------------------------------------------------------------------------------------------
# Ablate and patching


def tokens_from_pb(runner: ModelRunner, t: cpb.Tokens, what: str) -> tuple[int, ...]:
    """Token ids from strings (each must be exactly one token) and ids."""
    vocab = runner.schema.dims.d_vocab
    checks.at_most(
        len(t.strings) + len(t.ids), vocab, f"{what} tokens", hint="name each token at most once"
    )
    ids = [runner.tokens.single_token(s, what) for s in t.strings]
    return tuple(ids + list(t.ids))


def ablate_spec_from_pb(runner: ModelRunner, r: ipb.AblateRequest) -> ablate.AblateSpec:
    checks.present(r.prompt if r.HasField("prompt") else None, "prompt")
    return ablate.AblateSpec(
        prompt=prompt_from_pb(r.prompt),
        sets=tuple(
            ablate.InterventionSet(
                s.name or f"set{i}", tuple(intervention_from_pb(iv) for iv in s.interventions)
            )
            for i, s in enumerate(r.sets)
        ),
        position=r.position if r.HasField("position") else -1,
        target_ids=tokens_from_pb(runner, r.target, "target"),
        distractor_ids=tokens_from_pb(runner, r.distractor, "distractor"),
        top_k=r.top_k if r.HasField("top_k") else 10,
        captures=tuple(capture_from_pb(c) for c in r.captures),
        sources=tuple(prompt_from_pb(p) for p in r.sources),
        references=tuple(prompt_from_pb(p) for p in r.references),
        prepend_bos=r.prepend_bos if r.HasField("prepend_bos") else None,
        **gradient_fields_from_pb(runner, r),
    )


def ablate_header_to_pb(
    model: str, spec: ablate.AblateSpec, r: ablate.AblateResult, sink: TensorSink
) -> ipb.AblateHeader:
    rows = []
    for row in r.rows:
        msg = ipb.AblateRow(
            name=row.name, top=top_logits_to_pb(row.top), kl_from_baseline=row.kl_from_baseline
        )
        if row.logit_diff is not None:
            msg.logit_diff = row.logit_diff
            msg.logit_diff_change = row.logit_diff_change or 0.0
        if row.target_prob is not None:
            msg.target_prob = row.target_prob
        rows.append(msg)
    return ipb.AblateHeader(
        model=model,
        prompt=prompt_tokens_to_pb(r.prompt),
        position=r.position,
        rows=rows,
        captures=[capture_to_pb(c, sink) for c in r.captures],
        target_ids=list(spec.target_ids),
        distractor_ids=list(spec.distractor_ids),
        grad_captures=[capture_to_pb(c, sink) for c in r.grad_captures],
        loss_values=list(r.loss_values),
    )


_SWEEP_BY = {
    ipb.SWEEP_BY_UNSPECIFIED: patch_sweep.SweepBy.POSITION,
    ipb.SWEEP_BY_POSITION: patch_sweep.SweepBy.POSITION,
    ipb.SWEEP_BY_HEAD: patch_sweep.SweepBy.HEAD,
}


def patch_sweep_spec_from_pb(
    runner: ModelRunner, r: ipb.PatchSweepRequest
) -> patch_sweep.PatchSweepSpec:
    checks.present(r.clean if r.HasField("clean") else None, "clean prompt")
    checks.present(r.corrupted if r.HasField("corrupted") else None, "corrupted prompt")
    if r.by not in _SWEEP_BY:
        raise InvalidArgumentError(f"unknown sweep layout {r.by}")
    if r.method not in _PATCH_METHOD:
        raise InvalidArgumentError(f"unknown patching method {r.method}")
    return patch_sweep.PatchSweepSpec(
        clean=prompt_from_pb(r.clean),
        corrupted=prompt_from_pb(r.corrupted),
        site=r.site,
        target_ids=tokens_from_pb(runner, r.target, "target"),
        distractor_ids=tokens_from_pb(runner, r.distractor, "distractor"),
        by=_SWEEP_BY[r.by],
        positions=tuple(r.positions) or None,
        layers=tuple(r.layers) or None,
        position=r.position if r.HasField("position") else -1,
        prepend_bos=r.prepend_bos if r.HasField("prepend_bos") else None,
        method=_PATCH_METHOD[r.method],
    )


_PATCH_METHOD = {
    ipb.PATCH_METHOD_UNSPECIFIED: patch_sweep.Method.EXACT,
    ipb.PATCH_METHOD_EXACT: patch_sweep.Method.EXACT,
    ipb.PATCH_METHOD_ATTRIBUTION: patch_sweep.Method.ATTRIBUTION,
}


def patch_sweep_to_pb(model: str, r: patch_sweep.PatchSweepResult) -> ipb.PatchSweepResponse:
    sink = TensorSink(inline_budget=1 << 62)  # a grid is small: always inline
    msg = ipb.PatchSweepResponse(
        model=model,
        site=r.site,
        by=ipb.SWEEP_BY_HEAD if r.by is patch_sweep.SweepBy.HEAD else ipb.SWEEP_BY_POSITION,
        layers=list(r.layers),
        columns=list(r.columns),
        column_labels=list(r.column_labels),
        clean_logit_diff=r.clean_logit_diff,
        corrupted_logit_diff=r.corrupted_logit_diff,
        clean=prompt_tokens_to_pb(r.clean),
        corrupted=prompt_tokens_to_pb(r.corrupted),
        method=ipb.PATCH_METHOD_ATTRIBUTION
        if r.method is patch_sweep.Method.ATTRIBUTION
        else ipb.PATCH_METHOD_EXACT,
    )
    sink.put(msg.recovered, r.recovered.float())
    sink.put(msg.logit_diffs, r.logit_diffs.float())
    return msg


# --------------------------------------------------------------------------------------------------
# Attribution

_THROUGH = {
    apb.THROUGH_UNSPECIFIED: attribution.Through.QK,
    apb.THROUGH_Q: attribution.Through.Q,
    apb.THROUGH_K: attribution.Through.K,
    apb.THROUGH_QK: attribution.Through.QK,
    apb.THROUGH_V: attribution.Through.V,
}


def _opt(msg: Message, field: str, default: int) -> int:
    return getattr(msg, field) if msg.HasField(field) else default


def loss_from_pb(runner: ModelRunner, r: apb.AttributeRequest | apb.Loss) -> attribution.Loss:
    """The loss of an AttributeRequest, or of a Loss message (same oneof, same field names)."""
    which = r.WhichOneof("loss")
    if which == "logit_diff":
        m = r.logit_diff
        return attribution.LogitDiffLoss(
            tokens_from_pb(runner, m.target, "target"),
            tokens_from_pb(runner, m.distractor, "distractor"),
            _opt(m, "position", -1),
        )
    if which == "log_prob":
        lp = r.log_prob
        return attribution.LogProbLoss(
            tokens_from_pb(runner, lp.target, "target"), _opt(lp, "position", -1)
        )
    if which == "neuron":
        n = r.neuron
        return attribution.NeuronTrace(n.layer, n.neuron, _opt(n, "position", -1))
    if which == "head":
        h = r.head
        if h.through not in _THROUGH:
            raise InvalidArgumentError(f"unknown trace side {h.through}")
        return attribution.HeadTrace(
            h.layer,
            h.head,
            _opt(h, "query_position", -1),
            h.key_position if h.HasField("key_position") else None,
            _THROUGH[h.through],
        )
    if which == "latent":
        lt = r.latent
        return attribution.LatentTrace(lt.sae, lt.latent, _opt(lt, "position", -1))
    if which == "direction":
        d = r.direction
        return attribution.DirectionLoss(
            d.site, tensor_from_pb(d.vector, "direction vector").float(), _opt(d, "position", -1)
        )
    raise InvalidArgumentError(
        "a loss is needed: logit_diff, log_prob, neuron, head, latent or direction"
    )


def attribute_spec_from_pb(
    runner: ModelRunner, r: apb.AttributeRequest
) -> attribution.AttributeSpec:
    checks.present(r.prompt if r.HasField("prompt") else None, "prompt")
    return attribution.AttributeSpec(
        prompt=prompt_from_pb(r.prompt),
        loss=loss_from_pb(runner, r),
        second=prompt_from_pb(r.second_prompt) if r.HasField("second_prompt") else None,
        interventions=tuple(intervention_from_pb(i) for i in r.interventions),
        top_k=_opt(r, "top_k", 10),
        families=tuple(r.families),
        ig_steps=r.ig_steps,
        freeze_norm_scale=r.freeze_norm_scale if r.HasField("freeze_norm_scale") else True,
        node_tokens=_opt(r, "node_tokens", 5),
        prepend_bos=r.prepend_bos if r.HasField("prepend_bos") else None,
    )


def _token_scores_pb(ts: tuple[attribution.TokenScore, ...]) -> list[apb.TokenScore]:
    return [apb.TokenScore(token_id=t.token_id, token=t.token, score=t.score) for t in ts]


_NODE_KINDS: dict[NodeKind, cpb.NodeKind] = {
    NodeKind.EMBEDDING: cpb.NODE_KIND_EMBEDDING,
    NodeKind.MLP_NEURON: cpb.NODE_KIND_MLP_NEURON,
    NodeKind.ATTN_HEAD: cpb.NODE_KIND_ATTN_HEAD,
    NodeKind.ATTN_HEAD_PAIR: cpb.NODE_KIND_ATTN_HEAD_PAIR,
    NodeKind.SAE_LATENT: cpb.NODE_KIND_SAE_LATENT,
    NodeKind.UNIT: cpb.NODE_KIND_UNIT,
    NodeKind.VECTOR: cpb.NODE_KIND_VECTOR,
}
assert set(_NODE_KINDS) == set(NodeKind), "every node kind has its proto enum value"


def node_kind_to_pb(kind: NodeKind) -> cpb.NodeKind:
    return _NODE_KINDS[kind]


def node_to_pb(n: Node) -> apb.Node:
    """A node-table node: its key and kind, plus the flat fields of earlier releases."""
    kind = n.kind
    msg = apb.Node(
        key=n.key,
        kind=node_kind_to_pb(kind),
        family=str(kind),
        position=n.position if n.position is not None else 0,
        index=n.unit if n.unit is not None else 0,
        sae=n.sae_id or "",
        name=n.label,
    )
    if n.layer is not None and kind is not NodeKind.EMBEDDING:
        msg.layer = n.layer
    if n.key_position is not None:
        msg.key_position = n.key_position
    return msg


def attribute_to_pb(model: str, r: attribution.AttributeResult) -> apb.AttributeResponse:
    rows = [
        apb.NodeRow(
            node=node_to_pb(row.node),
            values=[apb.NodeValues(**v) for v in row.values],
            upvoted=_token_scores_pb(row.upvoted),
            downvoted=_token_scores_pb(row.downvoted),
            input_tokens=_token_scores_pb(row.input_tokens),
        )
        for row in r.rows
    ]
    return apb.AttributeResponse(
        model=model,
        prompts=[prompt_tokens_to_pb(p) for p in r.prompts],
        loss_values=list(r.loss_values),
        rows=rows,
        token_attribution=[apb.PositionValues(values=list(t)) for t in r.token_attribution],
        bias_direct_effect=list(r.bias_direct_effect),
        constant=list(r.constant),
        loss_position=r.loss_position,
        nodes_ranked=int(r.stats.get("nodes_ranked", 0)),
    )


# --------------------------------------------------------------------------------------------------
# SAEs


def sae_info_to_pb(model: str, att: AttachedSae) -> cpb.SaeInfo:
    sae = att.sae
    msg = cpb.SaeInfo(
        id=att.id,
        model=model,
        site=att.site.name,
        kind=sae.kind.value,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        input_norm=sae.input_norm.value,
        source=public_source(att.source),
        sites=list(att.site_names),
    )
    k = getattr(sae, "k", None)
    if isinstance(k, int):
        msg.k = k
    return msg


def encode_spec_from_pb(r: spb.EncodeRequest) -> sae_encode.EncodeSpec:
    which = r.WhichOneof("input")
    if which is None:
        raise InvalidArgumentError("Encode needs prompts or activations")
    return sae_encode.EncodeSpec(
        sae=r.sae,
        prompts=tuple(prompt_from_pb(p) for p in r.prompts.prompts) if which == "prompts" else (),
        activations=(
            tensor_from_pb(r.activations.values, "activations").float()
            if which == "activations"
            else None
        ),
        top_k=r.top_k if r.HasField("top_k") else 16,
        dense=r.dense,
        prepend_bos=r.prepend_bos if r.HasField("prepend_bos") else None,
    )


def encode_header_to_pb(
    model: str, sae_id: str, r: sae_encode.EncodeResult, sink: TensorSink
) -> spb.EncodeHeader:
    msg = spb.EncodeHeader(
        model=model,
        sae=sae_id,
        prompts=[prompt_tokens_to_pb(p) for p in r.prompts],
        explained_variance=r.explained_variance,
        mean_l0=r.mean_l0,
    )
    sink.put(msg.top_values, r.top_values.float())
    sink.put(msg.top_indices, r.top_indices.long())
    if r.dense is not None:
        sink.put(msg.dense, r.dense.float())
    sink.put(msg.l0, r.l0.long())
    sink.put(msg.mse, r.mse.float())
    return msg


# --------------------------------------------------------------------------------------------------
# Server capabilities


def limits_to_pb(values: Mapping[str, object]) -> list[svpb.Limit]:
    """Named limits (e.g. the fields of a ``Limits``) as messages; None leaves the value unset."""
    out = []
    for name, value in values.items():
        msg = svpb.Limit(name=name)
        if isinstance(value, bool):
            msg.bool_value = value
        elif isinstance(value, int):
            msg.int_value = value
        elif isinstance(value, float):
            msg.float_value = value
        elif value is not None:
            msg.text_value = str(value)
        out.append(msg)
    return out


def public_source(source: str) -> str:
    """Where a model or SAE came from, as clients see it: a hub id or a path relative to
    --sae-root as given, but an absolute local path by its last component only (the server's
    file system layout is not the client's business)."""
    if os.path.isabs(source):
        return os.path.basename(source.rstrip(os.sep)) or source
    return source


def model_capabilities_to_pb(runner: ModelRunner, is_default: bool) -> svpb.ModelCapabilities:
    info = model_info_to_pb(runner)
    limits: dict[str, object] = {
        f.name: getattr(runner.limits, f.name) for f in dataclasses.fields(runner.limits)
    }
    limits["max_text_bytes"] = runner.limits.max_text_bytes  # derived: measured before tokenizing
    limits["max_request_tokens"] = runner.limits.max_request_tokens
    return svpb.ModelCapabilities(
        name=info.name,
        architecture=info.architecture,
        source=info.source,
        device=info.device,
        dtype=info.dtype,
        is_default=is_default,
        n_layers=info.n_layers,
        n_ctx=info.n_ctx,
        d_model=info.d_model,
        d_vocab=info.d_vocab,
        saes=list(info.saes),
        limits=limits_to_pb(limits),
    )


def service_info_to_pb(full_name: str) -> svpb.ServiceInfo:
    """A service's RPCs, read from its descriptor in the default pool."""
    svc = descriptor_pool.Default().FindServiceByName(full_name)
    return svpb.ServiceInfo(
        name=svc.full_name,
        methods=[
            svpb.MethodInfo(
                name=m.name,
                path=f"/{svc.full_name}/{m.name}",
                input_type=m.input_type.full_name,
                output_type=m.output_type.full_name,
                client_streaming=m.client_streaming,
                server_streaming=m.server_streaming,
            )
            for m in svc.methods
        ],
    )


# --------------------------------------------------------------------------------------------------
# Explanations


def mining_from_pb(m: epb.MiningOptions) -> MiningOptions:
    d = MiningOptions()
    return MiningOptions(
        window_len=_opt(m, "window_len", d.window_len),
        top_k=_opt(m, "top_k", d.top_k),
        n_random=_opt(m, "n_random", d.n_random),
        max_windows=_opt(m, "max_windows", d.max_windows or 0) or None,
        batch_size=max(1, _opt(m, "batch_size", d.batch_size)),
        seed=_opt(m, "seed", d.seed),
    )


def records_to_pb(r: NodeRecords) -> epb.NodeRecords:
    def rec(a: Any) -> epb.ActivationRecord:
        return epb.ActivationRecord(tokens=list(a.tokens), activations=list(a.activations))

    return epb.NodeRecords(
        node=r.node_key,
        kind=r.kind.value,
        density=r.density,
        max_activation=r.max_activation,
        top=[rec(a) for a in r.record.most_positive_activation_records],
        random=[rec(a) for a in r.record.random_sample],
        n_positions=r.n_positions,
        neuron_record_json=json.dumps(neuron_record_to_json(r.record)),
    )


def explanation_to_pb(e: StoredExplanation) -> epb.Explanation:
    msg = epb.Explanation(
        model=e.model,
        sae=e.sae_id,
        node=e.node_key,
        method=e.method,
        explainer=e.explainer,
        explanation=e.explanation,
        score_reason=e.score_reason or "",
        scores_json=json.dumps(dict(e.scores)),
        records_used_json=json.dumps(dict(e.records_used)),
        created_at=e.created_at,
        updated_at=e.updated_at,
    )
    if e.score is not None:
        msg.score = e.score
    return msg


def explain_event_to_pb(e: workflow.Event) -> epb.ExplainNodeResponse:
    """A workflow event as an ExplainNode stream message (a skipped node is progress 'skipped')."""
    if isinstance(e, workflow.Progress):
        return epb.ExplainNodeResponse(
            progress=epb.ExplainProgress(
                node=e.node, phase=e.phase, done=e.done, total=e.total, message=e.message
            )
        )
    if isinstance(e, workflow.Skipped):
        return epb.ExplainNodeResponse(
            progress=epb.ExplainProgress(node=e.node, phase="skipped", message=e.reason)
        )
    return epb.ExplainNodeResponse(result=explanation_to_pb(e))


# --------------------------------------------------------------------------------------------------
# Logit lens and weights

_LENS_SCALE = {
    ipb.LENS_SCALE_UNSPECIFIED: lens.LensScale.RECOMPUTED,
    ipb.LENS_SCALE_RECOMPUTED: lens.LensScale.RECOMPUTED,
    ipb.LENS_SCALE_FROZEN: lens.LensScale.FROZEN,
}


def lens_spec_from_pb(r: ipb.LogitLensRequest) -> lens.LensSpec:
    checks.present(r.prompt if r.HasField("prompt") else None, "prompt")
    if r.scale not in _LENS_SCALE:
        raise InvalidArgumentError(f"unknown lens scale {r.scale}")
    return lens.LensSpec(
        prompt=prompt_from_pb(r.prompt),
        site=r.site or "hook_resid_post",
        layers=tuple(r.layers) or None,
        positions=tuple(r.positions) or None,
        top_k=r.top_k if r.HasField("top_k") else 5,
        scale=_LENS_SCALE[r.scale],
        prepend_bos=r.prepend_bos if r.HasField("prepend_bos") else None,
    )


def lens_to_pb(model: str, r: lens.LensResult) -> ipb.LogitLensResponse:
    return ipb.LogitLensResponse(
        model=model,
        prompt=prompt_tokens_to_pb(r.prompt),
        site=r.site,
        layers=list(r.layers),
        positions=list(r.positions),
        cells=[
            ipb.LensCell(
                layer=c.layer,
                position=c.position,
                token_ids=list(c.token_ids),
                tokens=list(c.tokens),
                logits=list(c.logits),
                probs=list(c.probs),
            )
            for c in r.cells
        ],
        scale=ipb.LENS_SCALE_FROZEN
        if r.scale is lens.LensScale.FROZEN
        else ipb.LENS_SCALE_RECOMPUTED,
    )


_VIEW_KIND = {
    mpb.WEIGHT_VIEW_KIND_NEURON_LOGITS: weights.ViewKind.NEURON_LOGITS,
    mpb.WEIGHT_VIEW_KIND_HEAD_OV: weights.ViewKind.HEAD_OV,
    mpb.WEIGHT_VIEW_KIND_HEAD_QK: weights.ViewKind.HEAD_QK,
}


def weights_spec_from_pb(r: mpb.GetWeightsRequest) -> weights.WeightsSpec:
    views = []
    for v in r.views:
        kind = _VIEW_KIND.get(v.kind)
        if kind is None:
            raise InvalidArgumentError(
                "a weight view needs a kind: neuron_logits, head_ov or head_qk"
            )
        views.append(
            weights.WeightView(
                kind,
                v.layer,
                v.unit,
                v.source_token if v.HasField("source_token") else None,
                v.destination_token if v.HasField("destination_token") else None,
            )
        )
    return weights.WeightsSpec(
        names=tuple(r.names),
        heads=tuple(r.heads) or None,
        neurons=tuple(r.neurons) or None,
        dtype=dtype_from_pb(r.dtype),
        views=tuple(views),
    )


def weights_header_to_pb(
    model: str, ws: tuple[weights.Weight, ...], sink: TensorSink
) -> mpb.GetWeightsHeader:
    out = []
    for w in ws:
        msg = mpb.Weight(name=w.name, dims=list(w.dims), kept=list(w.kept or ()))
        sink.put(msg.values, w.values)
        out.append(msg)
    return mpb.GetWeightsHeader(model=model, weights=out)


# --------------------------------------------------------------------------------------------------
# Generate

_SCOPES = {
    ipb.GENERATE_SCOPE_UNSPECIFIED: generate.Scope.ALL,
    ipb.GENERATE_SCOPE_ALL: generate.Scope.ALL,
    ipb.GENERATE_SCOPE_PROMPT: generate.Scope.PROMPT,
    ipb.GENERATE_SCOPE_GENERATED: generate.Scope.GENERATED,
}
_STOP_REASONS = {
    generate.StopReason.MAX_NEW_TOKENS: ipb.STOP_REASON_MAX_NEW_TOKENS,
    generate.StopReason.EOS: ipb.STOP_REASON_EOS,
    generate.StopReason.STOP_TOKEN: ipb.STOP_REASON_STOP_TOKEN,
    generate.StopReason.STOP_STRING: ipb.STOP_REASON_STOP_STRING,
}


def generate_edit_from_pb(e: ipb.GenerateEdit) -> generate.Edit:
    scope = _SCOPES.get(e.scope)
    if scope is None:
        raise InvalidArgumentError(f"unknown generate scope {e.scope}")
    which = e.WhichOneof("edit")
    edit: specs.Intervention | generate.SteerLatent | generate.ClampLatent
    if which == "intervention":
        edit = intervention_from_pb(e.intervention)
    elif which == "steer_latent":
        s = e.steer_latent
        edit = generate.SteerLatent(s.sae, s.latent, s.coeff, tuple(s.positions) or None)
    elif which == "clamp_latent":
        c = e.clamp_latent
        edit = generate.ClampLatent(c.sae, c.latent, c.value, tuple(c.positions) or None)
    else:
        raise InvalidArgumentError(
            "a generate edit has no edit; set one of intervention, steer_latent, clamp_latent"
        )
    return generate.Edit(edit, scope)


def generate_spec_from_pb(r: ipb.GenerateRequest) -> generate.GenerateSpec:
    checks.present(r.prompt if r.HasField("prompt") else None, "prompt")
    s = r.sampling
    return generate.GenerateSpec(
        prompt=prompt_from_pb(r.prompt),
        sets=tuple(
            generate.GenerateSet(g.name, tuple(generate_edit_from_pb(e) for e in g.edits))
            for g in r.sets
        ),
        max_new_tokens=r.max_new_tokens if r.HasField("max_new_tokens") else 32,
        sampling=generate.Sampling(
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p if s.HasField("top_p") else 1.0,
            repetition_penalty=s.repetition_penalty if s.HasField("repetition_penalty") else 1.0,
            seed=s.seed if s.HasField("seed") else None,
        ),
        stop_strings=tuple(r.stop_strings),
        stop_token_ids=tuple(r.stop_token_ids),
        stop_at_eos=r.stop_at_eos if r.HasField("stop_at_eos") else True,
        top_k=r.top_k if r.HasField("top_k") else 5,
        captures=tuple(capture_from_pb(c) for c in r.captures),
        prepend_bos=r.prepend_bos if r.HasField("prepend_bos") else None,
    )


def _token_choice_pb(t: generate.TokenChoice) -> ipb.TokenChoice:
    return ipb.TokenChoice(token_id=t.token_id, token=t.token, logprob=t.logprob)


def generate_event_to_pb(model: str, e: generate.Event) -> ipb.GenerateResponse:
    """One Generate event as a response message (step captures carry their data inline)."""
    if isinstance(e, generate.Start):
        start = ipb.GenerateStart(
            model=model, prompt=prompt_tokens_to_pb(e.prompt), names=list(e.names)
        )
        if e.seed is not None:
            start.seed = e.seed
        return ipb.GenerateResponse(start=start)
    if isinstance(e, generate.Step):
        rows = []
        for row in e.rows:
            if row is None:
                rows.append(ipb.GenerateRowStep(active=False))
                continue
            sink = TensorSink(inline_budget=generate.MAX_STEP_CAPTURE_BYTES)
            rows.append(
                ipb.GenerateRowStep(
                    active=True,
                    token=_token_choice_pb(row.token),
                    top=[_token_choice_pb(t) for t in row.top],
                    captures=[capture_to_pb(c, sink) for c in row.captures],
                    finished=(
                        _STOP_REASONS[row.finished]
                        if row.finished is not None
                        else ipb.STOP_REASON_UNSPECIFIED
                    ),
                )
            )
        return ipb.GenerateResponse(
            step=ipb.GenerateStep(step=e.step, position=e.position, rows=rows)
        )
    return ipb.GenerateResponse(
        finish=ipb.GenerateFinish(
            rows=[
                ipb.GenerateRowResult(
                    name=r.name,
                    token_ids=list(r.token_ids),
                    text=r.text,
                    stop_reason=_STOP_REASONS[r.stop_reason],
                )
                for r in e.rows
            ],
            steps=e.steps,
            seconds=e.seconds,
        )
    )
