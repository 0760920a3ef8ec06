"""Tensor messages to NumPy arrays, including tensors streamed as chunks after a header.

Streamed tensors are read with as few copies as the platform allows: :func:`chunk_decoder` is a
response deserializer that reads a chunk message's bytes in place (a :class:`RawChunk` holding a
view of the bytes gRPC received, no protobuf object), and :class:`StreamAssembler` copies each
chunk once, into an array allocated at its final size from the header's shape and dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import Message

from tdb.v1 import common_pb2 as cpb

_NP_DTYPES: dict[cpb.DType, np.dtype[Any]] = {
    cpb.DTYPE_FLOAT32: np.dtype("<f4"),
    cpb.DTYPE_FLOAT16: np.dtype("<f2"),
    cpb.DTYPE_FLOAT64: np.dtype("<f8"),
    cpb.DTYPE_INT64: np.dtype("<i8"),
    cpb.DTYPE_INT32: np.dtype("<i4"),
    cpb.DTYPE_BOOL: np.dtype("bool"),
}


def to_numpy(
    msg: cpb.Tensor, data: bytes | bytearray | np.ndarray[Any, Any] | None = None
) -> np.ndarray[Any, Any]:
    """Decode a Tensor (bfloat16 widens to float32, exactly). ``data`` overrides ``msg.data``."""
    raw: bytes | bytearray | np.ndarray[Any, Any] = msg.data if data is None else data
    shape = tuple(msg.shape)
    if msg.dtype == cpb.DTYPE_BFLOAT16:
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=_NP_DTYPES[msg.dtype]).reshape(shape)


def from_numpy(arr: np.ndarray[Any, Any]) -> cpb.Tensor:
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


@dataclass(frozen=True, slots=True)
class RawChunk:
    """A TensorChunk read in place: ``data`` is a view of the received message's bytes."""

    stream_id: int
    data: memoryview


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _skip_field(buf: memoryview, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = _read_varint(buf, pos)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire_type}")


def _raw_chunk(raw: bytes, chunk_key: int) -> RawChunk | None:
    """The chunk of a serialized response whose only field is its ``chunk`` (key ``chunk_key``),
    read without copying its data; None for anything else (the caller parses it normally)."""
    buf = memoryview(raw)
    try:
        key, pos = _read_varint(buf, 0)
        if key != chunk_key:
            return None
        size, pos = _read_varint(buf, pos)
        if pos + size != len(buf):
            return None
        stream_id, data = 0, buf[pos:pos]
        while pos < len(buf):
            key, pos = _read_varint(buf, pos)
            if key == 0x08:  # stream_id, varint
                stream_id, pos = _read_varint(buf, pos)
            elif key == 0x12:  # data, length-delimited
                n, pos = _read_varint(buf, pos)
                data = buf[pos : pos + n]
                pos += n
            else:
                pos = _skip_field(buf, pos, key & 7)
        if pos != len(buf):
            return None
        return RawChunk(stream_id & 0xFFFFFFFF, data)
    except (ValueError, IndexError):
        return None


def chunk_decoder(response: type[Message]) -> Callable[[bytes], Any]:
    """A response deserializer for a header-then-chunks stream of ``response`` messages: chunk
    messages become :class:`RawChunk` (a view of the received bytes, no copy), anything else is
    parsed as ``response``."""
    chunk_key = response.DESCRIPTOR.fields_by_name["chunk"].number << 3 | 2
    parse = response.FromString

    def decode(raw: bytes) -> Any:
        chunk = _raw_chunk(raw, chunk_key)
        return parse(raw) if chunk is None else chunk

    return decode


class StreamAssembler:
    """Collects TensorChunk data for a header's streamed tensors.

    Each streamed tensor's buffer is allocated once at its final size (known from the header's
    shape and dtype, not zero-filled) and each chunk is copied into it in place; a stream that
    overruns its size, or ends short of it, is an error rather than a wrong array."""

    def __init__(self, header: Message) -> None:
        self.header = header
        self._data: dict[int, np.ndarray[Any, Any] | bytearray] = {}
        self._filled: dict[int, int] = {}
        for t in _tensors(header):
            if t.HasField("stream_id"):
                size = _nbytes(t)
                if size is None:  # unknown dtype: grow as it comes
                    self._data[t.stream_id] = bytearray()
                    self._filled[t.stream_id] = -1
                else:
                    self._data[t.stream_id] = np.empty(size, dtype=np.uint8)
                    self._filled[t.stream_id] = 0

    def add(self, chunk: cpb.TensorChunk | RawChunk) -> None:
        sid = chunk.stream_id
        if sid not in self._data:
            raise ValueError(f"chunk for unknown stream id {sid}")
        start = self._filled[sid]
        buf = self._data[sid]
        if isinstance(buf, bytearray):  # unknown size
            buf += chunk.data
            return
        data = chunk.data
        end = start + len(data)
        if end > len(buf):
            raise ValueError(f"stream {sid} sent {end} bytes for a tensor of {len(buf)}")
        buf[start:end] = np.frombuffer(data, dtype=np.uint8)
        self._filled[sid] = end

    def array(self, msg: cpb.Tensor) -> np.ndarray[Any, Any]:
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
    responses: Iterable[Any], header_field: str = "header", chunk_field: str = "chunk"
) -> StreamAssembler:
    """Read a header-then-chunks response stream completely (messages, or what
    :func:`chunk_decoder` makes of them)."""
    assembler: StreamAssembler | None = None
    for r in responses:
        if isinstance(r, RawChunk):
            if assembler is None:
                raise ValueError("chunk before header in response stream")
            assembler.add(r)
            continue
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
