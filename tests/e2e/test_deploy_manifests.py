"""The Kubernetes manifests in deploy/k8s agree with each other and with `tdb serve`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def load() -> dict[str, dict]:
    docs = {}
    for name in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]:
        doc = yaml.safe_load((K8S / name).read_text())
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
    assert ports == {"grpc": 50051, "metrics": 9090}
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
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
