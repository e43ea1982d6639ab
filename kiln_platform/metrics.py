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
  ``serving``, ``stopping``) and ``kiln_runtime_requests_served_total{app,version}`` (as the instances' heartbeats
  report them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kiln_platform.config import ListenAddress

log = logging.getLogger(__name__)

PATH = "/metrics"  # prometheus-client's server answers every path; this is the one documented and scraped

# Buckets from 0.5 ms: a memcache call takes about a tenth of a millisecond of server time, a request through the
# router a few; the top ones catch App Engine's 60-s request deadline and a task's 10 minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 600.0, float("inf"))

GRPC_REQUESTS = Counter("kiln_grpc_requests", "gRPC calls served, by the status code each ended with",
                        ("service", "method", "code"))
GRPC_SECONDS = Histogram("kiln_grpc_request_seconds", "gRPC call duration on the server, in seconds",
                         ("service", "method"), buckets=LATENCY_BUCKETS)
GRPC_IN_FLIGHT = Gauge("kiln_grpc_requests_in_flight", "gRPC calls being served now", ("service", "method"))

ROUTER_REQUESTS = Counter("kiln_router_requests", "HTTP requests the router answered, by status class (2xx...)",
                          ("app", "version", "status_class"))
ROUTER_SECONDS = Histogram("kiln_router_request_seconds", "time the router took to answer a request (headers read "
                           "to response made), in seconds", ("app", "version"), buckets=LATENCY_BUCKETS)
ROUTER_WAITING = Gauge("kiln_router_requests_waiting", "requests waiting for an instance of their version (none "
                       "listens yet: starting, replaced, or scaled to zero)", ("app", "version"))

INSTANCES = Gauge("kiln_runtime_instances", "a version's instances run by this manager, by state",
                  ("app", "version", "state"))
INSTANCE_STATES = ("starting", "serving", "stopping")
SERVED = Counter("kiln_runtime_requests_served", "requests the version's instances served (their heartbeats' count)",
                 ("app", "version"))

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
    service, name = grpc_method_labels(method)
    in_flight = GRPC_IN_FLIGHT.labels(service, name)
    seconds = GRPC_SECONDS.labels(service, name)
    counts: dict[str, Any] = {}

    def count(code: str) -> Any:
        found = counts.get(code)
        if found is None:  # at most one per gRPC status code
            found = counts[code] = GRPC_REQUESTS.labels(service, name, code)
        return found

    count("OK")

    async def instrumented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        in_flight.inc()
        started = time.perf_counter()
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
            seconds.observe(time.perf_counter() - started)
            in_flight.dec()
            count(code).inc()
    return instrumented


def instrument_stream(fn: Callable[..., Any], method: str) -> Callable[..., Any]:
    """As :func:`instrument_unary`, for a handler that yields its responses (timed to the last one)."""
    service, name = grpc_method_labels(method)
    in_flight = GRPC_IN_FLIGHT.labels(service, name)
    seconds = GRPC_SECONDS.labels(service, name)

    async def instrumented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        in_flight.inc()
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
            seconds.observe(time.perf_counter() - started)
            in_flight.dec()
            GRPC_REQUESTS.labels(service, name, code).inc()
    return instrumented


# ------------------------------------------------------------------ the router

def status_class(status: int) -> str:
    """``200`` -> ``2xx``: the status label (a class, so the label has five values)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class RouterMetrics:
    """The router's request counts, latencies and waiting requests (see :func:`router_handler`)."""

    def __init__(self) -> None:
        # Children by label values, found once: a labels() call parses its arguments every time.
        self._counts: dict[tuple[str, str, str], Any] = {}
        self._seconds: dict[tuple[str, str], Any] = {}

    def observe(self, labels: tuple[str, str], status: int, seconds: float) -> None:
        """One answered request of version ``labels`` (app, version)."""
        key = (*labels, status_class(status))
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = ROUTER_REQUESTS.labels(*key)
            ROUTER_WAITING.labels(*labels)  # exported (at 0) for every version seen, not only once one waited
        count.inc()
        histogram = self._seconds.get(labels)
        if histogram is None:
            histogram = self._seconds[labels] = ROUTER_SECONDS.labels(*labels)
        histogram.observe(seconds)

    @staticmethod
    def waiting(app_id: str, version_id: str, change: int) -> None:
        """A request of the version starts (+1) or stops (-1) waiting for an instance (the rare path: no need
        to keep the child)."""
        ROUTER_WAITING.labels(app_id, version_id).inc(change)


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

    def __init__(self, app_id: str, version_id: str) -> None:
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
