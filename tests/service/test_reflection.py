"""Server reflection answers what grpcurl asks: services, then any symbol, methods included."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


@pytest.fixture()
def channel(service):
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        yield ch


def test_lists_every_service(channel):
    """`grpcurl list`: the tdb.v1 services, health and reflection itself."""
    names = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"tdb.v1.InferenceService", "tdb.v1.ModelService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("tdb.v1.InferenceService.Forward", "tdb/v1/inference.proto"),
        ("tdb.v1.ModelService.Tokenize", "tdb/v1/model.proto"),
        ("grpc.health.v1.Health.Check", "grpc_health/v1/health.proto"),
        ("tdb.v1.InferenceService", "tdb/v1/inference.proto"),
        ("tdb.v1.ForwardRequest", "tdb/v1/inference.proto"),
    ],
)
def test_resolves_symbols_including_methods(channel, symbol, file):
    """`grpcurl describe SERVICE.METHOD`: a method symbol resolves to its service's file (a fresh
    database each time, so nothing is answered from an earlier lookup's cache)."""
    db = ProtoReflectionDescriptorDatabase(channel)
    assert db.FindFileContainingSymbol(symbol).name == file


def test_method_descriptor_through_reflection_alone(channel):
    """A descriptor pool fed only by reflection describes Forward's request and response."""
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindMethodByName("tdb.v1.InferenceService.Forward")
    assert method.input_type.full_name == "tdb.v1.ForwardRequest"
    assert method.server_streaming


def test_unknown_symbol_is_not_found(channel):
    """A symbol nobody defines is still not found (and a method name on a real service that does
    not exist is not made up)."""
    db = ProtoReflectionDescriptorDatabase(channel)
    for symbol in ("tdb.v1.Nope", "tdb.v1.InferenceService.Nope"):
        with pytest.raises(KeyError):
            db.FindFileContainingSymbol(symbol)
