"""The Kubernetes manifests in deploy/k8s agree with each other and with `tdb serve`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def load_all() -> list[dict]:
    """Every resource the kustomization lists, in its order."""
    return [
        yaml.safe_load((K8S / name).read_text())
        for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    ]


def load(app: str = "tdb") -> dict[str, dict]:
    """The resources of one app (label app.kubernetes.io/name), by kind."""
    docs: dict[str, dict] = {}
    for doc in load_all():
        if doc["metadata"]["labels"]["app.kubernetes.io/name"] == app:
            assert doc["kind"] not in docs, f"two {doc['kind']}s for {app}"
            docs[doc["kind"]] = doc
    return docs


def test_configmap_settings_parse_as_tdb_serve_flags(monkeypatch: pytest.MonkeyPatch):
    """Every ConfigMap entry is a TDB_* variable that `tdb serve` reads, and together they give
    the intended Settings (models, device, metrics port, grace, auth)."""
    from services.cli import build_parser
    from services.settings import settings_from_args

    data = load()["ConfigMap"]["data"]
    settings_py = (Path(__file__).resolve().parents[2] / "services" / "settings.py").read_text()
    for key in data:
        assert key.startswith("TDB_") and (
            f'"{key[4:]}"' in settings_py  # _env("NAME", ...)
            or f'"{key}"' in settings_py
        ), key
        monkeypatch.setenv(key, data[key])
    s = settings_from_args(build_parser().parse_args(["serve"]))
    assert (s.host, s.port, s.metrics_port, s.device) == ("0.0.0.0", 50051, 9090, "cuda")
    assert s.http_port == 8080
    assert [(m.name, m.source) for m in s.models] == [("gpt2", "/models/gpt2")]
    assert s.auth_token_file == "/etc/tdb/auth/tokens" and s.grace_seconds == 40


def test_deployment_service_and_autoscaler_fit_together():
    """The Deployment asks for a GPU, probes the gRPC health service on its gRPC port, leaves time
    for the grace period, mounts the token file the ConfigMap names; the headless Service selects
    its pods; the HPA scales it on queue depth; the PDB covers it."""
    docs = load()
    dep, svc, hpa, pdb = (
        docs["Deployment"],
        docs["Service"],
        docs["HorizontalPodAutoscaler"],
        docs["PodDisruptionBudget"],
    )
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9090, "http": 8080}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == ports["grpc"], probe
    data = docs["ConfigMap"]["data"]
    assert c["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    stop_delay = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > stop_delay + float(
        data["TDB_GRACE_SECONDS"]
    )
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(Path(data["TDB_AUTH_TOKEN_FILE"]).parent) in mounts
    labels = pod["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for p in svc["spec"]["ports"]} == set(ports.values())
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "tdb_queue_depth"
    assert int(data["TDB_METRICS_PORT"]) == ports["metrics"]
    assert int(data["TDB_HTTP_PORT"]) == ports["http"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_grpc_web_envoy_fronts_the_replicas():
    """The Envoy edge parses, and its pieces fit: the listener port is the container's and the
    Service's target; filters grpc_web, cors, router in that order; RPC paths go to a round-robin
    HTTP/2 cluster over the headless Service's gRPC port with a gRPC health check, without a route
    timeout and honouring grpc-timeout; other paths to the replicas' HTTP port (the web app); CORS
    allows the headers gRPC-Web clients send and exposes the status headers."""
    tdb = load()
    edge = load("tdb-grpc-web")
    cm, dep, svc = edge["ConfigMap"], edge["Deployment"], edge["Service"]
    config = yaml.safe_load(cm["data"]["envoy.yaml"])
    (listener,) = config["static_resources"]["listeners"]
    port = listener["address"]["socket_address"]["port_value"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (volume,) = dep["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["args"][container["args"].index("--config-path") + 1] == f"{mount}/envoy.yaml"

    ((hcm,),) = [
        [f["typed_config"] for f in chain["filters"]] for chain in listener["filter_chains"]
    ]
    assert hcm["@type"].endswith("http_connection_manager.v3.HttpConnectionManager")
    filters = [
        (f["name"], f["typed_config"]["@type"].rsplit(".", 1)[-1]) for f in hcm["http_filters"]
    ]
    assert filters == [
        ("envoy.filters.http.grpc_web", "GrpcWeb"),
        ("envoy.filters.http.cors", "Cors"),
        ("envoy.filters.http.router", "Router"),
    ]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    cors = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    allowed = {h.strip() for h in cors["allow_headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "grpc-timeout",
        "x-grpc-web",
        "x-user-agent",
    } <= allowed
    exposed = {h.strip() for h in cors["expose_headers"].split(",")}
    assert {"grpc-status", "grpc-message", "x-request-id"} <= exposed
    routes = {r["name"]: r for r in vhost["routes"]}
    assert vhost["routes"][-1]["name"] == "web-app"  # the catch-all comes last
    rpc = routes["rpc"]
    assert rpc["match"] == {"prefix": "/tdb.v1."}
    assert rpc["route"]["timeout"] == "0s"
    assert rpc["route"]["max_stream_duration"]["grpc_timeout_header_max"] == "0s"

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    grpc_cluster = clusters[rpc["route"]["cluster"]]
    assert (grpc_cluster["type"], grpc_cluster["lb_policy"]) == ("STRICT_DNS", "ROUND_ROBIN")
    options = grpc_cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert "grpc_health_check" in grpc_cluster["health_checks"][0]
    service_ports = {p["name"]: p["port"] for p in tdb["Service"]["spec"]["ports"]}
    assert tdb["Service"]["spec"]["clusterIP"] == "None"  # DNS returns every pod: per-pod balance

    def address(cluster: dict) -> tuple[str, int]:
        ((endpoint,),) = [
            [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]]
            for group in cluster["load_assignment"]["endpoints"]
        ]
        return endpoint["address"], endpoint["port_value"]

    assert address(grpc_cluster) == (tdb["Service"]["metadata"]["name"], service_ports["grpc"])
    web_cluster = clusters[routes["web-app"]["route"]["cluster"]]
    assert address(web_cluster) == (tdb["Service"]["metadata"]["name"], service_ports["http"])
    assert clusters[routes["health"]["route"]["cluster"]] is grpc_cluster
