"""Converters: tensors round-trip bit-exactly (also through the chunked stream), request
messages become the intended domain specs, absent fields become None."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services import convert
from tdb.v1 import common_pb2 as cpb
from tdb.v1 import inference_pb2 as ipb
from tdb.v1 import sae_pb2 as spb
from tdb_client import interventions as iv
from tdb_client.client import capture_pb, prompt_pb
from tdb_client.tensors import (
    RawChunk,
    StreamAssembler,
    assemble,
    chunk_decoder,
    from_numpy,
    to_numpy,
)
from tdb_client.types import Capture
from tdb_core import errors, specs


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.bool,
    ],
)
def test_tensor_round_trip(dtype):
    """Every dtype survives server encode -> client decode -> client encode -> server decode."""
    t = (torch.randn(3, 5, 2) * 100).to(dtype)
    msg = convert.TensorSink(inline_budget=1 << 30).put(cpb.Tensor(), t)
    arr = to_numpy(msg)
    want = t.float().numpy() if dtype == torch.bfloat16 else t.numpy()
    np.testing.assert_array_equal(arr, want)
    if dtype != torch.bfloat16:
        back = convert.tensor_from_pb(from_numpy(arr))
        assert back.dtype == dtype and torch.equal(back, t)
    else:
        assert torch.equal(convert.tensor_from_pb(msg), t)


def test_large_tensors_stream_in_chunks_and_reassemble():
    """Tensors over the inline budget get a stream id and arrive as 1 MiB chunks."""
    sink = convert.TensorSink(inline_budget=1024, chunk_bytes=1 << 20)
    small, big = torch.arange(10, dtype=torch.float32), torch.randn(700, 1000)
    header = cpb.CaptureResult(site="x")
    sink.put(header.values, big)
    sink.put(header.positions, small)
    assert header.values.HasField("stream_id") and not header.positions.HasField("stream_id")
    chunks = list(sink.chunks())
    assert len(chunks) == 3 and all(len(c.data) <= 1 << 20 for c in chunks)
    asm = StreamAssembler(header)
    for c in chunks:
        asm.add(c)
    np.testing.assert_array_equal(asm.array(header.values), big.numpy())
    np.testing.assert_array_equal(asm.array(header.positions), small.numpy())


def test_a_stream_that_overruns_or_ends_short_is_an_error_not_a_wrong_array():
    """The assembler sizes each stream from the header; too many bytes or too few raise."""
    sink = convert.TensorSink(inline_budget=0, chunk_bytes=1000)
    header = cpb.CaptureResult(site="x")
    sink.put(header.values, torch.randn(10, 100))  # 4,000 bytes, 4 chunks
    chunks = list(sink.chunks())
    short = StreamAssembler(header)
    for c in chunks[:-1]:
        short.add(c)
    with pytest.raises(ValueError, match="ended after 3000 of 4000 bytes"):
        short.array(header.values)
    over = StreamAssembler(header)
    for c in chunks:
        over.add(c)
    with pytest.raises(ValueError, match="sent 5000 bytes for a tensor of 4000"):
        over.add(chunks[0])
    bf16 = cpb.CaptureResult(site="y")
    sink2 = convert.TensorSink(inline_budget=0, chunk_bytes=64)
    value = torch.randn(3, 50).to(torch.bfloat16)
    sink2.put(bf16.values, value)
    asm = StreamAssembler(bf16)
    for c in sink2.chunks():
        asm.add(c)
    np.testing.assert_array_equal(asm.array(bf16.values), value.float().numpy())


@pytest.mark.parametrize("response", [ipb.ForwardResponse, ipb.AblateResponse, spb.EncodeResponse])
def test_encoded_chunks_are_the_serialized_chunk_messages(response):
    """Chunks written from the tensor's buffer are byte-identical to serializing the messages,
    and the client's in-place decoder reads them back (and parses anything else normally)."""
    sink = convert.TensorSink(inline_budget=0, chunk_bytes=300)
    header = cpb.CaptureResult(site="x")
    for n in (1000, 7, 130):  # several streams; the last chunk of each is short
        sink.put(header.values if n == 1000 else header.indices, torch.randn(n))
    encoded = list(sink.encoded_chunks(response))
    assert encoded == [response(chunk=c).SerializeToString() for c in sink.chunks()]
    decode = chunk_decoder(response)
    for raw, want in zip(encoded, sink.chunks(), strict=True):
        got = decode(raw)
        assert isinstance(got, RawChunk)
        assert got.stream_id == want.stream_id and bytes(got.data) == want.data
    head = response(
        header=response.DESCRIPTOR.fields_by_name["header"].message_type._concrete_class()
    )
    assert decode(head.SerializeToString()) == head
    # a chunk message with a field this client does not know still decodes in place
    odd = response(chunk=cpb.TensorChunk(stream_id=3, data=b"abc")).SerializeToString()
    inner = b"\x08\x03\x12\x03abc\x18\x05"  # + unknown varint field 3
    odd = odd[:1] + bytes([len(inner)]) + inner
    got = decode(odd)
    assert isinstance(got, RawChunk) and got.stream_id == 3 and bytes(got.data) == b"abc"


def test_a_large_capture_round_trips_byte_exactly_through_the_in_place_path():
    """Server slices -> serialized chunks -> in-place decode -> preallocated array: every dtype
    arrives bit for bit (NaNs and signed zeros included)."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int64):
        t = (torch.randn(64, 1031) * 1e3).to(dtype)
        if dtype.is_floating_point:
            t.view(-1)[:3] = torch.tensor([float("nan"), -0.0, float("inf")], dtype=dtype)
        sink = convert.TensorSink(inline_budget=0, chunk_bytes=4096)
        header = ipb.ForwardHeader(captures=[cpb.CaptureResult(site="x")])
        sink.put(header.captures[0].values, t)
        decode = chunk_decoder(ipb.ForwardResponse)
        parts = [decode(ipb.ForwardResponse(header=header).SerializeToString())]
        parts += [decode(raw) for raw in sink.encoded_chunks(ipb.ForwardResponse)]
        asm = assemble(parts)
        got = asm.array(asm.header.captures[0].values)
        if dtype == torch.bfloat16:
            want_bits = t.view(torch.int16).numpy().astype(np.uint32) << 16
            assert np.array_equal(got.view(np.uint32), want_bits & 0xFFFFFFFF)
        else:
            assert got.tobytes() == t.numpy().tobytes()


def test_bad_tensors_are_invalid_arguments():
    """Byte counts that do not match the shape, unknown dtypes and streamed request tensors fail."""
    for msg in (
        cpb.Tensor(dtype=cpb.DTYPE_FLOAT32, shape=[3], data=b"\0" * 8),
        cpb.Tensor(dtype=99, shape=[1], data=b"\0" * 4),
        cpb.Tensor(dtype=cpb.DTYPE_UNSPECIFIED, shape=[1], data=b"\0" * 4),
        cpb.Tensor(dtype=cpb.DTYPE_FLOAT32, shape=[-1], data=b""),
        cpb.Tensor(dtype=cpb.DTYPE_FLOAT32, shape=[1], stream_id=1),
    ):
        with pytest.raises(errors.InvalidArgumentError):
            convert.tensor_from_pb(msg)


def test_forward_request_to_spec():
    """Client builders produce requests that convert to exactly the intended spec."""
    req = ipb.ForwardRequest(
        prompts=[prompt_pb("hi"), prompt_pb([1, 2, 3])],
        captures=[
            capture_pb(
                Capture(
                    "blocks.0.mlp.hook_post",
                    positions=(-1,),
                    units=(4, 5),
                    top_k=3,
                    top_k_mode="abs",
                    dtype="float16",
                )
            ),
            capture_pb("logits"),
        ],
        interventions=[
            iv.zero("blocks.1.attn.hook_z[head=2,pos=-1]").to_pb(),
            iv.add("blocks.0.hook_resid_post", [1.0, 2.0], coeff=0.5).to_pb(),
            iv.scale("blocks.0.hook_resid_pre[pos=0:2]", 2.0, backward=True).to_pb(),
            iv.patch("blocks.0.hook_resid_pre", 1).to_pb(),
            iv.zero("blocks.0.attn.hook_pattern[3,pos=14,key=2]").to_pb(),
        ],
        top_k=0,
    )
    spec = convert.forward_spec_from_pb(req)
    assert spec.prompts == (specs.Prompt(text="hi"), specs.Prompt(token_ids=(1, 2, 3)))
    assert spec.captures[0] == specs.Capture(
        "blocks.0.mlp.hook_post", (-1,), (4, 5), specs.TopK(3, specs.TopKMode.ABS), torch.float16
    )
    assert spec.captures[1] == specs.Capture("logits")
    z, add, scale, patch, pair = spec.interventions
    assert z == specs.Intervention("blocks.1.attn.hook_z", specs.Zero(), (-1,), (2,))
    assert pair == specs.Intervention(
        "blocks.0.attn.hook_pattern", specs.Zero(), (14,), (3,), key_positions=(2,)
    )
    assert isinstance(add.op, specs.AddVector) and add.op.coeff == 0.5
    assert torch.equal(add.op.vector, torch.tensor([1.0, 2.0]))
    assert scale.pass_ is specs.Pass.BACKWARD and scale.positions == (0, 1)
    assert patch.op == specs.PatchFrom(1)
    assert spec.top_k == 0 and spec.logit_positions == (-1,) and spec.prepend_bos is None
    assert convert.forward_spec_from_pb(ipb.ForwardRequest(prompts=[prompt_pb("x")])).top_k == 10


def test_intervention_without_operation_is_refused():
    with pytest.raises(errors.InvalidArgumentError, match="no operation"):
        convert.intervention_from_pb(cpb.Intervention(site="blocks.0.hook_resid_pre"))


def test_typed_client_values_and_node_messages():
    """Typed interventions and losses give the messages a power user would build by hand; a
    node-table node converts to a message with its key, kind and the deprecated flat fields,
    which the client reads back into the same key."""
    from tdb.v1 import attribution_pb2 as apb
    from tdb_client import losses
    from tdb_client.client import node_from_pb
    from tdb_core import nodes

    assert iv.scale("blocks.0.attn.hook_z[head=1|2,pos=-1]", 0.5).to_pb() == cpb.Intervention(
        site="blocks.0.attn.hook_z",
        units=[1, 2],
        positions=[-1],
        scale=cpb.ScaleOp(factor=0.5),
        **{"pass": cpb.PASS_FORWARD},
    )
    assert losses.loss_pb(losses.neuron(1, 42, 5)) == (
        "neuron",
        apb.NeuronTrace(layer=1, neuron=42, position=5),
    )
    raw = apb.HeadTrace(layer=0, head=1, key_position=2, through=apb.THROUGH_Q)
    assert losses.loss_pb(raw) == ("head", raw)
    with pytest.raises(TypeError):
        iv.intervention_pb("blocks.0.hook_resid_pre")
    for node in (
        nodes.attn_head(0, 3, 14, 2),
        nodes.attn_head(1, 2, 7),
        nodes.mlp_neuron(1, 42, 5),
        nodes.sae_latent("a.b", 7, 5),
        nodes.embedding(4),
    ):
        msg = convert.node_to_pb(node)
        assert msg.key == node.key and msg.family == str(node.kind) and msg.name == node.label
        assert cpb.NodeKind.Name(msg.kind) == "NODE_KIND_" + node.kind.name
        got = node_from_pb(msg)
        assert (got.key, str(got.kind), got.unit, got.position) == (
            node.key,
            str(node.kind),
            node.unit,
            node.position,
        )
    legacy = apb.Node(name="attn_L0_H3@14<-2")  # an earlier server: no key, only the name
    assert node_from_pb(legacy).key == "blocks.0.attn.hook_pattern[3,pos=14,key=2]"
