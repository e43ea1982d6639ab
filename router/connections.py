"""The router's HTTP connections: aiohttp's, with a deadline for request headers and a neutral Server header.

aiohttp's keep-alive timer (``idle_timeout_seconds``) closes a connection that
sends no complete request for that long. A client may still hold a connection
(and a parser) for the whole idle period by sending a header a byte at a time
(slowloris). So each request's headers get their own, shorter deadline
(``header_timeout_seconds``), counted from the request's first byte (from the
connection's opening for the first request): when it passes before the headers
are complete, the router answers 408 (if no response is under way on the
connection) and closes it.

A client may equally hold a connection (and the router's handler, which waits
for the body before it asks the app) by sending complete headers and then the
body a few bytes at a time. So request bodies must arrive at a minimum rate,
as Apache's mod_reqtimeout ``body=20,MinRate=500`` has it: the body may take
``body_grace_seconds``, plus one second for every ``body_min_bytes_per_second``
bytes received. A client slower than that gets 408 (:class:`SlowBodyError`,
turned into the answer by :func:`track`, whichever handler was reading) and the
connection is closed. A fast upload earns time as it goes, so any size within
``max_request_bytes`` passes; time the router itself does not read (aiohttp
pauses reading while the handler has not consumed what arrived) does not count
against the client.

The router learns that a request's headers are complete when aiohttp hands
the request to it (:func:`track`), and that the connection waits for the next
request when the handler returns.

Every response says ``Server: kiln``: the app's own responses
(:mod:`router.responses`), the router's pages (:func:`server_header`), and
aiohttp's answers to malformed requests (:meth:`Connection.handle_error`), so
no version of Python or aiohttp is revealed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import streams, web
from aiohttp.web_protocol import RequestHandler

from router import responses

SERVER = "kiln"
_TIMEOUT_TEXT = b"The request headers did not arrive in time.\n"
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nServer: kiln\r\nConnection: close\r\n"
                     b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_TEXT), _TIMEOUT_TEXT))


class SlowBodyError(Exception):
    """The request body arrived slower than the minimum rate (raised where the handler reads it)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BodyRate:
    """The minimum transfer rate of request bodies (see module docstring); ``grace_seconds`` 0: none."""

    grace_seconds: float
    min_bytes_per_second: float


class Connection(RequestHandler):
    """One client connection (see module docstring)."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, header_timeout: float,
                 body_rate: BodyRate, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_started: float | None = None  # the first byte of the request whose headers are awaited
        self._between_requests = True  # waiting for a request's first byte, or reading its headers
        self._served = 0
        self._body_rate = body_rate
        self._body: streams.StreamReader | None = None  # the body being received, while it is watched
        self._body_started = 0.0  # when it started; moved on by the time the router paused reading
        self._body_timer: asyncio.TimerHandle | None = None
        self._paused_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._headers_start()

    def data_received(self, data: bytes) -> None:
        if self._between_requests and self._header_started is None:
            self._headers_start()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def pause_reading(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._loop.time()
        super().pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._paused_at is not None:
            self._body_started += self._loop.time() - self._paused_at  # the router's wait, not the client's
            self._paused_at = None
        super().resume_reading(resume_parser)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a malformed request or a failed handler, with kiln's Server header."""
        response = super().handle_error(request, status, exc, message)
        response.headers["Server"] = SERVER
        return response

    def headers_complete(self, body: streams.StreamReader) -> None:
        """A request's headers have arrived (its handler starts); ``body`` is still to come."""
        self._between_requests = False
        self._header_started = None  # the timer stays: when it fires it finds nothing to do, or a later request
        if self._body_rate.grace_seconds > 0 and not body.is_eof():
            self._body = body
            self._body_started = self._loop.time()
            self._body_timer = self._loop.call_at(self._body_deadline(), self._check_body)

    def request_done(self) -> None:
        """The handler returned: the next bytes start the next request."""
        self._between_requests = True
        self._served += 1
        self._stop_body_timer()

    def _body_deadline(self) -> float:
        assert self._body is not None
        earned = self._body.total_bytes / self._body_rate.min_bytes_per_second
        return self._body_started + self._body_rate.grace_seconds + earned

    def _check_body(self) -> None:
        """At the body's deadline (as it was when set): fail the body if the client has not earned more time."""
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof():
            return
        now = self._loop.time()
        deadline = self._body_deadline() if self._paused_at is None else now + self._body_rate.grace_seconds
        if now < deadline:
            self._body_timer = self._loop.call_at(deadline, self._check_body)
            return
        body.set_exception(SlowBodyError(f"the request body arrived slower than "
                                         f"{self._body_rate.min_bytes_per_second:g} bytes a second"))

    def _stop_body_timer(self) -> None:
        self._body = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_start(self) -> None:
        """A request's first byte has come: its headers are due within the header timeout. One timer serves the
        connection's requests (a keep-alive connection's requests each cost a clock read, not a timer): it is set
        when none is running, and when it fires early for the current request it is set again for its deadline."""
        if self._header_timeout > 0:
            self._header_started = self._loop.time()
            if self._header_timer is None:
                self._header_timer = self._loop.call_at(self._header_started + self._header_timeout,
                                                        self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        started = self._header_started
        if not self._between_requests or started is None or self.transport is None:
            return  # no request's headers are awaited: the next request's first byte sets the timer again
        deadline = started + self._header_timeout
        if self._loop.time() < deadline:  # set for an earlier request: this one's headers have until its deadline
            self._header_timer = self._loop.call_at(deadline, self._headers_too_slow)
            return
        if self._served == 0:  # nothing else is being written on this connection
            self.transport.write(_TIMEOUT_RESPONSE)
        self.force_close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the request's :class:`Connection` when its headers are complete and when its handler is done."""
    transport = request.transport
    connection = transport.get_protocol() if transport is not None else None
    if not isinstance(connection, Connection):
        return await handler(request)
    connection.headers_complete(request.content)
    try:
        return await handler(request)
    except SlowBodyError as exc:
        answer = responses.plain(408, f"Request timeout: {exc}.")
        answer.force_close()  # the rest of the body may still come, slowly: never wait for it
        return answer
    finally:
        connection.request_done()


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response the router makes says ``Server: kiln``."""
    response.headers["Server"] = SERVER


async def listen(runner: web.BaseRunner, host: str, port: int, *, header_timeout: float, body_rate: BodyRate,
                 reuse_port: bool = False, **handler_options: Any) -> asyncio.Server:
    """Accept connections for ``runner``'s server on ``host:port`` (after ``runner.setup()``).

    ``reuse_port``: share the port with other processes listening on it with ``SO_REUSEPORT`` (the router's
    workers, :mod:`router.workers`); the kernel spreads new connections over them.

    ``handler_options`` are aiohttp's per-connection options (``keepalive_timeout``, ``access_log``…).
    The caller closes the returned server before ``runner.cleanup()``.
    """
    manager = runner.server
    assert manager is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Connection(manager, loop=loop, header_timeout=header_timeout, body_rate=body_rate, **handler_options),
        host, port, reuse_address=True, reuse_port=reuse_port or None)
