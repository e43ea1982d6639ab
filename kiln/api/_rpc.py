"""The one client transport every ``kiln.api`` module uses to reach its service.

- **Channels** (:func:`channel`, :func:`stub`): one per target, all with the same options
  (:data:`CHANNEL_OPTIONS`: message sizes above every service's limit, keepalive, a
  reconnect backoff of at most a second). A module's
  service address comes from what the runtime exported (``KILN_<SERVICE>_ADDR``); memcache,
  which has several shards, dials each with :func:`channel`.
- **Identity**: every call carries the app's token (``KILN_APP_TOKEN``) as its
  ``authorization`` metadata (:func:`metadata`), and, when kiln traces, the request's
  ``traceparent``.
- **Deadlines**: every call has one; :data:`DEFAULT_TIMEOUT` unless the module or the app's
  ``rpc.deadline`` gives another. On a thread serving a request, no call outlasts the request:
  its deadline is cut to the request's, and a call cut that way ends in the request timer's
  ``DeadlineExceededError`` (:func:`_request_bound`), as on App Engine, where a request blocked
  in an API call at its deadline gets that error and not the call's.
- **Errors**: :func:`error_from` turns a gRPC status into the module's App Engine exception;
  each module supplies only its :class:`ErrorTable` (stable code → class, status → class).
- **Calls**: :func:`call` for a blocking call, :class:`UserRPC` for App Engine's asynchronous
  shape (``create_rpc`` → ``make_call`` → ``wait``/``check_success``/``get_result``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import grpc

from kiln import errors
from kiln import runtime as _runtime

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
# Above every service's limit (32 MB by default; URL Fetch, mail and images allow 40 MB), so a
# response a service may send is never refused by the client (a URL Fetch response may carry
# 32 MB of content plus its envelope; a memcache get_multi up to 32 MB of values).
MAX_MESSAGE_BYTES = 40 * 1024 * 1024
# Keepalive pings during calls find a dead connection before the call's deadline does. Five
# minutes is the shortest interval a gRPC server accepts by default (shorter ones earn a
# GOAWAY "too_many_pings"), and idle channels do not ping, which servers refuse by default.
KEEPALIVE_MS = 300_000
KEEPALIVE_TIMEOUT_MS = 20_000
# A service that went away is dialled again every second or so, so one that restarts is reached within about a
# second; gRPC's own backoff grows to two minutes, and until its next attempt every call fails at once.
MAX_RECONNECT_BACKOFF_MS = 1_000

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """:data:`CHANNEL_OPTIONS` with another message size limit (both ways), for a client of larger messages."""
    sizes = ("grpc.max_receive_message_length", "grpc.max_send_message_length")
    return [*(o for o in CHANNEL_OPTIONS if o[0] not in sizes), *((name, max_message_bytes) for name in sizes)]


_lock = threading.Lock()
_stubs: dict[str, Any] = {}


def channel(target: str) -> grpc.Channel:
    """A new channel to ``target`` with the options every kiln client uses."""
    return grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))


def stub(service: str, factory: Callable[[grpc.Channel], T]) -> T:
    """The process-wide stub for ``service`` (e.g. ``"DATASTORE"``), dialled at ``KILN_<service>_ADDR``."""
    with _lock:
        found = _stubs.get(service)
        if found is None:
            address = setting(f"KILN_{service}_ADDR")
            if not address:
                raise errors.UnavailableError(
                    f"KILN_{service}_ADDR is not set: run the app under kiln (kiln dev or a runtime instance)")
            found = _stubs[service] = factory(channel(address))
        return cast(T, found)


def reset() -> None:
    """Forget channels and remembered settings (after the environment changed, e.g. in tests)."""
    with _lock:
        _stubs.clear()
        _settings.clear()


# kiln's process-wide settings (KILN_*) as last read. Google's SDK makes ``os.environ`` request-local
# (``wrap_wsgi_app``'s legacy context mode): a thread that serves no request — the workers of kiln's SDK proxy, which
# run asynchronous API calls — then sees an empty one, and uses these.
_settings: dict[str, str] = {}


def setting(name: str) -> str:
    """A process-wide setting of the runtime (``KILN_APP_TOKEN``, ``KILN_<SERVICE>_ADDR``); ``""`` if unset."""
    value = os.environ.get(name, "")
    if value:
        _settings[name] = value
        return value
    return _settings.get(name, "")


def remember_settings() -> None:
    """Remember kiln's settings now (the runtime calls it before the app's code can make ``os.environ``
    request-local)."""
    for name, value in list(os.environ.items()):
        if name.startswith("KILN_") and value:
            _settings[name] = value


def app_token() -> str:
    """The app's identity token, which every call carries."""
    return setting("KILN_APP_TOKEN")


def metadata() -> tuple[tuple[str, str], ...]:
    """The metadata every call sends: the app's token, and on a request's thread when kiln traces, the request's
    trace context (``traceparent``, so the service's span joins the request's trace)."""
    global _metadata
    token = app_token()
    known = _metadata
    if known[0] != token:
        known = _metadata = (token, (("authorization", f"Bearer {token}"),))
    parent: str | None = getattr(_trace, "parent", None)
    return known[1] if parent is None else (*known[1], ("traceparent", parent))


# The trace context of the request this thread serves (W3C traceparent), set by the runtime around the request when
# it traces (kiln_platform/tracing.py); never set otherwise.
_trace = threading.local()


def set_trace_parent(parent: str | None) -> None:
    """The runtime names the trace context of the request this thread starts serving (``None``: it ended)."""
    _trace.parent = parent


# The last token seen and its metadata, built once rather than per call (one tuple: threads read it whole).
_metadata: tuple[str, tuple[tuple[str, str], ...]] = ("", ())


# --- errors ----------------------------------------------------------------------------------------------------

ErrorFactory = Callable[[str], BaseException]


@dataclasses.dataclass(frozen=True)
class ErrorTable:
    """How one API module names its service's errors (the only part of error decoding a module writes).

    Attributes:
        codes: the stable code a service sends in ``kiln-error-code`` → the module's exception.
        statuses: a gRPC status → the module's exception, when no code matched.
        unclassified: the module's root exception for what kiln's own classes leave unclassified
            (``INTERNAL``, ``UNKNOWN``, ``RESOURCE_EXHAUSTED``…); ``None`` keeps :class:`kiln.errors.KilnError`.
    """

    codes: Mapping[str, ErrorFactory] = dataclasses.field(default_factory=dict)
    statuses: Mapping[grpc.StatusCode, ErrorFactory] = dataclasses.field(default_factory=dict)
    unclassified: ErrorFactory | None = None

    def with_codes(self, codes: Mapping[str, ErrorFactory]) -> ErrorTable:
        """This table with some codes added or replaced (e.g. an error that names the call's argument)."""
        return dataclasses.replace(self, codes={**self.codes, **codes})


KILN_ERRORS = ErrorTable()


def error_from(exc: grpc.RpcError, table: ErrorTable = KILN_ERRORS) -> BaseException:
    """The exception an app sees for a failed call: the module's class by code, else by status, else kiln's."""
    # types-grpcio types the pairs as _Metadatum objects, never None; at runtime they are None or
    # (key, value) pairs, with str values for keys without the "-bin" suffix.
    pairs = cast("tuple[tuple[str, str], ...] | None", exc.trailing_metadata())
    code = dict(pairs or ()).get(errors.ERROR_CODE_KEY, "")
    status = exc.code()
    details = exc.details() or code or status.name
    if code in table.codes:
        return table.codes[code](details)
    if status in table.statuses:
        return table.statuses[status](details)
    found = errors.from_grpc(status, details, code or None)
    if type(found) is errors.KilnError and table.unclassified is not None:
        return table.unclassified(details)
    return found


# --- calls -----------------------------------------------------------------------------------------------------

def _request_bound(timeout: float) -> tuple[float, _runtime._Deadline | None]:
    """``timeout`` cut to what is left of the request this thread serves, and that request's deadline if it cut it."""
    deadline = _runtime._current_deadline()
    if deadline is None:
        return timeout, None
    left = deadline.time_left()
    return (left, deadline) if left < timeout else (timeout, None)


def _error_for(exc: grpc.RpcError, table: ErrorTable, cut_by: _runtime._Deadline | None) -> BaseException:
    """The exception for a failed call; for a call the request's deadline cut, first the request timer's own."""
    if cut_by is not None and exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED and not cut_by.passed.is_set():
        # The timer raises DeadlineExceededError in this thread as soon as it runs Python code after the timer
        # fired: wait for that moment (it is the request's deadline, where the call stopped), up to the grace.
        cut_by.passed.wait(max(0.0, cut_by.hard_at - time.monotonic()))
    return error_from(exc, table)


def call(method: Callable[..., T], request: Any, *, timeout: float = DEFAULT_TIMEOUT,
         table: ErrorTable = KILN_ERRORS) -> T:
    """Call a stub method with the app token and a deadline; a failure raises the module's exception."""
    timeout, cut_by = _request_bound(timeout)
    try:
        return method(request, timeout=timeout, metadata=metadata())
    except grpc.RpcError as exc:
        raise _error_for(exc, table, cut_by) from None


class UserRPC:
    """One asynchronous call, in the shape of App Engine's ``UserRPC``.

    ``deadline`` (seconds) bounds the call (:data:`DEFAULT_TIMEOUT` when ``None``); ``callback`` runs once
    when the call has finished and its result or error is known. A module starts the call with
    :meth:`make_call`; the app collects it with :meth:`get_result`.
    """

    def __init__(self, deadline: float | None = None, callback: Callable[[], Any] | None = None) -> None:
        self.deadline = deadline
        self.callback = callback
        self._started = False
        self._future: Any = None
        self._hook: Callable[[Any], Any] = lambda response: response
        self._table = KILN_ERRORS
        self._result: Any = None
        self._error: BaseException | None = None
        self._done = False
        self._cut_by: _runtime._Deadline | None = None

    def make_call(self, method: Any, request: Any, *, hook: Callable[[Any], Any] | None = None,
                  table: ErrorTable = KILN_ERRORS, timeout: float | None = None,
                  default_timeout: float = DEFAULT_TIMEOUT, now: bool = False) -> UserRPC:
        """Send ``request`` to the stub method ``method``.

        Args:
            hook: turns the response into the result (runs when the call is collected).
            table: the module's errors.
            timeout: the call's deadline in seconds; by default the RPC's ``deadline``, or when it has
                none, ``default_timeout`` (the module's default deadline).
            now: wait for the answer in this thread (the synchronous functions), which costs about a
                millisecond less than collecting a future, whose answer is handed over from gRPC's thread.
        """
        if self._started:
            raise AssertionError("this RPC was already used for a call; create a new one")
        self._started = True
        self._hook = hook or self._hook
        self._table = table
        if timeout is None:
            timeout = self.deadline if self.deadline is not None else default_timeout
        timeout, self._cut_by = _request_bound(timeout)
        if now:
            self._settle(lambda: method(request, timeout=timeout, metadata=metadata()))
        else:
            self._future = method.future(request, timeout=timeout, metadata=metadata())
        return self

    def _settle(self, response: Callable[[], Any]) -> None:
        try:
            self._result = self._hook(response())
        except grpc.RpcError as exc:
            self._error = _error_for(exc, self._table, self._cut_by)
        self._done = True
        if self.callback is not None:
            self.callback()

    def wait(self) -> None:
        """Block until the call finished; run the callback once."""
        if self._done:
            return
        if self._future is None:
            raise AssertionError("no call was made with this RPC")
        self._settle(self._future.result)

    def check_success(self) -> None:
        """Raise the call's error, if it failed."""
        self.wait()
        if self._error is not None:
            raise self._error

    def get_result(self) -> Any:
        """The call's result, or its error raised."""
        self.check_success()
        return self._result
