"""Converters: tensors round-trip bit-exactly (also through the chunked stream), request
messages become the intended domain specs, absent fields become None."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services import convert
from tdb.v1 import common_pb2 as cpb
from tdb.v1 import inference_pb2 as ipb
from tdb_client import interventions as iv
from tdb_client.client import capture_pb, prompt_pb
from tdb_client.tensors import StreamAssembler, from_numpy, to_numpy
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
