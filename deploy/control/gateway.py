"""The developer gateway: ``kiln logs|indexes|cron|bulkload|taskqueue`` and a cluster's console reach an app's
services through the control plane, with nothing but its address and a deploy token.

The control plane serves, under their own names, the services those commands and the console use
(``LogsService``, ``DatastoreService``, ``CronService``, ``TaskQueueService``, ``MemcacheService``,
``MailService``) for every service whose address it was given (``--logs-addr``, ``--datastore-addr``,
``--cron-addr``, ``--taskqueue-addr``, ``--memcache-addr``, ``--mail-addr``). A call is forwarded only when its
deploy token (verified by the server's one interceptor, :mod:`kiln_platform.grpcserver`) is an admin token of the
app named in the call's ``kiln-app`` metadata, or of every app; the app may be left out when the token names one.
The call then goes on, as its bytes, to the service with that app's identity token, minted here with the service
secret for a few minutes — the same authority ``AppToken`` hands an admin, never another app's. The services
still check and scope everything themselves; the gateway adds no trust, only a route. Their answers come back
as they were, statuses and kiln's error code included; a service that cannot be reached is ``UNAVAILABLE``
naming it, and a service this control plane was not given is ``FAILED_PRECONDITION`` naming the setting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, cast

import grpc

from deploy.control import tokens
from kiln import errors
from kiln.api import _rpc
from kiln.pb.cron.v1 import cron_pb2
from kiln.pb.datastore.v1 import datastore_pb2
from kiln.pb.logs.v1 import logs_pb2
from kiln.pb.mail.v1 import mail_pb2
from kiln.pb.memcache.v1 import memcache_pb2
from kiln.pb.taskqueue.v1 import taskqueue_pb2
from kiln_platform import auth, grpcserver

APP_METADATA_KEY = "kiln-app"
TOKEN_SECONDS = 300  # life of a forwarded call's app token
_TOKEN_REUSE_SECONDS = 60  # a token is reused this long, so the services' verified-token caches stay small
MAX_CALL_SECONDS = 300.0  # a call without a deadline gets this one
# How long a call waits for a service's connection before it is UNAVAILABLE: a service that just restarted is
# reconnected within about a second (the channels' reconnect backoff, ``_rpc.MAX_RECONNECT_BACKOFF_MS``).
CONNECT_SECONDS = 3.0

# Each forwarded service: its descriptor, the setting that gives its address, and the part's name for messages.
ROUTES = (
    (logs_pb2.DESCRIPTOR.services_by_name["LogsService"], "logs_addr", "logs_svc"),
    (datastore_pb2.DESCRIPTOR.services_by_name["DatastoreService"], "datastore_addr", "datastore_svc"),
    (cron_pb2.DESCRIPTOR.services_by_name["CronService"], "cron_addr", "cron_svc"),
    (taskqueue_pb2.DESCRIPTOR.services_by_name["TaskQueueService"], "taskqueue_addr", "taskqueue_svc"),
    (memcache_pb2.DESCRIPTOR.services_by_name["MemcacheService"], "memcache_addr", "memcache_svc"),
    (mail_pb2.DESCRIPTOR.services_by_name["MailService"], "mail_addr", "mail_svc"),
)


def app_of(grant: tokens.Grant, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The app a call acts on: its ``kiln-app`` metadata, else the one app its token names.

    Raises:
        BadRequestError: no app named, and the token is for every app.
        PermissionDeniedError: the token is not an admin token of that app.
    """
    named = ""
    for key, value in metadata or ():
        if key == APP_METADATA_KEY:
            named = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    app_id = named or (grant.app if grant.app != tokens.ALL_APPS else "")
    if not app_id:
        raise errors.BadRequestError("which app? this token is for every app: name one (kiln: --app)")
    if not auth.APP_ID_RE.match(app_id):
        raise errors.BadRequestError(f"app {app_id[:80]!r}: expected an app id")
    grant.require(app_id, "admin")
    return app_id


@dataclasses.dataclass
class _Route:
    service: str  # e.g. "logs_svc"
    setting: str  # e.g. "logs_addr"
    address: str | None
    channel: grpc.aio.Channel | None = None

    def open(self) -> grpc.aio.Channel:
        if self.address is None:
            raise errors.FailedPreconditionError(
                f"this control plane does not forward calls to {self.service}: its operator sets "
                f"--{self.setting.replace('_', '-')} (KILN_CONTROL_{self.setting.upper()})")
        if self.channel is None:  # made in the running loop, on first use
            self.channel = grpc.aio.insecure_channel(self.address, options=list(_rpc.CHANNEL_OPTIONS))
        return self.channel


class Gateway:
    """Forwards developers' calls to the services at ``addresses`` (setting name → address; module docstring)."""

    def __init__(self, addresses: Mapping[str, str | None], service_secret: str) -> None:
        self._secret = service_secret
        self._routes = {desc.full_name: _Route(service, setting, addresses.get(setting))
                        for desc, setting, service in ROUTES}
        self._tokens: dict[str, tuple[str, float]] = {}

    def handlers(self) -> list[tuple[str, grpc.GenericRpcHandler]]:
        """One generic handler per forwarded service (by full name), for :func:`kiln_platform.grpcserver.start`."""
        out = []
        for desc, _, _ in ROUTES:
            route = self._routes[desc.full_name]
            methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
                m.name: grpc.unary_unary_rpc_method_handler(self._forwarder(route, f"/{desc.full_name}/{m.name}"))
                for m in desc.methods if not m.client_streaming and not m.server_streaming}
            out.append((desc.full_name, grpc.method_handlers_generic_handler(desc.full_name, methods)))
        return out

    def _app_token(self, app_id: str) -> str:
        now = time.time()
        known = self._tokens.get(app_id)
        if known is not None and now < known[1]:
            return known[0]
        token = auth.mint_app_token(self._secret, app_id, expires_at=int(now + TOKEN_SECONDS))
        if len(self._tokens) >= grpcserver.MAX_VERIFIED_TOKENS:
            self._tokens.clear()
        self._tokens[app_id] = (token, now + _TOKEN_REUSE_SECONDS)
        return token

    def _forwarder(self, route: _Route, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            grant = grpcserver.caller(tokens.Grant)
            app_id = app_of(grant, cast("Iterable[tuple[str, str | bytes]]", context.invocation_metadata()))
            channel = route.open()
            remaining = context.time_remaining()
            timeout = MAX_CALL_SECONDS if remaining is None else min(remaining, MAX_CALL_SECONDS)
            if not await _connected(channel, min(CONNECT_SECONDS, timeout)):
                raise errors.UnavailableError(f"the control plane cannot reach {route.service} at {route.address}: "
                                              f"no connection within {CONNECT_SECONDS:g} s")
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)  # bytes in and out
            try:
                reply: bytes = await call(request, timeout=timeout,
                                          metadata=((auth.METADATA_KEY, f"Bearer {self._app_token(app_id)}"),))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not _answered_by_kiln(exc):
                    raise errors.UnavailableError(f"the control plane cannot reach {route.service} at "
                                                  f"{route.address}: {exc.details()}") from None
                await context.abort(exc.code(), exc.details() or "",
                                    trailing_metadata=tuple(exc.trailing_metadata() or ()))
            return reply
        return forward

    async def close(self) -> None:
        for route in self._routes.values():
            if route.channel is not None:
                await route.channel.close()


async def _connected(channel: grpc.aio.Channel, seconds: float) -> bool:
    """Whether ``channel`` is connected, or connects within ``seconds``.

    A call on a channel waiting out its reconnect backoff would fail at once, though the service may be back (it
    restarted); waiting for the connection first, rather than retrying a failed call, never sends a call twice.
    """
    if channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
        return True
    try:
        await asyncio.wait_for(channel.channel_ready(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


def _answered_by_kiln(exc: grpc.aio.AioRpcError) -> bool:
    """A status a kiln service sent (it carries kiln's error code), not one of the transport's."""
    return any(key == errors.ERROR_CODE_KEY for key, _ in exc.trailing_metadata() or ())
