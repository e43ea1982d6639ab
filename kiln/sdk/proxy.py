"""kiln's API proxy for Google's SDK: one stub per App Engine service in the SDK's ``apiproxy``.

:func:`install` registers a :class:`KilnStub` for every service name the SDK knows (``ReplaceStub``), so the SDK
never reaches for its HTTP transport (``DefaultApiStub``, which ``wrap_wsgi_app()`` sets as the *default* stub:
per-service stubs win over it). A call to a service kiln serves runs its :class:`~kiln.sdk.service.Service`; a call
to one it does not serve fails with the SDK's ``CallNotFoundError`` naming it.

Each call is admitted as App Engine's API host admitted it, by its ticket (:mod:`kiln.sdk.tickets`), read where
the SDK's own transport reads it (``os.environ``, or the SDK's context variables when the app chose that mode):

- no ticket: ``RPCFailedError('Attempted RPC call without active security ticket')``, as the SDK raises it
  (a call at import time, or from a thread no request started);
- a ticket whose request ended, one this instance never issued, or one issued to another app: ``RPCFailedError``
  naming which; a cancelled request's ticket: ``CancelledError``.

These are raised by ``make_call`` itself, not by ``get_result``: memcache's client swallows every error of its
calls, and a call made with a dead ticket must not look like a cache miss.

How a call runs (:class:`KilnRPC`): ``make_call`` queues it for a small pool of worker threads and returns, so
asynchronous calls proceed while the app works (as on App Engine). Whoever takes the call first runs it: a
``wait()`` on a call no worker has started yet runs it on the caller's own thread, so a synchronous call
(``memcache.get``) costs no thread hop. ``UserRPC.wait_any`` (ndb's event loop) waits on each call's ``future`` (a
``concurrent.futures.Future`` done once the call finished and its callback ran): reading ``future`` runs a call no
worker has started on the reader's thread too, before handing it over, so ndb's waits cost no hop either. A worker
still takes any call queued behind one running on the caller's thread (which releases the GIL while it waits for
kiln's service), so calls made together still overlap.
States go ``RUNNING`` → ``FINISHING`` as in the SDK's ``apiproxy_rpc.RPC``; the callback runs on the thread that
ran the call, and one run by ``wait()`` on the caller's thread may raise into it (``wait_any`` relies on that).

This module imports the SDK: the runtime imports it only in instances whose environment has the SDK.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import os
import queue
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from google.appengine.api import apiproxy_rpc, apiproxy_stub_map
from google.appengine.runtime import apiproxy_errors
from google.appengine.runtime import context as gae_context

from kiln import errors
from kiln.api import _rpc
from kiln.sdk import tickets
from kiln.sdk.service import CallContext, Service

__all__ = ["KilnRPC", "KilnStub", "Proxy", "SDK_SERVICES", "WORKERS", "default_services", "install"]

log = logging.getLogger(__name__)

# Every API package the SDK (and App Engine's API host) knew by name. Each gets kiln's stub, served or not.
SDK_SERVICES = (
    "app_identity_service", "blobstore", "capability_service", "channel", "cloud_datastore_v1", "datastore_v3",
    "datastore_v4", "file", "images", "logservice", "mail", "memcache", "modules", "remote_socket", "search",
    "system", "taskqueue", "urlfetch", "user", "xmpp",
)
# The modules holding kiln's services, each with the class to register (imported when present: datastore_v3's
# arrives separately).
_SERVICE_MODULES = (
    ("kiln.sdk.memcache", "Memcache"), ("kiln.sdk.user", "User"), ("kiln.sdk.capability", "Capability"),
    ("kiln.sdk.system", "System"), ("kiln.sdk.modules", "Modules"), ("kiln.sdk.datastore_v3", "DatastoreV3"),
    ("kiln.sdk.urlfetch", "URLFetch"), ("kiln.sdk.mail", "Mail"), ("kiln.sdk.images", "Images"),
    ("kiln.sdk.app_identity", "AppIdentity"), ("kiln.sdk.taskqueue", "TaskQueue"), ("kiln.sdk.blobstore", "Blobstore"),
)
# Worker threads running calls made asynchronously (each thread's stack counts in the instance's address space).
WORKERS = 8
_SDK_TICKET_KEYS = (tickets.ENVIRON_KEY, "HTTP_X_APPENGINE_DEV_REQUEST_ID")


def default_services() -> list[Service]:
    """kiln's services for the SDK whose modules are present (datastore_v3's may not be yet)."""
    out = []
    for module_name, attr in _SERVICE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        out.append(getattr(module, attr)())
    return out


class Proxy:
    """The services kiln serves to one app's SDK, and the rule that admits a call (module docstring)."""

    def __init__(self, app_id: str, services: Mapping[str, Service]) -> None:
        self.app_id = app_id
        self.services = dict(services)
        self._queue: queue.SimpleQueue[KilnRPC] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._workers_lock = threading.Lock()

    def admit(self, package: str, call: str) -> tickets.Request:
        """The open request a call belongs to, or the SDK's error for its ticket (module docstring)."""
        ticket = _current_ticket()
        if not ticket:
            raise apiproxy_errors.RPCFailedError("Attempted RPC call without active security ticket")
        request = tickets.lookup(ticket)
        if request is None:
            raise apiproxy_errors.RPCFailedError(
                f"kiln refused the API call {package}.{call}(): its ticket does not work: {tickets.state(ticket)} "
                "(calls need the ticket of a request that is running; threads that outlive their request cannot "
                "make API calls)")
        if request.app_id != self.app_id:
            raise apiproxy_errors.RPCFailedError(
                f"kiln refused the API call {package}.{call}(): its ticket was issued to another app")
        if request.cancelled:
            raise apiproxy_errors.CancelledError(
                f"The API call {package}.{call}() was cancelled: its request passed its deadline")
        return request

    def submit(self, rpc: KilnRPC) -> None:
        """Queue ``rpc`` for the workers (started on first use: threads an app's request starts belong to it)."""
        if len(self._workers) < WORKERS:
            self._start_workers()
        self._queue.put(rpc)

    def submit_ready(self) -> None:
        """Start the workers now (the runtime installs the proxy outside any request)."""
        self._start_workers()

    def _start_workers(self) -> None:
        with self._workers_lock:
            while len(self._workers) < WORKERS:
                worker = threading.Thread(target=self._work, name=f"kiln-sdk-api-{len(self._workers)}", daemon=True)
                # A worker serves every request: it must not be joined with, nor belong to, the one starting it.
                worker.kiln_background = True  # type: ignore[attr-defined]
                worker.start()
                self._workers.append(worker)

    def _work(self) -> None:
        while True:
            self._queue.get().take(inline=False)


def _current_ticket() -> str | None:
    """The ticket of the call being made, where the SDK's own transport reads it."""
    if gae_context.READ_FROM_OS_ENVIRON:
        for key in _SDK_TICKET_KEYS:
            found = os.environ.get(key)
            if found:
                return found
        return None
    headers = gae_context.gae_headers
    found = headers.API_TICKET.get(None) or headers.DEV_REQUEST_ID.get(None)
    return str(found) if found else None


class KilnRPC(apiproxy_rpc.RPC):  # type: ignore[misc]  # the SDK has no type information
    """One API call through kiln (module docstring: who runs it, states, future, callback)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._taken = threading.Lock()  # held by whoever runs (or cancels) the call
        self._finish_lock = threading.Lock()
        self._finished = False
        self._request: tickets.Request | None = None

    @property
    def future(self) -> concurrent.futures.Future[None] | None:
        """The call's future; reading it runs the call here if no worker has started it (module docstring)."""
        found = self._future
        # ndb's event loop reads it several times a call: once the call finished, without taking the future's lock.
        if found is not None and not self._finished and self._state == apiproxy_rpc.RPC.RUNNING:
            self.take(inline=False)
        return found

    @future.setter
    def future(self, value: concurrent.futures.Future[None] | None) -> None:
        self._future = value

    def _MakeCallImpl(self) -> None:
        stub: KilnStub = self.stub
        request = stub.proxy.admit(self.package, self.call)
        self._request = request
        self._future = concurrent.futures.Future()
        self._state = apiproxy_rpc.RPC.RUNNING
        if not tickets.track(request, self._cancel):
            self._state = apiproxy_rpc.RPC.IDLE
            raise apiproxy_errors.CancelledError(
                f"The API call {self.package}.{self.call}() was cancelled: its request passed its deadline")
        stub.proxy.submit(self)

    def _WaitImpl(self) -> bool:
        if not self.take(inline=True):
            assert self._future is not None
            concurrent.futures.wait([self._future])
        return True

    def take(self, *, inline: bool) -> bool:
        """Run the call here if nobody has taken it yet; ``False`` if someone had."""
        if not self._taken.acquire(blocking=False):
            return False
        assert self._request is not None and self._future is not None
        error: BaseException | None = None
        try:
            if not self._future.set_running_or_notify_cancel():
                error = apiproxy_errors.CancelledError(f"The API call {self.package}.{self.call}() was cancelled")
            else:
                self.stub.serve(self.package, self.call, self.request, self.response, self._context(self._request))
        except Exception as exc:  # noqa: BLE001 - the call's error, reported as the SDK reports it
            error = exc
        self._finish(error, reraise_callback=inline)
        return True

    def _context(self, request: tickets.Request) -> CallContext:
        deadline = self.deadline if self.deadline and self.deadline > 0 else None
        remaining = request.remaining()
        if remaining is not None:
            if remaining <= 0:
                raise apiproxy_errors.DeadlineExceededError(
                    f"The API call {self.package}.{self.call}() was not made: its request passed its deadline")
            deadline = remaining if deadline is None else min(deadline, remaining)
        return CallContext(app_id=request.app_id, deadline=deadline, environ=request.environ)

    def _cancel(self) -> None:
        """Fail the call: its request was cancelled (:func:`kiln.sdk.tickets.cancel`)."""
        self._taken.acquire(blocking=False)  # if nobody runs it yet, nobody will
        self._finish(apiproxy_errors.CancelledError(
            f"The API call {self.package}.{self.call}() was cancelled: its request passed its deadline"),
            reraise_callback=False)

    def _finish(self, error: BaseException | None, *, reraise_callback: bool) -> None:
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        if self._request is not None:
            tickets.untrack(self._request, self._cancel)
        self._exception = error
        self._state = apiproxy_rpc.RPC.FINISHING
        try:
            if self.callback:
                self._run_callback(reraise_callback)
        finally:
            if self._future is not None and not self._future.done():
                self._future.set_result(None)

    def _run_callback(self, reraise: bool) -> None:
        try:
            self.callback()
        except Exception as exc:
            self._exception = exc
            if reraise:  # as the SDK's RPC does when the caller's thread ran the call (wait_any's interruption)
                exc._appengine_apiproxy_rpc = self  # type: ignore[attr-defined]
                raise


class KilnStub:
    """The stub of one App Engine service in the SDK's ``apiproxy`` (served by kiln or not)."""

    THREADSAFE = True

    def __init__(self, name: str | None, proxy: Proxy) -> None:
        self.name = name
        self.proxy = proxy

    def CreateRPC(self) -> KilnRPC:  # noqa: N802 - the SDK's name
        return KilnRPC(stub=self)

    def MakeSyncCall(self, service: str, call: str, request: Any, response: Any) -> None:  # noqa: N802
        rpc = self.CreateRPC()
        rpc.MakeCall(service, call, request, response)
        rpc.Wait()
        rpc.CheckSuccess()

    def serve(self, package: str, call: str, request: Any, response: Any, ctx: CallContext) -> None:
        """Run one admitted call: the service's answer, or the SDK's error for what kiln does not serve."""
        service = self.proxy.services.get(package)
        if service is None:
            raise apiproxy_errors.CallNotFoundError(
                f"The API package '{package}' or call '{call}()' was not found: kiln does not provide the App Engine "
                f"service {package!r} yet")
        try:
            service.handle(call, request, response, ctx)
        except apiproxy_errors.Error:
            raise
        except errors.DeadlineExceededError as exc:
            raise apiproxy_errors.DeadlineExceededError(
                f"The API call {package}.{call}() took too long to respond and was cancelled: {exc}") from None
        except errors.KilnError as exc:
            raise apiproxy_errors.RPCFailedError(f"The API call {package}.{call}() failed: {exc}") from None
        except Exception:
            log.exception("kiln's %s service failed on %s", package, call)
            raise apiproxy_errors.RPCFailedError(
                f"The API call {package}.{call}() failed in kiln (see the instance log)") from None


def _keep_kilns_default(stub: Any) -> None:
    log.debug("kept kiln's default stub instead of %s", type(stub).__name__)


def install(app_id: str, services: Iterable[Service] | None = None,
            stubmap: apiproxy_stub_map.APIProxyStubMap | None = None) -> Proxy:
    """Register kiln's stub for every App Engine service in the SDK's ``apiproxy`` (module docstring).

    Args:
        app_id: the app this instance serves; only its tickets are accepted.
        services: the services kiln serves (default: :func:`default_services`).
        stubmap: the SDK's stub map to register in (default: ``apiproxy_stub_map.apiproxy``).
    """
    # The SDK may make os.environ request-local once the app runs; kiln's call workers then read these.
    _rpc.remember_settings()
    served = {s.name: s for s in (default_services() if services is None else services)}
    proxy = Proxy(app_id, served)
    target = apiproxy_stub_map.apiproxy if stubmap is None else stubmap
    for name in sorted({*SDK_SERVICES, *served}):
        target.ReplaceStub(name, KilnStub(name, proxy))
    # Names no one knows. Through the class: a second install (another app in the same process, as in tests) must
    # replace the first one's default, which the instance's SetDefaultStub below no longer does.
    type(target).SetDefaultStub(target, KilnStub(None, proxy))
    # wrap_wsgi_app() sets the SDK's HTTP transport as the default stub: it would send calls for names no one knows
    # to appengine.googleapis.internal. kiln's stays: such a call gets CallNotFoundError here.
    target.SetDefaultStub = _keep_kilns_default
    proxy.submit_ready()
    return proxy
