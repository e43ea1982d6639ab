"""kiln's Prometheus metrics: every metric any part exports is defined here, and served here.

Each part serves its metrics in the Prometheus text format at ``http://<metrics_listen>/metrics`` when its
``metrics_listen`` setting is given (off when it is not: nothing is measured then, and nothing listens). The
metrics live in prometheus-client's process-wide registry, which also carries the client's ``process_*`` (CPU,
memory, open files) and ``python_*`` metrics of the process.

Labels have bounded values only: a gRPC service and method name are those a service registered, an app and
version those the router found files for, a status a class (``2xx``) or a gRPC code name. Nothing a client writes
freely (a path, a request id, a header) is ever a label.

- gRPC services (one place, :mod:`kiln_platform.grpcserver`, measures every method of every service):
  ``kiln_grpc_requests_total{service,method,code}``, ``kiln_grpc_request_seconds{service,method}``,
  ``kiln_grpc_requests_in_flight{service,method}``. ``code`` is the status the call actually ended with: a call
  refused for its credentials counts as ``UNAUTHENTICATED``, never ``OK``.
- The router: ``kiln_router_requests_total{app,version,status_class}``, ``kiln_router_request_seconds{app,version}``,
  ``kiln_router_requests_waiting{app,version}`` (requests waiting for an instance of their version to serve).
- The instance manager (``runtime.manager``): ``kiln_runtime_instances{app,version,state}`` (``starting``,
  ``serving``, ``stopping``), ``kiln_runtime_requests_served_total{app,version}`` (as the instances' heartbeats
  report them) and ``kiln_runtime_instance_memory_bytes{app,version}`` (its instances' memory, measured when
  scraped).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from kiln_platform.config import ListenAddress

log = logging.getLogger(__name__)

PATH = "/metrics"  # prometheus-client's server answers every path; this is the one documented and scraped

# Buckets from 0.5 ms: a memcache call takes about a tenth of a millisecond of server time, a request through the
# router a few; the top ones catch App Engine's 60-s request deadline and a task's 10 minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 600.0, float("inf"))


class Series:
    """The per-request figures of one label set (a gRPC method, or an app version at the router): completions by
    outcome (a status code or class), a latency histogram, and requests under way (in flight, or waiting).

    They are plain integers, kept by the one event-loop thread that serves the requests and read by the
    ``/metrics`` thread when scraped (:class:`Table`): prometheus-client's own metric objects take a lock per
    update, and a counter, a histogram and a gauge cost a request about 3 µs of CPU where these cost a few tenths.
    """

    __slots__ = ("outcomes", "buckets", "count", "total", "under_way")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.buckets = [0] * len(LATENCY_BUCKETS)  # observations per bucket (made cumulative when scraped)
        self.count = 0
        self.total = 0.0
        self.under_way = 0

    def done(self, outcome: str, seconds: float) -> None:
        """One request ended with ``outcome`` after ``seconds``."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bucket with seconds <= le
        self.count += 1
        self.total += seconds


class Table(Collector):
    """:class:`Series` by label values, exported as a counter (by outcome), a histogram and a gauge."""

    def __init__(self, labels: tuple[str, str], outcome: str, names: tuple[str, str, str],
                 helps: tuple[str, str, str]) -> None:
        self.series: dict[tuple[str, str], Series] = {}
        self._labels, self._outcome, self._names, self._helps = labels, outcome, names, helps

    def get(self, labels: tuple[str, str]) -> Series:
        """The series of ``labels`` (made at its first use)."""
        found = self.series.get(labels)
        if found is None:
            found = self.series[labels] = Series()
        return found

    def describe(self) -> Iterator[Any]:
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        counts, seconds, under_way = families = self._families()
        bounds = [str(b) if b != float("inf") else "+Inf" for b in LATENCY_BUCKETS]
        for labels, series in list(self.series.items()):  # a copy: the serving thread may add a series meanwhile
            for outcome, n in list(series.outcomes.items()):
                counts.add_metric([*labels, outcome], n)
            cumulative, running = [], 0
            for bound, n in zip(bounds, list(series.buckets)):
                running += n
                cumulative.append((bound, running))
            # The +Inf bucket is the count, by definition (read once, with the buckets).
            seconds.add_metric(list(labels), cumulative, series.total)
            under_way.add_metric(list(labels), series.under_way)
        return iter(families)

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        return (CounterMetricFamily(self._names[0], self._helps[0], labels=[*self._labels, self._outcome]),
                HistogramMetricFamily(self._names[1], self._helps[1], labels=list(self._labels)),
                GaugeMetricFamily(self._names[2], self._helps[2], labels=list(self._labels)))


GRPC = Table(("service", "method"), "code",
             ("kiln_grpc_requests", "kiln_grpc_request_seconds", "kiln_grpc_requests_in_flight"),
             ("gRPC calls served, by the status code each ended with", "gRPC call duration on the server, in seconds",
              "gRPC calls being served now"))
ROUTER = Table(("app", "version"), "status_class",
               ("kiln_router_requests", "kiln_router_request_seconds", "kiln_router_requests_waiting"),
               ("HTTP requests the router answered, by status class (2xx...)",
                "time the router took to answer a request (headers read to response made), in seconds",
                "requests waiting for an instance of their version (none listens yet: starting, replaced, or scaled "
                "to zero)"))
REGISTRY.register(GRPC)
REGISTRY.register(ROUTER)

INSTANCES = Gauge("kiln_runtime_instances", "a version's instances run by this manager, by state",
                  ("app", "version", "state"))
INSTANCE_STATES = ("starting", "serving", "stopping")
SERVED = Counter("kiln_runtime_requests_served", "requests the version's instances served (their heartbeats' count)",
                 ("app", "version"))



class _Memory(Collector):
    """``kiln_runtime_instance_memory_bytes``: each version's instances' memory, measured when scraped (the
    measure runs on the ``/metrics`` thread; reading ``/proc`` or a cgroup there costs the serving loop nothing)."""

    NAME, HELP = "kiln_runtime_instance_memory_bytes", ("memory the version's instances run by this manager use now "
                                                       "(their cgroups' usage, else their processes' resident sets)")

    def __init__(self) -> None:
        self.measures: dict[tuple[str, str], Callable[[], int]] = {}

    def describe(self) -> Iterator[Any]:
        return iter([GaugeMetricFamily(self.NAME, self.HELP, labels=["app", "version"])])

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["app", "version"])
        for labels, measure in list(self.measures.items()):
            try:
                family.add_metric(list(labels), measure())
            except Exception:  # noqa: BLE001 - one failed measure must not fail the page
                log.exception("could not measure the memory of %s/%s", *labels)
        return iter([family])


INSTANCE_MEMORY = _Memory()
REGISTRY.register(INSTANCE_MEMORY)

# A request the router answered without finding a version (a bad host, an unknown app): its own label values.
NO_VERSION = ("", "")


class MetricsServer:
    """The ``/metrics`` HTTP server of a process (prometheus-client's, on a thread of its own)."""

    def __init__(self, listen: ListenAddress) -> None:
        self._server, self._thread = start_http_server(listen.port, addr=listen.host)
        self.port: int = self._server.server_port
        self.address = f"{listen.host}:{self.port}"
        log.info("serving metrics on http://%s%s", self.address, PATH)

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def serve(listen: ListenAddress | None) -> MetricsServer | None:
    """Serve ``/metrics`` on ``listen``; ``None`` (the setting unset): serve nothing."""
    return MetricsServer(listen) if listen is not None else None


def worker_address(listen: ListenAddress | None, worker: int) -> ListenAddress | None:
    """Where router worker ``worker`` (1..N; 0 for a router without workers) serves its metrics: each worker is a
    process of its own with its own counts, so worker N serves on the given port + N - 1 (port 0: a free one)."""
    if listen is None or worker <= 1 or listen.port == 0:
        return listen
    return ListenAddress(listen.host, listen.port + worker - 1)


# ------------------------------------------------------------------ gRPC services

# A generic handler (the control plane's gateway) may answer method names its client made up: past this many
# methods, a process labels further ones "other", so no client can grow the label set without bound.
MAX_METHODS = 512
_methods: set[str] = set()


def grpc_method_labels(method: str) -> tuple[str, str]:
    """``/package.Service/Method`` as (service, method); ("other", "other") past :data:`MAX_METHODS` methods."""
    if method not in _methods:
        if len(_methods) >= MAX_METHODS:
            return "other", "other"
        _methods.add(method)
    _, service, name = (method.split("/") + ["", ""])[:3]
    return service, name


def _ended_with(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code = context.code()
    # A handler that returned normally without setting a code ended OK (code() answers None or OK then).
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def instrument_unary(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    """``fn`` (an already guarded unary-response handler) counted, timed and tracked in flight.

    The guard (:class:`kiln_platform.grpcserver.CallGuard`) turns every error into an abort with its status, so
    the status is read from the context once the handler ends, whatever ended it.
    """
    series = GRPC.get(grpc_method_labels(method))
    clock = time.perf_counter

    async def instrumented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        series.under_way += 1
        started = clock()
        code = "UNKNOWN"
        try:
            result = await fn(request, context)
            code = _ended_with(context)
            return result
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            code = _ended_with(context)
            raise
        finally:
            series.under_way -= 1
            series.done(code, clock() - started)
    return instrumented


def instrument_stream(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    """As :func:`instrument_unary`, for a handler that yields its responses (timed to the last one)."""
    series = GRPC.get(grpc_method_labels(method))

    async def instrumented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        series.under_way += 1
        started = time.perf_counter()
        code = "UNKNOWN"
        try:
            async for item in fn(request, context):
                yield item
            code = _ended_with(context)
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except BaseException:
            code = _ended_with(context)
            raise
        finally:
            series.under_way -= 1
            series.done(code, time.perf_counter() - started)
    return instrumented


# ------------------------------------------------------------------ the router

_STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """``200`` -> ``2xx``: the status label (a class, so the label has six values)."""
    return _STATUS_CLASSES[status // 100] if 100 <= status <= 599 else "other"


class RouterMetrics:
    """The router's request counts, latencies and waiting requests (see :func:`router_handler`)."""

    def __init__(self, table: Table = ROUTER) -> None:
        self._table = table

    def observe(self, labels: tuple[str, str], status: int, seconds: float) -> None:
        """One answered request of version ``labels`` (app, version)."""
        self._table.get(labels).done(status_class(status), seconds)

    def waiting(self, app_id: str, version_id: str, change: int) -> None:
        """A request of the version starts (+1) or stops (-1) waiting for an instance."""
        self._table.get((app_id, version_id)).under_way += change


# Where the router's handler leaves the version a request was routed to (app, version): a key of aiohttp's
# request mapping, set only when metrics are on.
VERSION_KEY = "kiln.metrics.version"


def router_handler(handle: Callable[[Any], Any], router_metrics: RouterMetrics) -> Callable[[Any], Any]:
    """``handle`` (the router's handler of every request) with each request counted and timed by the version
    the handler routed it to (:data:`VERSION_KEY`; none: :data:`NO_VERSION`)."""
    async def measured(request: Any) -> Any:
        started = time.perf_counter()
        try:
            response = await handle(request)
        except Exception as exc:
            # aiohttp's HTTPException carries the status it becomes; anything else becomes a 500.
            status = getattr(exc, "status", 500)
            router_metrics.observe(request.get(VERSION_KEY, NO_VERSION), status if isinstance(status, int) else 500,
                                   time.perf_counter() - started)
            raise
        router_metrics.observe(request.get(VERSION_KEY, NO_VERSION), response.status, time.perf_counter() - started)
        return response
    return measured


# ------------------------------------------------------------------ the instance manager

class ManagerMetrics:
    """The instance manager's instance counts by state and its instances' served requests, for one version."""

    def __init__(self, app_id: str, version_id: str, *, memory: Callable[[], int] | None = None) -> None:
        if memory is not None:  # the instances' memory in bytes, asked at each scrape
            INSTANCE_MEMORY.measures[(app_id, version_id)] = memory
        self._states = {state: INSTANCES.labels(app_id, version_id, state) for state in INSTANCE_STATES}
        self._served = SERVED.labels(app_id, version_id)
        self._last_served: dict[str, int] = {}  # instance id -> the count its last heartbeat reported

    def instances(self, starting: int, serving: int, stopping: int) -> None:
        """The instances now, by state."""
        for state, count in zip(INSTANCE_STATES, (starting, serving, stopping)):
            self._states[state].set(count)

    def heartbeat(self, instance_id: str, requests_served: int) -> None:
        """An instance reports having served ``requests_served`` since it started: the difference is counted."""
        before = self._last_served.get(instance_id, 0)
        if requests_served > before:
            self._served.inc(requests_served - before)
        self._last_served[instance_id] = max(before, requests_served)

    def forget(self, live: set[str]) -> None:
        """Drop the counts of instances no longer running (their served requests stay counted)."""
        for gone in set(self._last_served) - live:
            del self._last_served[gone]
