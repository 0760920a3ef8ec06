"""SaeService: attached SAEs — list, encode, decode, load at runtime under --sae-root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import sae_pb2 as spb
from tdb.v1 import sae_pb2_grpc as spb_grpc
from tdb_core import checks
from tdb_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tdb_core.ops import encode as sae_encode
from tdb_core.sae import load_sae
from tdb_core.sae.saelens_format import CFG_FILENAME, WEIGHTS_FILENAME


class SaeServicer(spb_grpc.SaeServiceServicer):
    def __init__(self, models: ModelRegistry, sae_root: str | None = None) -> None:
        self.models = models
        self.sae_root = Path(sae_root).resolve() if sae_root else None

    def ListSaes(
        self, request: spb.ListSaesRequest, context: grpc.ServicerContext
    ) -> spb.ListSaesResponse:
        runners = [self.models.get(request.model)] if request.model else self.models.all()
        return spb.ListSaesResponse(
            saes=[convert.sae_info_to_pb(r.name, a) for r in runners for a in r.saes.values()]
        )

    def Encode(
        self, request: spb.EncodeRequest, context: grpc.ServicerContext
    ) -> Iterator[spb.EncodeResponse | bytes]:  # bytes: pre-serialized chunks
        runner = self.models.get(request.model)
        if request.WhichOneof("input") == "activations":  # refused before the bytes are copied
            sae_encode.check_activations_shape(
                runner, request.sae, list(request.activations.values.shape)
            )
        spec = convert.encode_spec_from_pb(request)
        note(model=runner.name, sae=spec.sae)
        result = sae_encode.encode(runner, spec)
        note(tokens=int(result.l0.numel()))
        sink = convert.TensorSink()
        header = convert.encode_header_to_pb(runner.name, spec.sae, result, sink)
        yield spb.EncodeResponse(header=header)
        yield from sink.encoded_chunks(spb.EncodeResponse)

    def Decode(
        self, request: spb.DecodeRequest, context: grpc.ServicerContext
    ) -> spb.DecodeResponse:
        runner = self.models.get(request.model)
        note(model=runner.name, sae=request.sae)
        latents = convert.tensor_from_pb(request.latents, "latents").float()
        vectors = sae_encode.decode(runner, sae_encode.DecodeSpec(request.sae, latents))
        sink = convert.TensorSink(inline_budget=runner.limits.max_response_bytes)
        msg = spb.DecodeResponse()
        sink.put(msg.vectors, vectors.float())
        return msg

    def LoadSae(
        self, request: spb.LoadSaeRequest, context: grpc.ServicerContext
    ) -> spb.LoadSaeResponse:
        if self.sae_root is None:
            raise FailedPreconditionError(
                "loading SAEs at runtime is disabled; start the server "
                "with --sae-root DIR to allow paths under DIR"
            )
        runner = self.models.get(request.model)
        if not request.id or not request.path:
            raise InvalidArgumentError("LoadSae needs an id and a path")
        if "\x00" in request.path:
            raise InvalidArgumentError(
                "LoadSae: the path contains a NUL character; give a "
                "relative path under the server's --sae-root"
            )
        checks.name_length(request.id, "SAE id")
        path = confined_path(self.sae_root, request.path)
        note(model=runner.name, sae=request.id)
        try:
            sae = load_sae(path, site=request.site or None, device=str(runner.device))
        except (InvalidArgumentError, NotFoundError) as e:  # name files relative to the root
            raise type(e)(e.message.replace(f"{self.sae_root}{os.sep}", "")) from None
        relative = os.path.relpath(path, self.sae_root)
        attached = runner.saes.attach(request.id, sae, relative, request.site or None)
        return spb.LoadSaeResponse(sae=convert.sae_info_to_pb(runner.name, attached))


#: Longest LoadSae path, and longest component of it (most file systems refuse longer names).
MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255


def confined_path(root: Path, requested: str) -> Path:
    """The resolved path of ``requested`` under ``root``, with every file an SAE load will open
    resolved too: a symlink anywhere that leads outside the root is refused, as are over-long
    paths and symlink loops (INVALID_ARGUMENT); NOT_FOUND when nothing is there. Messages quote
    the path as given, never a resolved one."""
    shown = checks.quote(requested)
    if len(requested) > MAX_PATH_CHARS or any(
        len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in requested.split("/")
    ):
        raise InvalidArgumentError(
            f"path {shown} is too long (at most {MAX_PATH_CHARS} characters, "
            f"{MAX_NAME_BYTES} bytes a component)"
        )

    def resolve(p: Path) -> Path:
        try:
            return p.resolve(strict=False)
        except (RuntimeError, OSError) as e:  # a symlink loop, a name the system refuses
            raise InvalidArgumentError(
                f"path {shown} cannot be resolved ({type(e).__name__}: a symlink loop?); give a "
                "plain path under the server's --sae-root"
            ) from None

    def inside(p: Path) -> bool:
        return p == root or root in p.parents

    path = resolve(root / requested)
    if not inside(path):
        raise InvalidArgumentError(f"path {shown} is outside the server's --sae-root")
    try:
        exists = path.exists()
        is_dir = path.is_dir()
    except OSError:
        exists = is_dir = False
    if not exists:
        raise NotFoundError(f"no SAE at {shown} under the server's --sae-root")
    folder = path if is_dir else path.parent
    opened = (
        [folder / CFG_FILENAME, folder / WEIGHTS_FILENAME]
        if is_dir or path.name in (CFG_FILENAME, WEIGHTS_FILENAME)
        else [path]
    )
    for f in opened:
        if (f.exists() or f.is_symlink()) and not inside(resolve(f)):
            raise InvalidArgumentError(
                f"path {shown}: {f.name} leads outside the server's --sae-root (a symlink); "
                "every file of an SAE must be under the root"
            )
    return path
