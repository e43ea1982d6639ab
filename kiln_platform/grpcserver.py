"""The gRPC server bootstrap every kiln service uses.

:func:`serve` binds a ``grpc.aio`` server with:

- the service's servicers plus gRPC health checking (``grpc.health.v1``) and
  server reflection, so ``grpcurl`` and clients in any language work from the
  ``.proto`` files alone;
- a maximum message size;
- one authentication rule for every call: the server's :class:`Authenticator` checks the caller's
  credentials before any handler runs (app identity tokens by default; the control plane's deploy
  tokens), and handlers read the verified caller with :func:`caller_app` / :func:`caller`. A
  registration may name its own authenticator, which then alone admits calls to its service (the
  control plane serves apps' ``ModulesService`` with app tokens beside its deploy-token service). A method
  is open to anyone only when its service lists it in ``public_methods`` (health checking and
  reflection are always open); a server with no authenticator refuses every other call;
- one error mapping (:class:`CallGuard`, wrapped around every handler) that maps :class:`kiln.errors.KilnError` subclasses to
  gRPC status codes through :data:`kiln.errors.ERROR_CODES` (walking the MRO),
  puts the stable code in the ``kiln-error-code`` trailing metadata, and turns
  anything unexpected into ``INTERNAL`` with the traceback logged, never sent;
- with ``metrics_listen`` set, Prometheus metrics of every method (:mod:`kiln_platform.metrics`): calls by the
  status each ended with (a refused call counts as ``UNAUTHENTICATED``), latency and calls in flight, measured
  around the guard; without it, nothing is measured;
- with ``otlp_endpoint`` set, an OpenTelemetry server span per call (:mod:`kiln_platform.tracing`), the child of
  the caller's ``traceparent`` metadata, around the metrics; without it, no tracer exists;
- graceful shutdown on SIGTERM/SIGINT: health flips to NOT_SERVING, new calls
  are refused and in-flight calls get ``grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import pathlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from kiln import errors
from kiln_platform import auth, metrics, tracing
from kiln_platform.config import GrpcServiceConfig, HostPort

log = logging.getLogger(__name__)

ERROR_CODE_KEY = errors.ERROR_CODE_KEY


@dataclasses.dataclass(frozen=True)
class Registration:
    """One servicer to add: its full service name, the generated ``add_*_to_server``, and the methods (short
    names) anyone may call without credentials."""

    name: str
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    public_methods: frozenset[str] = frozenset()
    authenticator: Authenticator | None = None  # None: the server's


# ------------------------------------------------------------------ authentication

class Authenticator(Protocol):
    """Turns a call's metadata into the verified caller, or raises :class:`kiln.errors.UnauthenticatedError`."""

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> object:
        ...


@dataclasses.dataclass(frozen=True)
class AppTokens:
    """The caller is the app named by the app identity token in ``authorization: Bearer`` (see
    :mod:`kiln_platform.auth`); the caller object is the app id.

    A token that verified is remembered with its app id until it expires (tokens of running apps carry no
    expiry), so the calls of an app check its token's signature once: the same token bytes under the same secret
    give the same answer until then. Only verified tokens are remembered (one needs the secret to make one), at
    most :data:`MAX_VERIFIED_TOKENS` at a time.
    """

    secret: str
    _verified: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict, init=False, repr=False,
                                                                 compare=False)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        # Remembered by the metadata's exact value ("Bearer <token>"): the same value parses to the same token.
        value = _first(metadata, auth.METADATA_KEY)
        known = self._verified.get(value) if isinstance(value, str) else None
        if known is not None and time.time() <= known[1]:
            return known[0]
        app_id, until = auth.verify_app_token_until(self.secret, auth.bearer_token(metadata))
        if isinstance(value, str):
            if len(self._verified) >= MAX_VERIFIED_TOKENS:
                self._verified.clear()
            self._verified[value] = (app_id, until)
        return app_id


def _first(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str | bytes | None:
    """The value of the first ``name`` entry (the one :func:`kiln_platform.auth.bearer_token` reads)."""
    for key, value in metadata or ():
        if key == name:
            return value
    return None


MAX_VERIFIED_TOKENS = 4096


class _NoCredentialsAccepted:
    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> object:
        raise errors.UnauthenticatedError("this server accepts no credentials for this method")


_ALWAYS_PUBLIC = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_MAX_WRAPPED_METHODS = 4096
_caller: contextvars.ContextVar[object] = contextvars.ContextVar("kiln_grpc_caller")
T = TypeVar("T")


def caller(kind: type[T]) -> T:
    """The verified caller of the call being served (as the server's authenticator made it)."""
    found = _caller.get(None)
    if not isinstance(found, kind):
        # A handler of a public method asking who called: a programming error, answered as unauthenticated.
        raise errors.UnauthenticatedError("this call carries no verified credentials")
    return found


def caller_app() -> str:
    """The app id of the app calling (services authenticated by :class:`AppTokens`)."""
    return caller(str)


class CallGuard:
    """Authenticates every call and maps exceptions raised by handlers to gRPC statuses (see module docstring).

    It wraps each method's handler once, when the handler is registered (:meth:`wrap`) or when a generic handler
    first answers for the method (:meth:`generic`), rather than intercepting each call: a ``grpc.aio`` server
    interceptor costs every call a chain of coroutines before the handler is even found. The server itself is only
    ever given handlers that went through here (:class:`_GuardedServer`), so no call reaches a handler unchecked;
    every call still runs through the wrapper, which verifies its caller.
    """

    def __init__(self, authenticator: Authenticator | None = None, public_methods: Iterable[str] = (),
                 service_authenticators: Mapping[str, Authenticator] | None = None, *, metered: bool = False,
                 traced: tracing.Tracing | None = None) -> None:
        self._authenticator = authenticator or _NoCredentialsAccepted()
        self._metered = metered  # measure every call (kiln_platform.metrics)
        self._traced = traced  # a span per call (kiln_platform.tracing), or None
        self._public = frozenset(public_methods)
        self._by_service = dict(service_authenticators or {})

    def _authenticate_for(self, method: str) -> Callable[[grpc.aio.ServicerContext[Any, Any]], object] | None:
        if method in self._public or method.startswith(_ALWAYS_PUBLIC):
            return None
        # "/package.Service/Method": a service with an authenticator of its own accepts no other credentials.
        authenticate = self._by_service.get(method.split("/")[1] if method.count("/") == 2 else "",
                                            self._authenticator).authenticate
        # types-grpcio types the pairs as _Metadatum objects; at runtime they are (key, value) tuples.
        return lambda context: authenticate(context.invocation_metadata())

    def generic(self, handler: grpc.GenericRpcHandler) -> grpc.GenericRpcHandler:
        """``handler`` with each method handler it finds wrapped."""
        return _GuardedGenericHandler(self, handler)

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` of ``method`` ("/package.Service/Method"), authenticating its caller and mapping its errors."""
        # Requests are parsed here rather than by grpc, so a malformed protobuf
        # becomes INVALID_ARGUMENT naming the message instead of grpc's UNKNOWN.
        parse = _parser(handler.request_deserializer, method)
        call = _Call(method, parse, self._authenticate_for(method))
        # Measured outside the guard, so the status counted is the one the guard made of whatever ended the call.
        unary: Callable[[Callable[..., Any]], Callable[..., Any]] = (
            (lambda fn: metrics.instrument_unary(fn, method)) if self._metered else (lambda fn: fn))
        stream: Callable[[Callable[..., Any]], Callable[..., Any]] = (
            (lambda fn: metrics.instrument_stream(fn, method)) if self._metered else (lambda fn: fn))
        traced = self._traced
        # A span around the measured call (kiln_platform.tracing); none for health checks and reflection, which
        # belong to no request (a probe every few seconds would bury the requests' traces).
        if traced is not None and not method.startswith(_ALWAYS_PUBLIC):
            measured_unary, measured_stream = unary, stream
            unary = lambda fn: tracing.instrument_unary(measured_unary(fn), method, traced)
            stream = lambda fn: tracing.instrument_stream(measured_stream(fn), method, traced)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary(_wrap_unary(handler.unary_unary, call)), response_serializer=handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary(_wrap_unary(handler.stream_unary, call, streaming=True)),
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream(_wrap_stream(handler.unary_stream, call)), response_serializer=handler.response_serializer)
        # The last of the four behaviours: a handler always has exactly one set.
        stream_stream = cast("Callable[..., Any]", handler.stream_stream)
        return grpc.stream_stream_rpc_method_handler(
            stream(_wrap_stream(stream_stream, call, streaming=True)),
            response_serializer=handler.response_serializer)


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose every method handler is wrapped by a :class:`CallGuard`, once per method."""

    def __init__(self, guard: CallGuard, handler: grpc.GenericRpcHandler) -> None:
        self._guard = guard
        self._handler = handler
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._handler.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        # The wrapped handler depends only on the method and the handler found for it, so it is made once per
        # method (every call still runs through it: the caller is verified per call, in the wrapper).
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._guard.wrap(handler, method)
        if len(self._wrapped) < _MAX_WRAPPED_METHODS:  # a generic handler may answer any name a client sends
            self._wrapped[method] = (handler, wrapped)
        return wrapped


class _WrappedMethods(grpc.GenericRpcHandler):
    """Handlers already wrapped by the guard, by full method name: one dict lookup finds a call's handler."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self.handlers.get(handler_call_details.method)


class _GuardedServer:
    """What the generated ``add_*_to_server`` functions (and health, reflection) are given instead of the server:
    the two ways to add handlers, each wrapping them by the guard. Anything else they would reach for fails.

    Handlers offered for registration (``add_registered_method_handlers``) are served as one generic handler,
    consulted first, rather than registered with grpc: ``grpc.aio``'s serving loop waits on one pending future per
    registered method, re-armed on every call (``asyncio.wait`` over all of them: for memcache_svc's nine methods,
    about a tenth of a call's server instructions), and on one for all generic ones.
    """

    def __init__(self, server: grpc.aio.Server, guard: CallGuard) -> None:
        self._server = server
        self._guard = guard
        self._registered = _WrappedMethods()
        server.add_generic_rpc_handlers([self._registered])

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([self._guard.generic(h) for h in handlers])

    def add_registered_method_handlers(self, service_name: str,
                                       method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        for name, handler in method_handlers.items():
            method = f"/{service_name}/{name}"
            self._registered.handlers[method] = self._guard.wrap(handler, method)


@dataclasses.dataclass(frozen=True)
class _Call:
    """What the wrappers need of one method: its name, its request parser and how its caller is verified."""

    method: str
    parse: Callable[[Any], Any]
    authenticate: Callable[[grpc.aio.ServicerContext[Any, Any]], object] | None

    def admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Verify the caller (before the request is even parsed) and remember it for :func:`caller`."""
        if self.authenticate is not None:
            _caller.set(self.authenticate(context))


class MalformedRequestError(errors.BadRequestError):
    """The request bytes are not a valid protobuf of the expected message."""


def _parser(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[Any], Any]:
    if deserializer is None:
        return lambda raw: raw

    def parse(raw: Any) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # noqa: BLE001 - DecodeError and friends
            raise MalformedRequestError(f"{method}: the request is not a valid protobuf message") from None
    return parse


async def _parsed_stream(requests: Any, parse: Callable[[Any], Any]) -> Any:
    async for raw in requests:
        yield parse(raw)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str) -> None:
    code = errors.code_for(exc)
    if code is errors.INTERNAL:
        log.error("unhandled error in %s", method, exc_info=exc)
        details = "internal error"
    else:
        details = str(exc) or code.code
    await context.abort(code.grpc, details, trailing_metadata=((ERROR_CODE_KEY, getattr(exc, "error_code", code.code)),))


def _wrap_unary(fn: Callable[..., Any], call: _Call, streaming: bool = False) -> Callable[..., Any]:
    if streaming:
        async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                call.admit(context)
                return await fn(_parsed_stream(request, call.parse), context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
                await _abort(context, exc, call.method)
        return wrapped_stream

    # Most calls are unary: call.admit() and call.parse() inlined (two Python calls fewer per call).
    authenticate, parse = call.authenticate, call.parse

    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if authenticate is not None:
                _caller.set(authenticate(context))
            return await fn(parse(request), context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
            await _abort(context, exc, call.method)
    return wrapped


def _wrap_stream(fn: Callable[..., Any], call: _Call, streaming: bool = False) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            call.admit(context)
            async for item in fn(_parsed_stream(request, call.parse) if streaming else call.parse(request), context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, call.method)
    return wrapped


class Server:
    """A running gRPC server with health and reflection; see :func:`start`."""

    def __init__(self, server: grpc.aio.Server, health_servicer: health.aio.HealthServicer,
                 names: list[str], port: int, host: str, metrics_server: metrics.MetricsServer | None = None,
                 tracer: tracing.Tracing | None = None) -> None:
        self._server = server
        self.metrics = metrics_server  # serving /metrics (metrics_listen), or None
        self.tracing = tracer  # exporting spans (otlp_endpoint), or None
        self._health = health_servicer
        self._names = names
        self.port = port
        self.address = str(HostPort('127.0.0.1' if host in ('0.0.0.0', '::', '') else host, port))

    async def stop(self, grace: float) -> None:
        """Flip health to NOT_SERVING and stop, letting in-flight calls finish."""
        for name in ["", *self._names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)
        if self.metrics is not None:
            self.metrics.close()
        if self.tracing is not None:
            self.tracing.close()

    async def wait(self) -> None:
        """Wait until the server stops."""
        await self._server.wait_for_termination()


async def start(cfg: GrpcServiceConfig, registrations: Iterable[Registration],
                generic_handlers: Iterable[tuple[str, Any]] = (), *,
                authenticator: Authenticator | None = None) -> Server:
    """Bind and start a server for ``registrations`` (and generic handlers by name).

    Every call is authenticated by ``authenticator`` — by default app identity tokens signed with the
    service secret — or by its registration's own, except the registrations' ``public_methods``.
    """
    options = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    registrations = list(registrations)
    if authenticator is None and cfg.service_secret:
        authenticator = AppTokens(cfg.service_secret.get())
    public = [f"/{reg.name}/{m}" for reg in registrations for m in reg.public_methods]
    own = {reg.name: reg.authenticator for reg in registrations if reg.authenticator is not None}
    server = grpc.aio.server(options=options)
    # Every handler reaches the server through the guard (no interceptor: see CallGuard).
    # kiln-datastore, kiln-runtime...: the service.name of the process's spans.
    tracer = tracing.start(cfg.otlp_endpoint, f"kiln-{getattr(cfg, 'env_prefix', 'service').lower()}")
    guarded = _GuardedServer(server, CallGuard(authenticator, public, own, metered=cfg.metrics_listen is not None,
                                               traced=tracer))
    # What the add functions call of a server is exactly what _GuardedServer has (anything else fails loudly).
    as_server = cast("grpc.aio.Server", guarded)
    names = []
    for reg in registrations:
        reg.add(reg.servicer, as_server)
        names.append(reg.name)
    generic = list(generic_handlers)
    if generic:
        guarded.add_generic_rpc_handlers([h for _, h in generic])
        names += [n for n, _ in generic]
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, as_server)
    # The asyncio servicer named directly: enable_server_reflection picks it only for a grpc.aio.Server instance.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]  # generated, untyped
        reflection.aio.ReflectionServicer([*names, health.SERVICE_NAME, reflection.SERVICE_NAME]), as_server)
    bound = server.add_insecure_port(str(cfg.listen))
    if bound == 0:
        raise errors.ConfigError(f"listen: cannot bind {cfg.listen}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    srv = Server(server, health_servicer, names, bound, cfg.listen.host, metrics.serve(cfg.metrics_listen), tracer)
    log.info("serving %s on %s", ", ".join(names), srv.address)
    if cfg.ready_file:
        write_ready_file(cfg.ready_file, srv.address)
    return srv


def write_ready_file(path: pathlib.Path, address: str) -> None:
    """Atomically write ``address`` to ``path`` (a parent process waits for it)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(address)
    tmp.replace(path)


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT (installed as loop handlers: no KeyboardInterrupt trace)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve(cfg: GrpcServiceConfig, registrations: Iterable[Registration],
                generic_handlers: Iterable[tuple[str, Any]] = (),
                on_stop: Callable[[], Awaitable[None]] | None = None, *,
                authenticator: Authenticator | None = None) -> None:
    """Run a service until SIGTERM/SIGINT, then stop gracefully (``authenticator``: see :func:`start`)."""
    srv = await start(cfg, registrations, generic_handlers, authenticator=authenticator)
    await wait_for_signal()
    log.info("stopping (grace %.1fs)", cfg.grace_seconds)
    await srv.stop(cfg.grace_seconds)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")
