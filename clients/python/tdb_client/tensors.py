"""Tensor messages to NumPy arrays, including tensors streamed as chunks after a header."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from google.protobuf.message import Message

from tdb.v1 import common_pb2 as cpb

_NP_DTYPES = {
    cpb.DTYPE_FLOAT32: np.dtype("<f4"),
    cpb.DTYPE_FLOAT16: np.dtype("<f2"),
    cpb.DTYPE_FLOAT64: np.dtype("<f8"),
    cpb.DTYPE_INT64: np.dtype("<i8"),
    cpb.DTYPE_INT32: np.dtype("<i4"),
    cpb.DTYPE_BOOL: np.dtype("bool"),
}


def to_numpy(msg: cpb.Tensor, data: bytes | bytearray | None = None) -> np.ndarray:
    """Decode a Tensor (bfloat16 widens to float32, exactly). ``data`` overrides ``msg.data``."""
    raw = msg.data if data is None else data
    shape = tuple(msg.shape)
    if msg.dtype == cpb.DTYPE_BFLOAT16:
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=_NP_DTYPES[msg.dtype]).reshape(shape)


def from_numpy(arr: np.ndarray) -> cpb.Tensor:
    """Encode an array as a Tensor (float64 is sent as float64; cast first if you want float32)."""
    arr = np.ascontiguousarray(arr)
    for code, dt in _NP_DTYPES.items():
        if arr.dtype == dt or arr.dtype == dt.newbyteorder("="):
            return cpb.Tensor(dtype=code, shape=list(arr.shape), data=arr.astype(dt).tobytes())
    raise TypeError(f"cannot send arrays of dtype {arr.dtype}")


def _tensors(msg: Message) -> Iterator[cpb.Tensor]:
    """Every Tensor inside a message, recursively."""
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        values = value if field.is_repeated else [value]
        for v in values:
            if isinstance(v, cpb.Tensor):
                yield v
            elif isinstance(v, Message):
                yield from _tensors(v)


def _nbytes(msg: cpb.Tensor) -> int | None:
    """The byte count a tensor's shape and dtype imply (None for an unknown dtype)."""
    itemsize = (
        2
        if msg.dtype == cpb.DTYPE_BFLOAT16
        else (_NP_DTYPES[msg.dtype].itemsize if msg.dtype in _NP_DTYPES else None)
    )
    return None if itemsize is None else int(np.prod(tuple(msg.shape), dtype=np.int64)) * itemsize


class StreamAssembler:
    """Collects TensorChunk data for a header's streamed tensors.

    Each streamed tensor's buffer is allocated once at its final size (known from the header's
    shape and dtype) and chunks are written into it in place; a stream that overruns its size, or
    ends short of it, is an error rather than a wrong array."""

    def __init__(self, header: Message) -> None:
        self.header = header
        self._data: dict[int, bytearray] = {}
        self._filled: dict[int, int] = {}
        for t in _tensors(header):
            if t.HasField("stream_id"):
                size = _nbytes(t)
                self._data[t.stream_id] = bytearray(size or 0)
                self._filled[t.stream_id] = 0 if size is not None else -1  # -1: grow as it comes

    def add(self, chunk: cpb.TensorChunk) -> None:
        sid = chunk.stream_id
        if sid not in self._data:
            raise ValueError(f"chunk for unknown stream id {sid}")
        start = self._filled[sid]
        if start < 0:
            self._data[sid] += chunk.data
            return
        data = chunk.data
        end = start + len(data)
        buf = self._data[sid]
        if end > len(buf):
            raise ValueError(f"stream {sid} sent {end} bytes for a tensor of {len(buf)}")
        memoryview(buf)[start:end] = data
        self._filled[sid] = end

    def array(self, msg: cpb.Tensor) -> np.ndarray:
        if msg.HasField("stream_id"):
            sid = msg.stream_id
            filled = self._filled.get(sid, -1)
            if filled >= 0 and filled != len(self._data[sid]):
                raise ValueError(
                    f"stream {sid} ended after {filled} of {len(self._data[sid])} bytes"
                )
            return to_numpy(msg, self._data[sid])
        return to_numpy(msg)


def assemble(
    responses: Iterable[Message], header_field: str = "header", chunk_field: str = "chunk"
) -> StreamAssembler:
    """Read a header-then-chunks response stream completely."""
    assembler: StreamAssembler | None = None
    for r in responses:
        which = r.WhichOneof("part")
        if which == header_field:
            assembler = StreamAssembler(getattr(r, header_field))
        elif which == chunk_field:
            if assembler is None:
                raise ValueError("chunk before header in response stream")
            assembler.add(getattr(r, chunk_field))
    if assembler is None:
        raise ValueError("response stream had no header")
    return assembler
