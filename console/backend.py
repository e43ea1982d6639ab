"""How the console reaches kiln: gRPC calls to the services, as the app it shows.

Pages never build a channel or a token: they call :meth:`Services.call` with a service name, a method and a
request. The credentials are a :class:`Credentials`, chosen once at start:

* development (``kiln dev``): :class:`kiln_platform.appcalls.AppCredentials`, app tokens minted from the services'
  shared secret, each service dialled at its own address;
* a cluster: :class:`GatewayCredentials`, the control plane's developer gateway (``deploy/control/gateway.py``) as
  the one address of every service it routes, with a server-side admin deploy token and the ``kiln-app`` metadata
  naming the app the signed-in administrator opened (:func:`acting_as`, set by :mod:`console.signin` for each
  request once it has checked that the identity administers that app). Pages stay as they are.

A failed call raises the kiln error its status names (:func:`kiln.api._rpc.error_from`), so pages show the
service's own message; a service the console was not given raises :class:`ServiceMissingError`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from deploy.control.gateway import APP_METADATA_KEY
from kiln import errors
from kiln.api import _rpc
from kiln.pb.cron.v1 import cron_pb2_grpc
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.deploy.v1 import deploy_pb2_grpc
from kiln.pb.logs.v1 import logs_pb2_grpc
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln.pb.memcache.v1 import memcache_pb2_grpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from kiln_platform.config import HostPort, Secret

# Each service the console calls: its stub class, by the name pages use.
STUBS: dict[str, Any] = {
    "logs": logs_pb2_grpc.LogsServiceStub,
    "datastore": datastore_pb2_grpc.DatastoreServiceStub,
    "memcache": memcache_pb2_grpc.MemcacheServiceStub,
    "cron": cron_pb2_grpc.CronServiceStub,
    "taskqueue": taskqueue_pb2_grpc.TaskQueueServiceStub,
    "mail": mail_pb2_grpc.MailServiceStub,
    "deploy": deploy_pb2_grpc.DeployServiceStub,  # the control plane (the Apps and versions page)
}


class Credentials(Protocol):
    """The call metadata that lets the console act as an app."""

    def metadata(self, app_id: str) -> tuple[tuple[str, str], ...]: ...


class GatewayCredentials:
    """Calls through the control plane's developer gateway: an admin deploy token and the app acted on."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("gateway_token: required to call through the gateway")
        self._authorization = (auth.METADATA_KEY, f"Bearer {token}")

    def metadata(self, app_id: str) -> tuple[tuple[str, str], ...]:
        return self._authorization, (APP_METADATA_KEY, app_id)


# The app the current request acts on in a cluster (set only by console.signin, after its check).
_ACTING_AS: contextvars.ContextVar[str] = contextvars.ContextVar("console_acting_as")


@contextlib.contextmanager
def acting_as(app_id: str) -> Iterator[None]:
    """Within this block, :attr:`Services.app_id` is ``app_id`` (the app a signed-in administrator opened)."""
    reset = _ACTING_AS.set(app_id)
    try:
        yield
    finally:
        _ACTING_AS.reset(reset)


class DeployToken:
    """The control plane's credentials: an admin deploy token of the app, held by the console's server (it never
    reaches a browser)."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def metadata(self, app_id: str) -> tuple[tuple[str, str], ...]:
        return ((auth.METADATA_KEY, f"Bearer {self._token.get()}"),)


class ServiceMissingError(errors.FailedPreconditionError):
    """The console was started without this service's address (its page says which setting gives it)."""

    def __init__(self, service: str, why: str | None = None) -> None:
        what = ("the control plane's address (--control-addr)" if service == "deploy"
                else f"{service}_svc's address (--{service}-addr)")
        super().__init__(why or f"the console was started without {what}")
        self.service = service


class Services:
    """Channels to kiln's services and the identity to call them with (see module docstring)."""

    def __init__(self, *, app_id: str, credentials: Credentials, addresses: Mapping[str, HostPort | None],
                 timeout: float, missing: str | None = None,
                 credentials_for: Mapping[str, Credentials] | None = None) -> None:
        """``app_id``: the app of every call, or empty when each request names it (:func:`acting_as`);
        ``missing``: what a page of a service without an address says (else it names the setting);
        ``credentials_for``: a service's own credentials instead of ``credentials`` (the control plane's)."""
        unknown = set(addresses) - set(STUBS)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        self._app_id = app_id
        self._missing = missing
        self._credentials = credentials
        self._credentials_for = dict(credentials_for or {})  # a service's own credentials (the control plane's)
        self._timeout = timeout
        self._addresses = {name: addr for name, addr in addresses.items() if addr is not None}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}

    @property
    def app_id(self) -> str:
        """The app the console acts as: the one it was started for, else the current request's."""
        if self._app_id:
            return self._app_id
        found = _ACTING_AS.get("")
        if not found:  # a page reached without console.signin's check: a bug, never a call as no app
            raise RuntimeError("no app chosen for this request")
        return found

    def has(self, service: str) -> bool:
        """Whether the console was given ``service``'s address."""
        return service in self._addresses

    def _stub(self, service: str) -> Any:
        found = self._stubs.get(service)
        if found is None:
            address = self._addresses.get(service)
            if address is None:
                raise ServiceMissingError(service, self._missing.format(service=service) if self._missing else None)
            channel = self._channels[service] = grpc.aio.insecure_channel(str(address),
                                                                          options=list(_rpc.CHANNEL_OPTIONS))
            found = self._stubs[service] = STUBS[service](channel)
        return found

    async def call(self, service: str, method: str, request: Message) -> Any:
        """Call ``service``'s ``method`` with ``request`` as the console's app; its response.

        Raises:
            KilnError: the service's answer, as the kiln error its status names.
            ServiceMissingError: the console has no address for ``service``.
        """
        rpc = getattr(self._stub(service), method)
        try:
            credentials = self._credentials_for.get(service, self._credentials)
            return await rpc(request, timeout=self._timeout, metadata=credentials.metadata(self.app_id))
        except grpc.aio.AioRpcError as exc:
            raise _rpc.error_from(exc) from None

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
