"""API tickets: what binds an API call Google's SDK makes to the app and the request it belongs to.

App Engine's runtime gave each request a ticket (the ``X-AppEngine-Api-Ticket`` header, which the SDK reads as
``HTTP_X_APPENGINE_API_TICKET``) that the API host accepted for that app until the request ended. kiln does the
same inside the instance: the runtime opens a ticket for each request (:func:`opened`), which puts it in the
request's environ and registers it here until the request ends; :mod:`kiln.sdk.proxy` accepts a call only with a
ticket registered for its own app and still open. Threads the request started see the request's environ, so they
call with its ticket, and fail once the request has ended.

Deadlines: :func:`cancel` fails a request's calls in flight (``apiproxy_errors.CancelledError``) and refuses its
later ones; the request timer calls it when the request's deadline passes. A call running on the request's own
thread at that moment (the proxy runs a synchronous call there) cannot be interrupted from outside: it ends at
its own deadline, which the proxy bounds by the request's (``expires_at``).

This module holds no authority (a ticket is not a credential: the app's token is) and does not import the SDK, so
the runtime uses it in every instance.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

__all__ = ["ENVIRON_KEY", "Request", "cancel", "close", "lookup", "open_ticket", "opened", "state", "track", "untrack"]

# Where the SDK reads the ticket from (the header X-AppEngine-Api-Ticket, as a CGI variable).
ENVIRON_KEY = "HTTP_X_APPENGINE_API_TICKET"
# Tickets of ended requests remembered, so that a late call is told its request ended rather than "unknown".
_ENDED_KEPT = 4096


@dataclasses.dataclass
class Request:
    """One request's ticket: whose, its environ, until when, and its calls in flight."""

    app_id: str
    environ: MutableMapping[str, Any]
    expires_at: float | None = None  # time.monotonic() at the request's deadline, when the runtime knows it
    cancelled: bool = False
    # Calls in flight: each entry fails its call when the request is cancelled.
    in_flight: set[Callable[[], None]] = dataclasses.field(default_factory=set)

    def remaining(self) -> float | None:
        """Seconds left before the request's deadline (``None``: no deadline known)."""
        return None if self.expires_at is None else self.expires_at - time.monotonic()


_lock = threading.Lock()
_open: dict[str, Request] = {}
_ended: collections.OrderedDict[str, str] = collections.OrderedDict()  # ticket -> why it no longer works


_TICKET_BYTES = 24  # 192 random bits, 32 URL-safe characters (as secrets.token_urlsafe(24) gave)
_POOL_TICKETS = 256


class _RandomPool:
    """Random bytes from the OS's CSPRNG read for many tickets at once: one system call per 256 requests instead
    of one per request. Emptied in a forked child, so two processes never hand out the same bytes."""

    def __init__(self) -> None:
        self.data = b""
        self.at = 0
        os.register_at_fork(after_in_child=self.empty)

    def empty(self) -> None:
        self.data, self.at = b"", 0

    def take(self) -> bytes:
        """The next ticket's bytes (under ``_lock``)."""
        if self.at >= len(self.data):
            self.data, self.at = os.urandom(_TICKET_BYTES * _POOL_TICKETS), 0
        start = self.at
        self.at = start + _TICKET_BYTES
        return self.data[start:self.at]


_random = _RandomPool()


def open_ticket(app_id: str, environ: MutableMapping[str, Any], *, expires_at: float | None = None) -> str:
    """Mint a ticket for a request of ``app_id``, put it in ``environ`` and register it; returns it."""
    with _lock:
        ticket = base64.urlsafe_b64encode(_random.take()).decode("ascii")  # 24 bytes: no "=" padding
        _open[ticket] = Request(app_id, environ, expires_at)
    environ[ENVIRON_KEY] = ticket
    return ticket


def close(ticket: str) -> None:
    """The request ended: its ticket no longer works."""
    with _lock:
        if _open.pop(ticket, None) is not None:
            _ended[ticket] = "its request has ended"
            while len(_ended) > _ENDED_KEPT:
                _ended.popitem(last=False)


@contextlib.contextmanager
def opened(app_id: str, environ: MutableMapping[str, Any], *, expires_at: float | None = None) -> Iterator[str]:
    """A ticket for the block (one request): minted into ``environ``, closed when the block ends."""
    ticket = open_ticket(app_id, environ, expires_at=expires_at)
    try:
        yield ticket
    finally:
        close(ticket)


def lookup(ticket: str) -> Request | None:
    """The open request of ``ticket``, or ``None`` (see :func:`state` for why)."""
    return _open.get(ticket)


def state(ticket: str) -> str:
    """Why ``ticket`` does not work: its request ended, or it was never issued by this instance."""
    with _lock:
        return _ended.get(ticket, "it was not issued to a request of this instance")


def track(request: Request, fail: Callable[[], None]) -> bool:
    """Count a call in flight of ``request`` (``fail`` fails it on :func:`cancel`); ``False`` if cancelled already."""
    with _lock:
        if request.cancelled:
            return False
        request.in_flight.add(fail)
        return True


def untrack(request: Request, fail: Callable[[], None]) -> None:
    """The call ``fail`` belongs to has finished."""
    with _lock:
        request.in_flight.discard(fail)


def cancel(ticket: str) -> int:
    """Fail the calls in flight of ``ticket``'s request (``CancelledError``) and refuse its later calls.

    For the request timer, when the request's deadline passes. Returns how many calls were failed. A call running
    on the request's own thread is not among them: it ends at its own deadline (module docstring).
    """
    with _lock:
        request = _open.get(ticket)
        if request is None:
            return 0
        request.cancelled = True
        failing = list(request.in_flight)
        request.in_flight.clear()
    for fail in failing:
        fail()
    return len(failing)
