"""kiln's OpenTelemetry traces: every span any part makes is made here, and exported from here.

A part traces only when its ``otlp_endpoint`` setting is given (``http://collector:4318``: OTLP over HTTP/protobuf,
spans POSTed to ``<endpoint>/v1/traces`` in batches by the SDK's batching processor on a thread of its own). Without
it nothing is imported, no tracer exists, and a request pays one ``is None`` test per place that would trace.

One request is one trace, followed across processes with W3C trace context (``traceparent``):

- the router starts a server span per request (:func:`router_handler`), named by the HTTP method (``router GET``);
  a client's ``traceparent`` header is not believed by default (any client could otherwise join its requests to
  another's trace, or pick the trace ids kiln records): the router then starts a new trace, and the header reaches
  the app untouched as any other header. With the router's ``trust_traceparent`` setting (a router behind a proxy
  or gateway that traces), a valid client ``traceparent`` becomes the parent of the router's span;
- the router puts its span's context in the request envelope's own field (``HttpRequest.traceparent``, which only
  the router writes: it is not a header, so no client can set it);
- the runtime instance continues it with a span around the request (``runtime GET``, :meth:`Tracing.runtime_span`),
  made and ended on the instance's event loop (never on a request thread, where app code runs under the sandbox),
  and gives the request's thread that span's context: ``kiln.api``'s one client transport (``kiln/api/_rpc.py``)
  sends it as ``traceparent`` gRPC metadata with every call the request's thread makes;
- every gRPC service continues it in one place (:func:`instrument_unary` / :func:`instrument_stream`, wrapped by
  :class:`kiln_platform.grpcserver.CallGuard` around every method): a server span named by the method
  (``kiln.pb.datastore.v1.DatastoreService/Get``) with its final status code.

Span names are bounded: the HTTP method (one of RFC 9110's, else ``_OTHER``) or a registered gRPC method, never a
path or anything else a client writes freely. The SDK's own ``OTEL_*`` environment variables apply (batching:
``OTEL_BSP_*``; ``OTEL_EXPORTER_OTLP_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``; ``OTEL_RESOURCE_ATTRIBUTES``;
``OTEL_TRACES_SAMPLER``), except that ``otlp_endpoint`` alone turns tracing on and, when given, wins over
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; kiln's ``service.name`` (``kiln-router``,
``kiln-datastore``…) wins over ``OTEL_SERVICE_NAME``.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc

if TYPE_CHECKING:  # the SDK is imported only by a part that traces (Tracing.__init__)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's path for spans
TRACEPARENT = "traceparent"  # W3C trace context's header, and kiln's gRPC metadata key for it
# RFC 9110's methods and PATCH: any other method names a span "_OTHER" (OpenTelemetry's HTTP conventions).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def traces_url(endpoint: str) -> str:
    """The URL spans are POSTed to for the setting ``endpoint``.

    Raises:
        ValueError: ``endpoint`` is not an http(s) URL with a host.
    """
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"otlp_endpoint: must be an http:// or https:// URL with a host (OTLP/HTTP), "
                         f"got {endpoint!r}")
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit(parts._replace(path=path if path.endswith(TRACES_PATH) else path + TRACES_PATH))


def collector_address(endpoint: str) -> str:
    """The collector's ``host:port`` (what the instance manager forwards to instances without a network).

    Raises:
        ValueError: an https endpoint (TLS would check the collector's certificate against the loopback address the
            instance dials) or no http(s) URL.
    """
    traces_url(endpoint)
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme != "http":
        raise ValueError(f"otlp_endpoint: {parts.scheme}:// is not forwarded to instances without a network of "
                         "their own (TLS would check the collector's certificate against a loopback address); "
                         "give them an http:// collector, e.g. a local OpenTelemetry Collector")
    host = parts.hostname or ""
    return f"[{host}]:{parts.port or 80}" if ":" in host else f"{host}:{parts.port or 80}"


def on_loopback(endpoint: str, port: int) -> str:
    """``endpoint`` reached through a loopback ``port`` that forwards to the collector (its path kept)."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(endpoint)._replace(netloc=f"127.0.0.1:{port}"))


def http_method(method: str) -> str:
    """A request's method as a span name may carry it: a known one, else ``_OTHER``."""
    return method if method in HTTP_METHODS else "_OTHER"


def _traceparent(span: Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _own_session() -> Any:
    """An HTTP session whose connections are urllib3's own sockets, whatever later happens to urllib3's pools.

    In a runtime instance, :func:`runtime.httpfetch.install` gives urllib3's pool classes URL Fetch connections
    for the app (urllib3 may be the very module the exporter loaded). The exporter's pools are subclasses that
    name urllib3's own connection classes, so its spans still go to the collector's relay, not through URL Fetch.
    """
    import requests
    import requests.adapters
    from urllib3 import connection, connectionpool

    class Pool(connectionpool.HTTPConnectionPool):
        ConnectionCls = connection.HTTPConnection

    class TlsPool(connectionpool.HTTPSConnectionPool):
        ConnectionCls = connection.HTTPSConnection

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

    session = requests.Session()
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    return session


class Tracing:
    """One process's tracer: spans batched and exported to ``endpoint`` (see the module docstring)."""

    def __init__(self, endpoint: str, service: str) -> None:
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        self.url = traces_url(endpoint)
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; the attributes given here win.
        self.provider: TracerProvider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url, session=_own_session())))
        # The process's own provider, not the global one: nothing else in the process exports through it.
        self.tracer: Tracer = self.provider.get_tracer("kiln")
        self._propagator = TraceContextTextMapPropagator()
        self._root = Context  # an empty context: a span started in it begins a trace
        self._server = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        log.info("exporting traces to %s as %s", self.url, service)

    def parent(self, traceparent: str | None) -> Any:
        """The context a ``traceparent`` value names (an empty one for ``None`` or a malformed value: a new
        trace then)."""
        if not traceparent:
            return self._root()
        return self._propagator.extract({TRACEPARENT: traceparent}, context=self._root())

    def server_span(self, name: str, traceparent: str | None, attributes: dict[str, Any]) -> Span:
        """A started server span, the child of ``traceparent`` (a root without one)."""
        return self.tracer.start_span(name, context=self.parent(traceparent), kind=self._server,
                                      attributes=attributes)

    def failed(self, span: Span) -> None:
        """Mark ``span`` as ended in an error."""
        span.set_status(self._error)

    def runtime_span(self, method: str, traceparent: str, app_id: str, version_id: str, instance_id: str,
                     request_id: str) -> tuple[Span, str]:
        """The runtime's span of one request (the child of the router's) and its ``traceparent`` for the
        request's API calls. It names the request's id (its request log's, ``REQUEST_LOG_ID``)."""
        span = self.server_span(f"runtime {http_method(method)}", traceparent,
                                {"http.request.method": method, "kiln.app": app_id, "kiln.version": version_id,
                                 "kiln.instance": instance_id, "kiln.request_id": request_id})
        return span, _traceparent(span)

    def end_runtime_span(self, span: Span, status: int) -> None:
        """End the runtime's span of a request answered with ``status`` (0: none, the runtime failed)."""
        if status:
            span.set_attribute("http.response.status_code", status)
        if not status or status >= 500:
            self.failed(span)
        span.end()

    def close(self) -> None:
        """Export what is left and stop the exporting thread."""
        self.provider.shutdown()


def start(endpoint: str, service: str) -> Tracing | None:
    """The process's :class:`Tracing` for the ``otlp_endpoint`` setting; ``None`` (off) when it is empty."""
    return Tracing(endpoint, service) if endpoint else None


# ------------------------------------------------------------------ the router

# Where the router's handler leaves what the request's span should say (the version's labels and traceparent): a key
# of aiohttp's request mapping, set only when tracing is on.
SPAN_KEY = "kiln.tracing.span"


def router_handler(handle: Callable[[Any], Any], tracing: Tracing, *, trust_client: bool) -> Callable[[Any], Any]:
    """``handle`` (the router's handler of every request) inside a server span per request; the handler stamps
    the envelope with :func:`envelope_traceparent`."""
    async def traced(request: Any) -> Any:
        method = request.method
        parent = None
        if trust_client:
            values = request.headers.getall(TRACEPARENT, ())
            parent = values[0] if len(values) == 1 else None  # a repeated traceparent is no parent (W3C)
        span = tracing.server_span(f"router {http_method(method)}", parent, {"http.request.method": method})
        request[SPAN_KEY] = span
        try:
            response = await handle(request)
        except BaseException as exc:
            status = getattr(exc, "status", 500)  # aiohttp's HTTPException carries the status it becomes
            span.set_attribute("http.response.status_code", status if isinstance(status, int) else 500)
            tracing.failed(span)
            span.end()
            raise
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            tracing.failed(span)
        span.end()
        return response
    return traced


def envelope_traceparent(request: Any, app_id: str, version_id: str) -> str:
    """The ``traceparent`` of the router's span of ``request`` (for its envelope to the runtime), after naming the
    app and version the router sent it to on the span."""
    span: Span = request[SPAN_KEY]
    span.set_attributes({"kiln.app": app_id, "kiln.version": version_id})
    return _traceparent(span)


# ------------------------------------------------------------------ gRPC services

# types-grpcio types invocation metadata as _Metadatum objects; at runtime they are (key, value) tuples.
_Pairs: TypeAlias = "Iterable[tuple[str, Any]] | None"


def _traceparent_of(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == TRACEPARENT:
            return value if isinstance(value, str) else None
    return None


def _code_of(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    # A handler that returned normally without setting a code ended OK (code() answers None or OK then).
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK


def _grpc_attributes(method: str) -> dict[str, Any]:
    _, service, name = (method.split("/") + ["", ""])[:3]
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _ended(tracing: Tracing, span: Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        tracing.failed(span)
    span.end()


def instrument_unary(fn: Callable[..., Any], method: str, tracing: Tracing) -> Callable[..., Any]:
    """``fn`` (an already guarded unary-response handler) inside a server span continuing the caller's
    ``traceparent`` metadata; the span ends with the status the guard made of whatever ended the call."""
    name = method.lstrip("/")  # "/package.Service/Method": a registered method, never the client's words
    attributes = _grpc_attributes(method)

    async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        span = tracing.server_span(name, _traceparent_of(cast(_Pairs, context.invocation_metadata())), attributes)
        code = grpc.StatusCode.UNKNOWN
        try:
            result = await fn(request, context)
            code = _code_of(context)
            return result
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = _code_of(context)
            raise
        finally:
            _ended(tracing, span, code)
    return traced


def instrument_stream(fn: Callable[..., Any], method: str, tracing: Tracing) -> Callable[..., Any]:
    """As :func:`instrument_unary`, for a handler that yields its responses (the span ends after the last)."""
    name = method.lstrip("/")
    attributes = _grpc_attributes(method)

    async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        span = tracing.server_span(name, _traceparent_of(cast(_Pairs, context.invocation_metadata())), attributes)
        code = grpc.StatusCode.UNKNOWN
        try:
            async for item in fn(request, context):
                yield item
            code = _code_of(context)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = _code_of(context)
            raise
        finally:
            _ended(tracing, span, code)
    return traced
