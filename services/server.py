"""Server bootstrap. ``build_server`` makes a started server; ``serve`` owns signals and shutdown."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
import torch
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import adapters
from services.auth import BearerTokenAuthorizer, read_tokens, server_credentials
from services.interceptors import InFlight, ServiceInterceptor
from services.logs import configure_logging, get_logger
from services.metrics import Metrics
from services.reflection import enable_server_reflection
from services.registry import ModelRegistry
from services.servicers.attribution import AttributionServicer
from services.servicers.explain import ExplainServicer, ExplainSetup
from services.servicers.inference import InferenceServicer
from services.servicers.model import ModelServicer
from services.servicers.sae import SaeServicer
from services.servicers.server import ServerFeatures, ServerServicer
from services.settings import ModelSource, SaeSource, Settings
from services.web import HttpServer, build_web_app
from tdb.v1 import (
    attribution_pb2,
    attribution_pb2_grpc,
    explain_pb2,
    explain_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    sae_pb2,
    sae_pb2_grpc,
    server_pb2,
    server_pb2_grpc,
)
from tdb_core.cache import PromptCache
from tdb_core.errors import InvalidArgumentError
from tdb_core.memory import reuse_freed_memory
from tdb_core.runner import ModelRunner
from tdb_core.sae import load_sae

SERVICE_NAMES = (
    model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    attribution_pb2.DESCRIPTOR.services_by_name["AttributionService"].full_name,
    sae_pb2.DESCRIPTOR.services_by_name["SaeService"].full_name,
    explain_pb2.DESCRIPTOR.services_by_name["ExplainService"].full_name,
    server_pb2.DESCRIPTOR.services_by_name["ServerService"].full_name,
)

#: Threads kept, beyond ``--workers``, for what load shedding never refuses (health checks,
#: reflection) and for refusing excess calls at once.
RESERVED_THREADS = 4
#: gRPC's own bound on calls in progress (running or waiting for a thread), a backstop above the
#: in-flight limit: excess calls are refused by our handler long before it is reached.
QUEUE_BACKSTOP = 64

#: How often the main thread wakes to run a signal handler that another thread received.
_SIGNAL_POLL_S = 0.2
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_model_sources() -> tuple[ModelSource, ...]:
    """The embedded toy model, shipped in the package."""
    from tdb_core.toy import TOY_MODEL_DIR, TOY_MODEL_NAME

    return (ModelSource(TOY_MODEL_NAME, str(TOY_MODEL_DIR)),)


def default_sae_sources() -> tuple[SaeSource, ...]:
    """The SAE shipped with the embedded toy model, when present."""
    from tdb_core.toy import TOY_SAE_DIR, TOY_SAE_ID

    if not TOY_SAE_DIR.exists():
        return ()
    return (SaeSource(None, TOY_SAE_ID, str(TOY_SAE_DIR), None),)


def load_models(settings: Settings) -> ModelRegistry:
    """Load every configured model (the embedded toy model when none is configured)."""
    log = get_logger("tdb.server")
    runners = []
    for m in settings.models or default_model_sources():
        log.info(
            "loading model",
            model=m.name,
            source=m.source,
            device=settings.device,
            dtype=settings.dtype,
        )
        loaded = adapters.load_model(m.name, m.source, settings.device, _DTYPES[settings.dtype])
        runners.append(ModelRunner(loaded, settings.limits))
    registry = ModelRegistry(runners, settings.default_model)
    saes = settings.saes if (settings.saes or settings.models) else default_sae_sources()
    for s in saes:
        runner = registry.get(s.model or "")
        log.info("attaching SAE", model=runner.name, sae=s.id, source=s.source, site=s.site)
        sae = load_sae(s.source, site=s.site, device=str(runner.device))
        runner.saes.attach(s.id, sae, s.source, s.site)
    return registry


def default_explanations_db() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "tdb", "explanations.sqlite")


def _serves_shipped_toy(models: ModelRegistry | None) -> bool:
    """Whether the embedded toy model is served under its own name (its explanations apply)."""
    from tdb_core import toy

    if models is None:
        return False
    shipped_dir = toy.TOY_MODEL_DIR.resolve()
    return any(
        r.loaded.name == toy.TOY_MODEL_NAME
        and os.path.isdir(r.loaded.source)
        and Path(r.loaded.source).resolve() == shipped_dir
        for r in models.all()
    )


def build_explain_setup(settings: Settings, models: ModelRegistry | None = None) -> ExplainSetup:
    """The explanation catalog (SQLite + shipped), the configured methods, the datasets.

    The shipped explanations of the embedded toy model join the catalog only when that model is
    served (by its name, from its shipped directory); they would describe nothing otherwise."""
    from tdb_core import toy
    from tdb_core.explain import engine
    from tdb_core.explain.store import ExplanationStore

    path = settings.explanations_db or default_explanations_db()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    shipped = (
        engine.Catalog.load_shipped(toy.TOY_EXPLANATIONS)
        if toy.TOY_EXPLANATIONS.exists() and _serves_shipped_toy(models)
        else []
    )
    catalog = engine.Catalog(ExplanationStore(path), shipped)
    methods: dict[str, engine.Method] = {}
    for spec in settings.explainers:
        kind, _, arg = spec.partition(":")
        if kind == "baseline":
            methods["baseline"] = engine.baseline_method()
        elif kind == "hf" and arg:
            from tdb_core.explain.backends import HFLocalBackend

            device = (
                "cuda"
                if settings.device == "auto" and torch.cuda.is_available()
                else ("cpu" if settings.device == "auto" else settings.device)
            )
            methods["hf"] = engine.llm_method("hf", HFLocalBackend(arg, device=device))
        elif kind == "openai" and arg:
            from tdb_core.explain.backends import OpenAICompatibleBackend

            if not settings.openai_base_url:
                raise InvalidArgumentError("--explainer openai:MODEL needs --openai-base-url")
            methods["openai"] = engine.llm_method(
                "openai",
                OpenAICompatibleBackend(
                    settings.openai_base_url,
                    arg,
                    api_key=os.environ.get(settings.openai_api_key_env),
                ),
            )
        else:
            raise InvalidArgumentError(
                f"--explainer {spec!r}: use baseline, hf:PATH_OR_HUB_ID or openai:MODEL"
            )
    datasets: dict[str, Callable[[], Sequence[str] | str]] = {"toy": _toy_corpus}
    datasets.update({name: _returning(path) for name, path in settings.datasets})
    return ExplainSetup(catalog, methods, next(iter(methods)), datasets)


def _returning(path: str) -> Callable[[], str]:
    """A dataset given as a file: the explain servicer reads ``path`` when it is mined."""
    return lambda: path


def _queue_depth_of(runner: ModelRunner) -> Callable[[], float]:
    return lambda: runner.queue_depth


@functools.cache
def _toy_corpus() -> list[str]:
    """The held-out toy corpus (deterministic), the default dataset to mine."""
    from tdb_core.toy import corpus

    return list(corpus.iter_texts(corpus.generate(2000, seed=1, split="heldout")))


@dataclass
class Service:
    """A started server and the handles needed to stop it well."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    models: ModelRegistry
    metrics: Metrics | None = None  # with metrics.port set when /metrics is served
    http: HttpServer | None = None  # gRPC-Web and the web app, when --http-port is set
    local_dir: str | None = None  # holds the Unix socket the HTTP port calls the server on
    in_flight: InFlight | None = None  # RPCs running now (load shedding)

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight requests finish (up to ``grace`` s), stop."""
        self.set_serving(False)
        stopped = self.server.stop(grace)  # refuses new calls (the HTTP port's too) at once
        if self.http is not None:
            self.http.stop(grace)  # in-flight gRPC-Web calls drain with the gRPC ones
        stopped.wait()
        if self.metrics is not None:
            self.metrics.close()
        if self.local_dir is not None:
            shutil.rmtree(self.local_dir, ignore_errors=True)


def attach_prompt_cache(models: ModelRegistry, max_bytes: int) -> PromptCache | None:
    """Give every model that has none one prompt cache of ``max_bytes`` (a budget they share);
    none when ``max_bytes`` is 0."""
    if max_bytes <= 0:
        return None
    cache = PromptCache(max_bytes)
    for runner in models.all():
        if runner.cache is None:
            runner.cache = cache
    return cache


def build_server(settings: Settings, models: ModelRegistry | None = None) -> Service:
    """Build and start a server on ``settings.host:settings.port`` (port 0 picks a free one)."""
    reuse_freed_memory()  # captures keep activations alive: recycle their pages across requests
    models = models or load_models(settings)
    attach_prompt_cache(models, settings.cache_bytes)
    metrics = Metrics() if settings.metrics_port is not None else None
    authorize = (
        BearerTokenAuthorizer(read_tokens(settings.auth_token_file))
        if settings.auth_token_file
        else None
    )
    # Load shedding: at most --workers RPCs run at once and one more is UNAVAILABLE at once (the
    # interceptor's InFlight); the pool has RESERVED_THREADS more, so health checks and those
    # refusals never wait behind long requests.
    in_flight = InFlight(settings.max_workers)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=settings.max_workers + RESERVED_THREADS, thread_name_prefix="tdb-rpc"
        ),
        interceptors=[
            ServiceInterceptor(
                authorize=authorize,
                on_done=metrics.on_done if metrics else None,
                in_flight=in_flight,
            )
        ],
        options=[("grpc.max_receive_message_length", settings.max_request_bytes)],
        maximum_concurrent_rpcs=settings.max_workers + RESERVED_THREADS + QUEUE_BACKSTOP,
    )
    model_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(models), server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(models), server)
    explain_setup = build_explain_setup(settings, models)
    attribution_pb2_grpc.add_AttributionServiceServicer_to_server(
        AttributionServicer(models, explain_setup.catalog), server
    )
    explain_pb2_grpc.add_ExplainServiceServicer_to_server(
        ExplainServicer(models, explain_setup), server
    )
    sae_pb2_grpc.add_SaeServiceServicer_to_server(SaeServicer(models, settings.sae_root), server)
    features = ServerFeatures(
        auth=authorize is not None,
        tls=settings.tls_cert is not None,
        mutual_tls=settings.tls_client_ca is not None,
        metrics=metrics is not None,
        load_sae=settings.sae_root is not None,
        explanation_store=explain_setup.catalog.store is not None,
    )
    server_pb2_grpc.add_ServerServiceServicer_to_server(
        ServerServicer(
            models,
            features,
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
            {
                "max_request_bytes": settings.max_request_bytes,
                "max_in_flight": settings.max_workers,
            },
        ),
        server,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    port = (
        server.add_secure_port(
            address, server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        )
        if settings.tls_cert and settings.tls_key
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    local_dir = None
    if settings.http_port is not None:
        # The HTTP port calls this same server over a Unix socket in a private (0700) directory,
        # so gRPC-Web calls run through the same interceptor and servicers as native ones.
        local_dir = tempfile.mkdtemp(prefix="tdb-")
        local_target = f"unix:{local_dir}/grpc.sock"
        if server.add_insecure_port(local_target) == 0:
            raise OSError(f"cannot bind {local_target}")
    if metrics is not None and settings.metrics_port is not None:
        for runner in models.all():
            metrics.track_queue_depth(runner.name, _queue_depth_of(runner))
        caches = {id(r.cache): r.cache for r in models.all() if r.cache is not None}
        for cache in caches.values():
            metrics.track_prompt_cache(cache.stats)
        metrics.serve(settings.host, settings.metrics_port)
    server.start()
    http = None
    if settings.http_port is not None:
        app = build_web_app(
            local_target,
            settings.max_request_bytes,
            method_paths((*SERVICE_NAMES, health.SERVICE_NAME)),
            settings.cors_origins,
            settings.web_dir,
            f"{settings.host}:{port}",
            on_refused=metrics.on_done if metrics else None,
        )
        tls = (
            (settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            if settings.tls_cert and settings.tls_key
            else None
        )
        try:
            http = HttpServer(app, settings.host, settings.http_port, tls)
            http.start()
        except OSError as e:  # e.g. the port is taken: leave nothing running behind
            server.stop(None)
            assert local_dir is not None  # made above whenever http_port is set
            shutil.rmtree(local_dir, ignore_errors=True)
            raise OSError(
                f"cannot serve HTTP on {settings.host}:{settings.http_port}: {e.strerror or e}"
            ) from e
    service = Service(server, port, health_servicer, models, metrics, http, local_dir, in_flight)
    service.set_serving(True)
    return service


def _url_host(host: str) -> str:
    """A host for a URL a person can open: the wildcard addresses mean this machine."""
    if host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def method_paths(service_names: tuple[str, ...]) -> frozenset[str]:
    """``/package.Service/Method`` for every method of the named services."""
    pool = descriptor_pool.Default()
    return frozenset(
        f"/{name}/{m.name}" for name in service_names for m in pool.FindServiceByName(name).methods
    )


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully: NOT_SERVING, drain, exit 0."""
    configure_logging(settings.log_format, settings.log_level)
    log = get_logger("tdb.server")
    stop = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not serving.is_set():  # still loading models: nothing to drain, stop now
            raise SystemExit(128 + signum)
        log.info(
            "shutting down", signal=signal.Signals(signum).name, grace_s=settings.grace_seconds
        )
        stop.set()

    # Installed before the server accepts anything: a SIGTERM that arrives while the first
    # requests run must drain them, not kill the process with the default action.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = build_server(settings)
    serving.set()
    log.info(
        "serving",
        address=f"{settings.host}:{service.port}",
        models=[r.name for r in service.models.all()],
        default=service.models.default,
        tls=settings.tls_cert is not None,
        auth=settings.auth_token_file is not None,
        metrics_address=(f"{settings.host}:{service.metrics.port}" if service.metrics else None),
        http_address=(f"{settings.host}:{service.http_port}" if service.http else None),
        web_url=(
            f"{service.http.scheme}://{_url_host(settings.host)}:{service.http_port}/"
            if service.http
            else None
        ),
    )
    # Wait in short slices: a process-directed SIGTERM may land on any thread (gRPC's, torch's),
    # and CPython runs the handler only when the main thread next executes bytecode; a wait
    # without a timeout would sleep through it until something else woke the main thread.
    while not stop.wait(_SIGNAL_POLL_S):
        pass
    service.stop(settings.grace_seconds)
    stuck = service.in_flight.count if service.in_flight is not None else 0
    log.info("stopped", unfinished_requests=stuck)
    if stuck:
        # A handler that never checks cancellation (a long tokenizer call, a library's loop) would
        # keep the process alive past the grace period: the executor joins its threads at exit.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
