"""Prometheus metrics of one server, served over HTTP on ``--metrics-port``.

Series (all prefixed ``tdb_``; the process_* series come from prometheus_client):

    tdb_rpc_requests_total{service, method, code}         counter: finished RPCs
    tdb_rpc_duration_seconds{service, method, code}       histogram: RPC latency
    tdb_tokens_processed_total{model}                      counter: prompt tokens run through models
    tdb_queue_depth{model}                                 gauge: requests running or waiting
    tdb_prompt_cache_{hits,misses,evictions,invalidations}_total   counters, with --cache-mb
    tdb_prompt_cache_{bytes,entries,max_bytes}             gauges, with --cache-mb
    tdb_device_memory_{allocated,reserved,total}_bytes{device}   gauges, only when CUDA is present
    process_resident_memory_bytes, process_cpu_seconds_total, ...

Requests, latency and tokens are fed by the interceptor's ``on_done`` hook (:meth:`Metrics.on_done`;
``tokens`` and ``model`` are the fields the servicers ``note()`` for the RPC's log line). Queue depth
is fed by whoever owns the queue, in one of two ways:

    metrics.queue_depth("gpt2", 3)                      # push: set the current depth
    metrics.track_queue_depth("gpt2", queue.qsize)      # pull: called at each scrape

Each ``Metrics`` has its own registry, so several servers in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Latency buckets, seconds: from a cached ListModels to a long attribution sweep.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


def split_method(path: str) -> tuple[str, str]:
    """``/tdb.v1.InferenceService/Forward`` -> (``tdb.v1.InferenceService``, ``Forward``)."""
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


class CudaMemoryCollector(Collector):
    """Device memory per CUDA device, read at scrape time from PyTorch's caching allocator.

    ``allocated`` is memory held by live tensors, ``reserved`` what the allocator holds from the
    driver (allocated + cached), ``total`` the device's capacity. Reading never initialises CUDA.
    """

    def collect(self) -> Iterator[Metric]:
        import torch

        allocated = GaugeMetricFamily(
            "tdb_device_memory_allocated_bytes",
            "Device memory held by live tensors",
            labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "tdb_device_memory_reserved_bytes",
            "Device memory held by PyTorch's caching allocator",
            labels=["device"],
        )
        total = GaugeMetricFamily(
            "tdb_device_memory_total_bytes", "Device memory capacity", labels=["device"]
        )
        for i in range(torch.cuda.device_count()):
            name = f"cuda:{i}"
            allocated.add_metric([name], float(torch.cuda.memory_allocated(i)))
            reserved.add_metric([name], float(torch.cuda.memory_reserved(i)))
            total.add_metric([name], float(torch.cuda.get_device_properties(i).total_memory))
        yield from (allocated, reserved, total)


class PromptCacheCollector(Collector):
    """The prompt cache's counters and size (``tdb_core.cache.PromptCache.stats``), read at each
    scrape."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats()
        for name, doc in (
            ("hits", "Forward requests answered from the prompt cache"),
            ("misses", "Cacheable Forward requests that ran a pass"),
            ("evictions", "Entries dropped (least recently used, or over the budget)"),
            (
                "invalidations",
                "Times a model's entries were dropped as its weights or SAEs changed",
            ),
        ):
            yield CounterMetricFamily(f"tdb_prompt_cache_{name}", doc, value=getattr(st, name))
        for name, doc in (
            ("bytes", "Bytes of tensors held by the prompt cache"),
            ("entries", "Recorded passes held by the prompt cache"),
            ("max_bytes", "The prompt cache's budget (--cache-mb)"),
        ):
            yield GaugeMetricFamily(f"tdb_prompt_cache_{name}", doc, value=getattr(st, name))


class Metrics:
    """The server's Prometheus series and the hooks that feed them."""

    def __init__(self, cuda: bool | None = None) -> None:
        """``cuda``: export device memory; None decides by ``torch.cuda.is_available()``."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = ["service", "method", "code"]
        self.requests = Counter(
            "tdb_rpc_requests",
            "Finished RPCs by method and status code",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "tdb_rpc_duration_seconds",
            "RPC latency by method and status code, seconds",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "tdb_tokens_processed",
            "Prompt tokens run through a model",
            ["model"],
            registry=self.registry,
        )
        self.queue = Gauge(
            "tdb_queue_depth",
            "Requests admitted to a model: running or waiting",
            ["model"],
            registry=self.registry,
        )
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if cuda:
            self.registry.register(CudaMemoryCollector())
        self._http: Any = None
        self.port: int | None = None

    # -- hooks
    def on_done(
        self, method: str, code: str, seconds: float, fields: Mapping[str, Any] | None = None
    ) -> None:
        """The interceptor's hook: one finished RPC with its log-line fields."""
        service, name = split_method(method)
        self.requests.labels(service, name, code).inc()
        self.latency.labels(service, name, code).observe(seconds)
        fields = fields or {}
        tokens, model = fields.get("tokens"), fields.get("model")
        if isinstance(tokens, int) and tokens > 0 and isinstance(model, str) and model:
            self.tokens.labels(model).inc(tokens)

    def queue_depth(self, model: str, n: int) -> None:
        """Set the number of requests waiting for ``model``."""
        self.queue.labels(model).set(n)

    def track_queue_depth(self, model: str, depth: Callable[[], float]) -> None:
        """Read ``model``'s queue depth from ``depth()`` at each scrape."""
        self.queue.labels(model).set_function(depth)

    def track_prompt_cache(self, stats: Callable[[], Any]) -> None:
        """Export the prompt cache whose ``stats()`` (a ``CacheStats``) is read at each scrape."""
        self.registry.register(PromptCacheCollector(stats))

    # -- HTTP endpoint
    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (0 picks a free port) in a daemon thread."""
        from prometheus_client import start_http_server

        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)
        return self.port

    def close(self) -> None:
        """Stop the HTTP endpoint, if it was started."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
