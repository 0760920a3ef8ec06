"""``TdbClient``: typed methods over the generated stubs, one exception type, per-call timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import attribution_pb2_grpc as apb_grpc
from tdb.v1 import common_pb2 as cpb
from tdb.v1 import explain_pb2 as epb
from tdb.v1 import explain_pb2_grpc as epb_grpc
from tdb.v1 import inference_pb2 as ipb
from tdb.v1 import inference_pb2_grpc as ipb_grpc
from tdb.v1 import model_pb2 as mpb
from tdb.v1 import model_pb2_grpc as mpb_grpc
from tdb.v1 import sae_pb2 as spb
from tdb.v1 import sae_pb2_grpc as spb_grpc
from tdb.v1 import server_pb2 as svpb
from tdb.v1 import server_pb2_grpc as svpb_grpc
from tdb_client import generation, losses, nodes
from tdb_client.channel import MAX_ATTEMPTS, TlsConfig, make_channel
from tdb_client.errors import TdbClientError
from tdb_client.interventions import Intervention, intervention_pb
from tdb_client.tensors import StreamAssembler, assemble, chunk_decoder, from_numpy, to_numpy
from tdb_client.types import (
    AblateResult,
    AblateRow,
    ActivationRecord,
    AttributeResult,
    Capture,
    EncodeResult,
    ExplainProgress,
    Explanation,
    ForwardResult,
    LensCell,
    LensResult,
    LimitValue,
    MethodInfo,
    ModelCapabilities,
    ModelInfo,
    ModelSummary,
    Node,
    NodeRecords,
    NodeRow,
    NodeValues,
    PatchSweepResult,
    SaeInfo,
    ServerInfo,
    SiteInfo,
    TokenScore,
    TopLogits,
    Weights,
    WeightView,
)

PromptLike = str | Sequence[int]
InterventionLike: TypeAlias = Intervention | cpb.Intervention  # typed, or a raw message
LossLike: TypeAlias = losses.Loss | Message | tuple[str, Message]  # typed, or a raw message
NodeLike: TypeAlias = str | Node | nodes.Node  # a node key, or a node with a ``.key``
R = TypeVar("R")
#: The most explanations one ListExplanations request may ask for (the server's bound).
MAX_LIST_PAGE = 10_000


_PATCH_METHODS = {"exact": ipb.PATCH_METHOD_EXACT, "attribution": ipb.PATCH_METHOD_ATTRIBUTION}
_VIEW_KINDS = {
    "neuron_logits": mpb.WEIGHT_VIEW_KIND_NEURON_LOGITS,
    "head_ov": mpb.WEIGHT_VIEW_KIND_HEAD_OV,
    "head_qk": mpb.WEIGHT_VIEW_KIND_HEAD_QK,
}
_LENS_SCALES = {"recomputed": ipb.LENS_SCALE_RECOMPUTED, "frozen": ipb.LENS_SCALE_FROZEN}


def loss_message(loss: LossLike) -> apb.Loss:
    """A ``tdb.v1.Loss`` (for Forward and Ablate gradients) from a typed or raw loss."""
    field, msg = losses.loss_pb(loss)
    out = apb.Loss()
    getattr(out, field).CopyFrom(msg)
    return out


def _key(node: NodeLike) -> str:
    return node if isinstance(node, str) else node.key


def _keys(nodes_: NodeLike | Sequence[NodeLike]) -> list[str]:
    if isinstance(nodes_, (str, Node, nodes.Node)):
        return [_key(nodes_)]
    return [_key(n) for n in nodes_]


def node_from_pb(n: apb.Node) -> Node:
    """A node-table node from its message (the key, parsed; older servers: the display name)."""
    parsed = nodes.parse_node(n.key) if n.key else nodes.legacy_node(n.name)
    if parsed is None:
        raise ValueError(f"node {n.name!r} has no key")
    return Node(
        key=parsed.key,
        kind=parsed.kind,
        site=parsed.site,
        unit=parsed.unit,
        position=parsed.position,
        key_position=parsed.key_position,
        layer=n.layer if n.HasField("layer") else None,
        sae=n.sae or None,
        name=n.name,
    )


_DTYPES = {
    None: cpb.DTYPE_UNSPECIFIED,
    "float32": cpb.DTYPE_FLOAT32,
    "float16": cpb.DTYPE_FLOAT16,
    "bfloat16": cpb.DTYPE_BFLOAT16,
}
_MODES = {
    "largest": cpb.TOP_K_MODE_LARGEST,
    "smallest": cpb.TOP_K_MODE_SMALLEST,
    "abs": cpb.TOP_K_MODE_ABS,
}


def prompt_pb(p: PromptLike) -> cpb.Prompt:
    """A prompt message from text or a sequence of token ids."""
    if isinstance(p, str):
        return cpb.Prompt(text=p)
    return cpb.Prompt(token_ids=cpb.TokenIds(ids=[int(i) for i in p]))


def prompts_pb(prompts: PromptLike | Sequence[PromptLike]) -> list[cpb.Prompt]:
    if isinstance(prompts, str):
        return [prompt_pb(prompts)]
    items = list(prompts)
    ids = [p for p in items if isinstance(p, int)]  # one prompt given as token ids
    others = [p for p in items if not isinstance(p, int)]  # several prompts
    if ids and others:
        raise TypeError("prompts mix token ids with other prompts")
    return [prompt_pb(ids)] if ids else [prompt_pb(p) for p in others]


def capture_pb(c: str | Capture, positions: Sequence[int] | None = None) -> cpb.Capture:
    if isinstance(c, str):
        c = Capture(site=c, positions=tuple(positions) if positions is not None else None)
    if c.dtype not in _DTYPES:
        raise ValueError(f"dtype {c.dtype!r}: use float32, float16 or bfloat16")
    msg = cpb.Capture(
        site=c.site,
        positions=list(c.positions or ()),
        units=list(c.units or ()),
        dtype=_DTYPES[c.dtype],
    )
    if c.top_k is not None:
        msg.top_k.k = c.top_k
        msg.top_k.mode = _MODES[c.top_k_mode]
    return msg


def tokens_pb(tokens: str | int | Sequence[str | int] | None) -> cpb.Tokens:
    """Tokens from strings (each must be one token) and/or ids."""
    if tokens is None:
        return cpb.Tokens()
    items = [tokens] if isinstance(tokens, (str, int)) else list(tokens)
    return cpb.Tokens(
        strings=[t for t in items if isinstance(t, str)],
        ids=[int(t) for t in items if not isinstance(t, str)],
    )


TokensLike = str | int | Sequence[str | int] | None


def explanation_from_pb(e: epb.Explanation) -> Explanation:
    import json

    return Explanation(
        e.model,
        e.sae,
        e.node,
        e.method,
        e.explainer,
        e.explanation,
        e.score if e.HasField("score") else None,
        e.score_reason,
        json.loads(e.scores_json or "{}"),
        json.loads(e.records_used_json or "{}"),
        e.created_at,
        e.updated_at,
    )


def _dataset_pb(dataset: str | Sequence[str] | None) -> epb.Dataset:
    if dataset is None:
        return epb.Dataset()
    if isinstance(dataset, str):
        return epb.Dataset(name=dataset)
    return epb.Dataset(texts=epb.TextList(texts=list(dataset)))


def _mining_pb(
    window_len: int | None, top_k: int | None, n_random: int | None, max_windows: int | None
) -> epb.MiningOptions:
    m = epb.MiningOptions()
    for name, value in (
        ("window_len", window_len),
        ("top_k", top_k),
        ("n_random", n_random),
        ("max_windows", max_windows),
    ):
        if value is not None:
            setattr(m, name, value)
    return m


def sae_info_from_pb(m: cpb.SaeInfo) -> SaeInfo:
    return SaeInfo(
        m.id,
        m.model,
        m.site,
        m.kind,
        m.d_in,
        m.d_sae,
        m.input_norm,
        m.k if m.HasField("k") else None,
        m.source,
        tuple(m.sites),
    )


def top_logits_from_pb(t: cpb.TopLogits) -> TopLogits:
    return TopLogits(
        t.position, tuple(t.token_ids), tuple(t.tokens), tuple(t.logits), tuple(t.probs)
    )


def _limits(limits: Iterable[svpb.Limit]) -> dict[str, LimitValue]:
    out: dict[str, LimitValue] = {}
    for lim in limits:
        which = lim.WhichOneof("value")
        out[lim.name] = getattr(lim, which) if which else None
    return out


def _chunked_stream(
    channel: grpc.Channel, module: Any, service: str, method: str, response: type[Message]
) -> Any:
    """A server-streaming method whose chunk messages are decoded in place (see
    :func:`tdb_client.tensors.chunk_decoder`)."""
    m = module.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request = getattr(module, m.input_type.name)
    return channel.unary_stream(
        f"/{m.containing_service.full_name}/{m.name}",
        request_serializer=request.SerializeToString,
        response_deserializer=chunk_decoder(response),
        _registered_method=True,  # type: ignore[call-arg]  # grpc's own stubs pass it; types-grpcio omits it
    )


class TdbClient:
    """A client for a TDB server, or for several replicas of one.

    >>> with TdbClient("localhost:50051", timeout=30) as c:
    ...     out = c.forward("When Mary and John went to the store, John gave a drink to",
    ...                     capture=["blocks.*.attn.hook_pattern"])
    ...     out.top_logits[0][0].tokens[0]
    ' Mary'

    Every method takes ``timeout`` (seconds; default the client's) and raises
    :class:`TdbClientError` carrying the status code on failure.

    ``target``: ``"host:port"``, a gRPC target URI such as ``"dns:///tdb.ns.svc:50051"``, or
    several replicas (``["h1:50051", "h2:50051"]`` or ``"h1:50051,h2:50051"``); calls are
    balanced round-robin and retried on UNAVAILABLE (see :mod:`tdb_client.channel`).
    ``token``: sent as ``authorization: Bearer <token>``. ``tls``: True (system roots) or a
    :class:`TlsConfig` (own CA, client certificate for mutual TLS).
    """

    def __init__(
        self,
        target: str | Sequence[str] = "localhost:50051",
        timeout: float | None = 60.0,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
        tls: bool | TlsConfig | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.target = target
        self.timeout = timeout
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = (*tuple(metadata), *auth)
        self._channel = make_channel(target, tls, options, max_attempts)
        self._max_attempts = max_attempts
        self._models = mpb_grpc.ModelServiceStub(self._channel)
        self._inference = ipb_grpc.InferenceServiceStub(self._channel)
        self._attribution = apb_grpc.AttributionServiceStub(self._channel)
        self._saes = spb_grpc.SaeServiceStub(self._channel)
        self._explain = epb_grpc.ExplainServiceStub(self._channel)
        self._server = svpb_grpc.ServerServiceStub(self._channel)
        # Header-then-chunks streams, read with a deserializer that leaves chunk data in place.
        self._forward_stream = _chunked_stream(
            self._channel, ipb, "InferenceService", "Forward", ipb.ForwardResponse
        )
        self._ablate_stream = _chunked_stream(
            self._channel, ipb, "InferenceService", "Ablate", ipb.AblateResponse
        )
        self._weights_stream = _chunked_stream(
            self._channel, mpb, "ModelService", "GetWeights", mpb.GetWeightsResponse
        )
        self._encode_stream = _chunked_stream(
            self._channel, spb, "SaeService", "Encode", spb.EncodeResponse
        )

    # -- plumbing
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TdbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, fn: Callable[..., R], request: Message, timeout: float | None) -> R:
        try:
            return fn(
                request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise TdbClientError.from_rpc_error(e) from None

    def _stream(
        self, fn: Callable[..., Iterable[Message]], request: Message, timeout: float | None
    ) -> StreamAssembler:
        budget = self.timeout if timeout is None else timeout
        deadline = None if budget is None else time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            received = 0

            def counted(responses: Iterable[Message]) -> Iterable[Message]:
                nonlocal received
                for r in responses:
                    received += 1
                    yield r

            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return assemble(counted(fn(request, timeout=left, metadata=self._metadata)))
            except grpc.RpcError as e:
                # gRPC retries UNAVAILABLE by itself only until the first response arrives; a
                # replica lost mid-stream is retried here from the start (streaming RPCs only
                # read, and the partial result was never handed out).
                if (
                    e.code() == grpc.StatusCode.UNAVAILABLE
                    and received
                    and attempt < self._max_attempts
                ):
                    continue
                raise TdbClientError.from_rpc_error(e) from None

    # -- ServerService
    def server_info(self, timeout: float | None = None) -> ServerInfo:
        """The server's version, models (with SAEs and limits), features and RPCs."""
        r = self._unary(self._server.ServerInfo, svpb.ServerInfoRequest(), timeout)
        models = tuple(
            ModelCapabilities(
                m.name,
                m.architecture,
                m.source,
                m.device,
                m.dtype,
                m.is_default,
                m.n_layers,
                m.n_ctx,
                m.d_model,
                m.d_vocab,
                tuple(sae_info_from_pb(x) for x in m.saes),
                _limits(m.limits),
            )
            for m in r.models
        )
        features = {f.name: bool(getattr(r.features, f.name)) for f in r.features.DESCRIPTOR.fields}
        services = {
            s.name: tuple(
                MethodInfo(
                    m.name,
                    m.path,
                    m.input_type,
                    m.output_type,
                    m.client_streaming,
                    m.server_streaming,
                )
                for m in s.methods
            )
            for s in r.services
        }
        return ServerInfo(
            version=r.version,
            library_versions=dict(r.library_versions),
            models=models,
            default_model=r.default_model,
            features=features,
            services=services,
            server_limits=_limits(r.server_limits),
        )

    # -- ModelService
    def list_models(self, timeout: float | None = None) -> list[ModelSummary]:
        r = self._unary(self._models.ListModels, mpb.ListModelsRequest(), timeout)
        return [ModelSummary(m.name, m.architecture, m.source, m.is_default) for m in r.models]

    def model_info(self, model: str | None = None, timeout: float | None = None) -> ModelInfo:
        r = self._unary(
            self._models.GetModelInfo, mpb.GetModelInfoRequest(model=model or ""), timeout
        )
        sites = tuple(
            SiteInfo(
                s.name,
                s.kind,
                s.layer if s.HasField("layer") else None,
                tuple(s.dims),
                tuple(s.sizes),
                s.unit_dim or None,
                s.meaning,
            )
            for s in r.sites
        )
        return ModelInfo(
            name=r.name,
            architecture=r.architecture,
            source=r.source,
            n_layers=r.n_layers,
            n_heads=r.n_heads,
            n_kv_heads=r.n_kv_heads,
            d_model=r.d_model,
            d_head=r.d_head,
            d_mlp=r.d_mlp,
            d_vocab=r.d_vocab,
            n_ctx=r.n_ctx,
            device=r.device,
            dtype=r.dtype,
            sites=sites,
            saes=tuple(sae_info_from_pb(x) for x in r.saes),
            bos_token_id=r.bos_token_id if r.HasField("bos_token_id") else None,
            eos_token_id=r.eos_token_id if r.HasField("eos_token_id") else None,
        )

    def tokenize(
        self,
        text: str | Sequence[str],
        model: str | None = None,
        prepend_bos: bool | None = None,
        timeout: float | None = None,
    ) -> list[int] | list[list[int]]:
        """Token ids of a text (or a list of ids per text for a list of texts)."""
        texts = [text] if isinstance(text, str) else list(text)
        req = mpb.TokenizeRequest(model=model or "", texts=texts)
        if prepend_bos is not None:
            req.prepend_bos = prepend_bos
        r = self._unary(self._models.Tokenize, req, timeout)
        ids = [list(p.token_ids) for p in r.prompts]
        return ids[0] if isinstance(text, str) else ids

    def detokenize(
        self, token_ids: Sequence[int], model: str | None = None, timeout: float | None = None
    ) -> str:
        r: mpb.DetokenizeResponse = self._unary(
            self._models.Detokenize,
            mpb.DetokenizeRequest(model=model or "", token_ids=list(token_ids)),
            timeout,
        )
        return r.text

    # -- InferenceService
    def forward(
        self,
        prompts: PromptLike | Sequence[PromptLike],
        model: str | None = None,
        capture: Iterable[str | Capture] = (),
        positions: Sequence[int] | None = None,
        top_k: int = 10,
        logit_positions: Sequence[int] | None = None,
        interventions: Iterable[InterventionLike] = (),
        sources: Sequence[PromptLike] = (),
        references: Sequence[PromptLike] = (),
        prepend_bos: bool | None = None,
        timeout: float | None = None,
        loss: LossLike | None = None,
        grad: Iterable[str | Capture] = (),
        freeze_norm_scale: bool = True,
    ) -> ForwardResult:
        """Run prompts and read activations.

        ``capture``: site names or globs (or :class:`Capture` objects for per-site reductions);
        ``positions`` applies to the plain-string captures. ``interventions`` are built with
        :mod:`tdb_client.interventions` (raw ``tdb.v1`` messages work too);
        ``sources``/``references`` feed patch and reference-mean interventions.

        Gradients: ``loss`` (from :mod:`tdb_client.losses`, per prompt) and ``grad``, sites whose
        d(loss)/d(site) lands in ``result.grads`` reduced like captures (``positions`` applies
        to plain strings here too); ``result.loss_values`` has each prompt's loss.
        """
        req = ipb.ForwardRequest(
            model=model or "",
            prompts=prompts_pb(prompts),
            captures=[capture_pb(c, positions) for c in capture],
            interventions=[intervention_pb(i) for i in interventions],
            sources=[prompt_pb(p) for p in sources],
            references=[prompt_pb(p) for p in references],
            logit_positions=list(logit_positions or ()),
            top_k=top_k,
            grad_captures=[capture_pb(c, positions) for c in grad],
            freeze_norm_scale=freeze_norm_scale,
        )
        if loss is not None:
            req.loss.CopyFrom(loss_message(loss))
        if prepend_bos is not None:
            req.prepend_bos = prepend_bos
        stream = self._stream(self._forward_stream, req, timeout)
        h: ipb.ForwardHeader = stream.header  # type: ignore[assignment]
        out = ForwardResult(
            model=h.model,
            token_ids=[list(p.token_ids) for p in h.prompts],
            tokens=[list(p.tokens) for p in h.prompts],
        )
        for c in h.captures:
            out.activations[c.site] = stream.array(c.values)
            out.positions[c.site] = stream.array(c.positions)
            out.dims[c.site] = tuple(c.dims)
            if c.HasField("indices"):
                out.indices[c.site] = stream.array(c.indices)
        out.top_logits = [[top_logits_from_pb(t) for t in p.positions] for p in h.top_logits]
        for c in h.grad_captures:
            out.grads[c.site] = stream.array(c.values)
            if c.HasField("indices"):
                out.grad_indices[c.site] = stream.array(c.indices)
        out.loss_values = list(h.loss_values)
        return out

    def ablate(
        self,
        prompt: PromptLike,
        sets: dict[str, Iterable[InterventionLike]] | Iterable[Iterable[InterventionLike]],
        target: TokensLike = None,
        distractor: TokensLike = None,
        position: int = -1,
        top_k: int = 10,
        capture: Iterable[str | Capture] = (),
        positions: Sequence[int] | None = None,
        sources: Sequence[PromptLike] = (),
        references: Sequence[PromptLike] = (),
        model: str | None = None,
        prepend_bos: bool | None = None,
        timeout: float | None = None,
        loss: LossLike | None = None,
        grad: Iterable[str | Capture] = (),
        freeze_norm_scale: bool = True,
    ) -> AblateResult:
        """Compare a baseline with each intervention set (one padded batch on the server).

        ``sets``: a dict name -> interventions (or a list, named set0, set1, ...), built with
        :mod:`tdb_client.interventions` (e.g. ``iv.zero(row.node.key)``);
        ``target``/``distractor``: strings that are one token each (e.g. " Mary") or ids.
        """
        named = (
            sets.items() if isinstance(sets, dict) else ((f"set{i}", s) for i, s in enumerate(sets))
        )
        req = ipb.AblateRequest(
            model=model or "",
            prompt=prompt_pb(prompt),
            sets=[
                cpb.InterventionSet(name=n, interventions=[intervention_pb(i) for i in ivs])
                for n, ivs in named
            ],
            position=position,
            target=tokens_pb(target),
            distractor=tokens_pb(distractor),
            top_k=top_k,
            captures=[capture_pb(c, positions) for c in capture],
            sources=[prompt_pb(p) for p in sources],
            references=[prompt_pb(p) for p in references],
            grad_captures=[capture_pb(c, positions) for c in grad],
            freeze_norm_scale=freeze_norm_scale,
        )
        if loss is not None:
            req.loss.CopyFrom(loss_message(loss))
        if prepend_bos is not None:
            req.prepend_bos = prepend_bos
        stream = self._stream(self._ablate_stream, req, timeout)
        h: ipb.AblateHeader = stream.header  # type: ignore[assignment]
        rows = [
            AblateRow(
                r.name,
                top_logits_from_pb(r.top),
                r.logit_diff if r.HasField("logit_diff") else None,
                r.logit_diff_change if r.HasField("logit_diff_change") else None,
                r.kl_from_baseline,
                r.target_prob if r.HasField("target_prob") else None,
            )
            for r in h.rows
        ]
        out = AblateResult(
            model=h.model,
            tokens=list(h.prompt.tokens),
            token_ids=list(h.prompt.token_ids),
            position=h.position,
            rows=rows,
        )
        for c in h.captures:
            out.activations[c.site] = stream.array(c.values)
            out.dims[c.site] = tuple(c.dims)
        for c in h.grad_captures:
            out.grads[c.site] = stream.array(c.values)
        out.loss_values = list(h.loss_values)
        return out

    def patch_sweep(
        self,
        clean: PromptLike,
        corrupted: PromptLike,
        site: str,
        target: TokensLike,
        distractor: TokensLike,
        by: str = "position",
        positions: Sequence[int] | None = None,
        layers: Sequence[int] | None = None,
        position: int = -1,
        model: str | None = None,
        timeout: float | None = None,
        method: str = "exact",
    ) -> PatchSweepResult:
        """Activation patching of ``site`` (e.g. "hook_resid_pre", "attn.hook_z") from ``clean``
        into ``corrupted``; ``by`` is "position" (grid layer x position) or "head". ``method``
        "attribution" estimates every cell from one forward/backward pair (AtP)."""
        if by not in ("position", "head"):
            raise ValueError("by must be 'position' or 'head'")
        if method not in _PATCH_METHODS:
            raise ValueError("method must be 'exact' or 'attribution'")
        req = ipb.PatchSweepRequest(
            model=model or "",
            clean=prompt_pb(clean),
            corrupted=prompt_pb(corrupted),
            site=site,
            target=tokens_pb(target),
            distractor=tokens_pb(distractor),
            by=ipb.SWEEP_BY_HEAD if by == "head" else ipb.SWEEP_BY_POSITION,
            positions=list(positions or ()),
            layers=list(layers or ()),
            position=position,
            method=_PATCH_METHODS[method],
        )
        r = self._unary(self._inference.PatchSweep, req, timeout)
        return PatchSweepResult(
            model=r.model,
            site=r.site,
            by=by,
            layers=list(r.layers),
            columns=list(r.columns),
            column_labels=list(r.column_labels),
            recovered=to_numpy(r.recovered),
            logit_diffs=to_numpy(r.logit_diffs),
            clean_logit_diff=r.clean_logit_diff,
            corrupted_logit_diff=r.corrupted_logit_diff,
            clean_tokens=list(r.clean.tokens),
            corrupted_tokens=list(r.corrupted.tokens),
            method="attribution" if r.method == ipb.PATCH_METHOD_ATTRIBUTION else "exact",
        )

    # -- AttributionService
    def attribute(
        self,
        prompt: PromptLike,
        loss: LossLike | None = None,
        target: TokensLike = None,
        distractor: TokensLike = None,
        top_k: int = 10,
        second_prompt: PromptLike | None = None,
        interventions: Iterable[InterventionLike] = (),
        families: Sequence[str] = (),
        ig_steps: int = 0,
        freeze_norm_scale: bool = True,
        node_tokens: int = 5,
        model: str | None = None,
        timeout: float | None = None,
    ) -> AttributeResult:
        """TDB's node table. ``loss`` comes from :mod:`tdb_client.losses` (or is a raw loss
        message); or give ``target`` and ``distractor`` for a logit difference at the last
        position. ``families`` are node kinds (``"mlp_neuron"``, ``NodeKind.ATTN_HEAD``, ...).
        Each row's ``node.key`` can be passed unchanged to :meth:`explain` and to
        ``interventions.zero``."""
        if loss is None:
            if target is None or distractor is None:
                raise ValueError("give a loss, or target and distractor tokens")
            loss = losses.logit_diff(target, distractor)
        field, msg = losses.loss_pb(loss)
        req = apb.AttributeRequest(
            model=model or "",
            prompt=prompt_pb(prompt),
            interventions=[intervention_pb(i) for i in interventions],
            top_k=top_k,
            families=[str(f) for f in families],
            ig_steps=ig_steps,
            freeze_norm_scale=freeze_norm_scale,
            node_tokens=node_tokens,
        )
        getattr(req, field).CopyFrom(msg)
        if second_prompt is not None:
            req.second_prompt.CopyFrom(prompt_pb(second_prompt))
        r = self._unary(self._attribution.Attribute, req, timeout)

        def scores(ts: Iterable[apb.TokenScore]) -> list[TokenScore]:
            return [TokenScore(t.token_id, t.token, t.score) for t in ts]

        rows = [
            NodeRow(
                node=node_from_pb(row.node),
                values=[
                    NodeValues(v.activation, v.write_magnitude, v.direct_effect, v.total_effect)
                    for v in row.values
                ],
                upvoted=scores(row.upvoted),
                downvoted=scores(row.downvoted),
                input_tokens=scores(row.input_tokens),
                explanation=explanation_from_pb(row.explanation)
                if row.HasField("explanation")
                else None,
            )
            for row in r.rows
        ]
        return AttributeResult(
            model=r.model,
            tokens=[list(p.tokens) for p in r.prompts],
            loss_values=list(r.loss_values),
            rows=rows,
            token_attribution=[list(t.values) for t in r.token_attribution],
            bias_direct_effect=list(r.bias_direct_effect),
            constant=list(r.constant),
            loss_position=r.loss_position,
            nodes_ranked=r.nodes_ranked,
        )

    # -- SaeService
    def list_saes(self, model: str | None = None, timeout: float | None = None) -> list[SaeInfo]:
        r = self._unary(self._saes.ListSaes, spb.ListSaesRequest(model=model or ""), timeout)
        return [sae_info_from_pb(m) for m in r.saes]

    def encode(
        self,
        sae: str,
        prompts: PromptLike | Sequence[PromptLike] | None = None,
        activations: Any = None,
        top_k: int = 16,
        dense: bool = False,
        model: str | None = None,
        timeout: float | None = None,
    ) -> EncodeResult:
        """Latents of an attached SAE for prompts (run through the model) or raw activations
        (``[n, d_in]`` array)."""
        req = spb.EncodeRequest(model=model or "", sae=sae, top_k=top_k, dense=dense)
        if (prompts is None) == (activations is None):
            raise ValueError("give prompts or activations")
        if prompts is not None:
            req.prompts.prompts.extend(prompts_pb(prompts))
        else:
            import numpy as np

            req.activations.values.CopyFrom(from_numpy(np.asarray(activations, dtype=np.float32)))
        stream = self._stream(self._encode_stream, req, timeout)
        h: spb.EncodeHeader = stream.header  # type: ignore[assignment]
        return EncodeResult(
            model=h.model,
            sae=h.sae,
            tokens=[list(p.tokens) for p in h.prompts],
            top_values=stream.array(h.top_values),
            top_indices=stream.array(h.top_indices),
            dense=stream.array(h.dense) if h.HasField("dense") else None,
            l0=stream.array(h.l0),
            mse=stream.array(h.mse),
            explained_variance=h.explained_variance,
            mean_l0=h.mean_l0,
        )

    def decode(
        self, sae: str, latents: Any, model: str | None = None, timeout: float | None = None
    ) -> Any:
        """``b_dec + latents @ W_dec`` for latents ``[..., d_sae]``."""
        import numpy as np

        r = self._unary(
            self._saes.Decode,
            spb.DecodeRequest(
                model=model or "",
                sae=sae,
                latents=from_numpy(np.asarray(latents, dtype=np.float32)),
            ),
            timeout,
        )
        return to_numpy(r.vectors)

    def load_sae(
        self,
        sae_id: str,
        path: str,
        site: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> SaeInfo:
        """Attach an SAE from ``path`` under the server's --sae-root."""
        r = self._unary(
            self._saes.LoadSae,
            spb.LoadSaeRequest(model=model or "", id=sae_id, path=path, site=site or ""),
            timeout,
        )
        return sae_info_from_pb(r.sae)

    # -- ExplainService
    def activation_records(
        self,
        nodes: NodeLike | Sequence[NodeLike],
        dataset: str | Sequence[str] | None = None,
        window_len: int | None = None,
        top_k: int | None = None,
        n_random: int | None = None,
        max_windows: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> list[NodeRecords]:
        """Top-activating and random windows of nodes (``blocks.1.mlp.hook_post[42]``, ...) over a
        server dataset (by name) or texts. Any node key works (a node-table row's, or the row's
        node itself): its unit is mined."""
        req = epb.GetActivationRecordsRequest(
            model=model or "",
            nodes=_keys(nodes),
            dataset=_dataset_pb(dataset),
            mining=_mining_pb(window_len, top_k, n_random, max_windows),
        )
        r = self._unary(self._explain.GetActivationRecords, req, timeout)

        def recs(items: Iterable[epb.ActivationRecord]) -> list[ActivationRecord]:
            return [ActivationRecord(list(a.tokens), list(a.activations)) for a in items]

        return [
            NodeRecords(
                x.node,
                x.kind,
                x.density,
                x.max_activation,
                recs(x.top),
                recs(x.random),
                x.n_positions,
                x.neuron_record_json,
            )
            for x in r.records
        ]

    def explain(
        self,
        nodes: NodeLike | Sequence[NodeLike],
        dataset: str | Sequence[str] | None = None,
        method: str | None = None,
        save: bool = True,
        on_progress: Callable[[ExplainProgress], None] | None = None,
        n_examples_per_split: int | None = None,
        window_len: int | None = None,
        top_k: int | None = None,
        n_random: int | None = None,
        max_windows: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> list[Explanation]:
        """Mine, explain, simulate and score nodes; progress events go to ``on_progress``. Any
        node key works (a node-table row's, or the row's node itself): its unit is explained."""
        req = epb.ExplainNodeRequest(
            model=model or "",
            nodes=_keys(nodes),
            dataset=_dataset_pb(dataset),
            method=method or "",
            save=save,
            mining=_mining_pb(window_len, top_k, n_random, max_windows),
        )
        if n_examples_per_split is not None:
            req.n_examples_per_split = n_examples_per_split
        out: list[Explanation] = []
        try:
            for msg in self._explain.ExplainNode(
                req, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
            ):
                if msg.WhichOneof("event") == "progress":
                    p = msg.progress
                    if on_progress is not None:
                        on_progress(ExplainProgress(p.node, p.phase, p.done, p.total, p.message))
                else:
                    out.append(explanation_from_pb(msg.result))
        except grpc.RpcError as e:
            raise TdbClientError.from_rpc_error(e) from None
        return out

    def score_explanation(
        self,
        node: NodeLike,
        explanation: str,
        dataset: str | Sequence[str] | None = None,
        method: str | None = None,
        save: bool = False,
        window_len: int | None = None,
        top_k: int | None = None,
        n_random: int | None = None,
        max_windows: int | None = None,
        model: str | None = None,
        timeout: float | None = None,
    ) -> Explanation:
        """Score a given explanation of a node on its records (mined with the same options)."""
        req = epb.ScoreExplanationRequest(
            model=model or "",
            node=_key(node),
            explanation=explanation,
            dataset=_dataset_pb(dataset),
            method=method or "",
            save=save,
            mining=_mining_pb(window_len, top_k, n_random, max_windows),
        )
        return explanation_from_pb(self._unary(self._explain.ScoreExplanation, req, timeout).result)

    def list_explanations(
        self,
        model: str | None = None,
        node: NodeLike | None = None,
        node_prefix: str | None = None,
        sae: str | None = None,
        method: str | None = None,
        min_score: float | None = None,
        limit: int = 100,
        offset: int = 0,
        timeout: float | None = None,
    ) -> list[Explanation]:
        """Stored and shipped explanations matching the filters: up to ``limit`` after
        ``offset``, following the server's pages (each within its response limit and at most
        the server's 10000 per request)."""
        req = epb.ListExplanationsRequest(
            model=model or "",
            node=_key(node) if node is not None else "",
            node_prefix=node_prefix or "",
            sae=sae or "",
            method=method or "",
            limit=min(limit, MAX_LIST_PAGE),
            offset=offset,
        )
        if limit <= 0:
            return []
        if min_score is not None:
            req.min_score = min_score
        r = self._unary(self._explain.ListExplanations, req, timeout)
        out = [explanation_from_pb(e) for e in r.explanations]
        while r.next_offset and len(out) < limit:
            req.offset, req.limit = r.next_offset, min(limit - len(out), MAX_LIST_PAGE)
            r = self._unary(self._explain.ListExplanations, req, timeout)
            out.extend(explanation_from_pb(e) for e in r.explanations)
        return out

    # -- gradients' companions: weights and the logit lens
    def weights(
        self,
        names: str | Sequence[str] = (),
        heads: Sequence[int] | None = None,
        neurons: Sequence[int] | None = None,
        dtype: str | None = None,
        views: Sequence[WeightView] = (),
        model: str | None = None,
        timeout: float | None = None,
    ) -> Weights:
        """Parameters by TransformerLens name or glob (``"W_E"``, ``"blocks.0.attn.W_Q"``,
        ``"*"``), sliced to ``heads``/``neurons``, and folded ``views`` (e.g.
        ``WeightView("neuron_logits", 1, 5)``, ``WeightView("head_ov", 0, 2, src, dst)``)."""
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: use float32, float16 or bfloat16")
        req = mpb.GetWeightsRequest(
            model=model or "",
            names=[names] if isinstance(names, str) else list(names),
            heads=list(heads or ()),
            neurons=list(neurons or ()),
            dtype=_DTYPES[dtype],
        )
        for v in views:
            if v.kind not in _VIEW_KINDS:
                raise ValueError("view kind must be neuron_logits, head_ov or head_qk")
            m = req.views.add(kind=_VIEW_KINDS[v.kind], layer=v.layer, unit=v.unit)
            if v.source_token is not None:
                m.source_token = v.source_token
            if v.destination_token is not None:
                m.destination_token = v.destination_token
        stream = self._stream(self._weights_stream, req, timeout)
        h: mpb.GetWeightsHeader = stream.header  # type: ignore[assignment]
        out = Weights(model=h.model)
        for w in h.weights:
            out.values[w.name] = stream.array(w.values)
            out.dims[w.name] = tuple(w.dims)
            if w.kept:
                out.kept[w.name] = list(w.kept)
        return out

    def logit_lens(
        self,
        prompt: PromptLike,
        layers: Sequence[int] | None = None,
        positions: Sequence[int] | None = None,
        top_k: int = 5,
        scale: str = "recomputed",
        site: str = "hook_resid_post",
        model: str | None = None,
        prepend_bos: bool | None = None,
        timeout: float | None = None,
    ) -> LensResult:
        """The logit-lens grid: the residual ``site`` at each layer and position read through
        the final norm (``scale`` "recomputed" from the residual, or "frozen" to the final
        residual's) and the unembedding; the top ``top_k`` tokens of each cell."""
        if scale not in _LENS_SCALES:
            raise ValueError("scale must be 'recomputed' or 'frozen'")
        req = ipb.LogitLensRequest(
            model=model or "",
            prompt=prompt_pb(prompt),
            site=site,
            layers=list(layers or ()),
            positions=list(positions or ()),
            top_k=top_k,
            scale=_LENS_SCALES[scale],
        )
        if prepend_bos is not None:
            req.prepend_bos = prepend_bos
        r = self._unary(self._inference.LogitLens, req, timeout)
        n = len(r.positions)
        cells = [
            LensCell(
                c.layer,
                c.position,
                list(c.token_ids),
                list(c.tokens),
                list(c.logits),
                list(c.probs),
            )
            for c in r.cells
        ]
        return LensResult(
            model=r.model,
            site=r.site,
            scale="frozen" if r.scale == ipb.LENS_SCALE_FROZEN else "recomputed",
            tokens=list(r.prompt.tokens),
            layers=list(r.layers),
            positions=list(r.positions),
            grid=[cells[i * n : (i + 1) * n] for i in range(len(r.layers))],
        )

    # -- Generate (issue 15)
    def generate(
        self,
        prompt: PromptLike,
        sets: Mapping[str, Iterable[generation.EditLike]]
        | Iterable[Iterable[generation.EditLike]] = (),
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        stop_at_eos: bool = True,
        alternatives: int = 5,
        capture: Iterable[str | Capture] = (),
        model: str | None = None,
        prepend_bos: bool | None = None,
        timeout: float | None = None,
    ) -> generation.GenerateStream:
        """Generate from ``prompt`` for a baseline and each intervention set side by side.

        ``sets``: a dict name -> edits (or a list, named set1, set2, ...): interventions from
        :mod:`tdb_client.interventions`, or :func:`~tdb_client.generation.steer_latent`,
        :func:`~tdb_client.generation.clamp_latent`, wrapped in
        :func:`~tdb_client.generation.generated` / :func:`~tdb_client.generation.prompt_only`
        to restrict them. ``temperature`` 0 is greedy; ``seed`` makes sampling reproducible.
        Returns a :class:`~tdb_client.generation.GenerateStream` of events (iterate it, or call
        ``.texts()``); errors raise :class:`TdbClientError` as the stream is read.
        """
        sampling = ipb.Sampling(temperature=temperature, top_k=top_k)
        if top_p is not None:
            sampling.top_p = top_p
        if repetition_penalty is not None:
            sampling.repetition_penalty = repetition_penalty
        if seed is not None:
            sampling.seed = seed
        req = ipb.GenerateRequest(
            model=model or "",
            prompt=prompt_pb(prompt),
            sets=generation.sets_pb(sets),
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            stop_strings=list(stop),
            stop_token_ids=list(stop_token_ids),
            stop_at_eos=stop_at_eos,
            top_k=alternatives,
            captures=[capture_pb(c) for c in capture],
        )
        if prepend_bos is not None:
            req.prepend_bos = prepend_bos
        call = self._inference.Generate(
            req,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )
        return generation.GenerateStream(call)

    def generate_texts(self, prompt: PromptLike, sets: Any = (), **kw: Any) -> dict[str, str]:
        """:meth:`generate` read to the end: each row's text by name ("baseline" first)."""
        return self.generate(prompt, sets, **kw).texts()
