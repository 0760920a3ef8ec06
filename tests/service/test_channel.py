"""The client's channel setup: replica targets, and a retry policy that covers every RPC."""

from __future__ import annotations

import json

import pytest
from google.protobuf import descriptor_pool

from services.server import SERVICE_NAMES
from tdb_client.channel import NOT_RETRIED, replicas_target, service_config


def test_retry_policy_covers_every_rpc_but_state_changing_ones():
    """The service config balances round-robin and retries UNAVAILABLE (5 attempts) for every
    method of every service the server registers, except LoadSae; a new service or RPC that the
    client does not know fails this test."""
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (mc,) = config["methodConfig"]
    policy = mc["retryPolicy"]
    assert policy["maxAttempts"] == 5 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    covered = {f"{n['service']}/{n['method']}" for n in mc["name"]}
    served = {
        f"{name}/{m.name}"
        for name in SERVICE_NAMES
        for m in descriptor_pool.Default().FindServiceByName(name).methods
    }
    assert covered == served - NOT_RETRIED
    assert "tdb.v1.SaeService/LoadSae" in NOT_RETRIED
    assert "methodConfig" not in json.loads(service_config(max_attempts=1))


def test_replica_targets():
    """Lists of replicas become one ipv4:/ipv6: target; names resolve and set the authority."""
    assert replicas_target(["10.0.0.1:50051", "10.0.0.2:50052"]) == (
        "ipv4:10.0.0.1:50051,10.0.0.2:50052",
        None,
    )
    assert replicas_target(["[::1]:7000", "[fe80::2]:7001"]) == (
        "ipv6:[::1]:7000,[fe80::2]:7001",
        None,
    )
    uri, authority = replicas_target(["localhost:9000", "127.0.0.1:9001"])
    assert authority == "localhost" and uri.startswith("ipv4:") and uri.endswith(",127.0.0.1:9001")
    assert "127.0.0.1:9000" in uri
    for bad in (["no-port"], ["[::1]"], []):
        with pytest.raises(ValueError):
            replicas_target(bad)
