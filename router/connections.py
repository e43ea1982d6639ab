"""The router's HTTP connections: aiohttp's, with a deadline for request headers and a neutral Server header.

aiohttp's keep-alive timer (``idle_timeout_seconds``) closes a connection that
sends no complete request for that long. A client may still hold a connection
(and a parser) for the whole idle period by sending a header a byte at a time
(slowloris). So each request's headers get their own, shorter deadline
(``header_timeout_seconds``), counted from the request's first byte (from the
connection's opening for the first request): when it passes before the headers
are complete, the router answers 408 (if no response is under way on the
connection) and closes it.

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
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

SERVER = "kiln"
_TIMEOUT_TEXT = b"The request headers did not arrive in time.\n"
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nServer: kiln\r\nConnection: close\r\n"
                     b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(_TIMEOUT_TEXT), _TIMEOUT_TEXT))


class Connection(RequestHandler):
    """One client connection (see module docstring)."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, header_timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._between_requests = True  # waiting for a request's first byte, or reading its headers
        self._served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._between_requests and self._header_timer is None:
            self._start_header_timer()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a malformed request or a failed handler, with kiln's Server header."""
        response = super().handle_error(request, status, exc, message)
        response.headers["Server"] = SERVER
        return response

    def headers_complete(self) -> None:
        """A request's headers have arrived (its handler starts)."""
        self._between_requests = False
        self._stop_header_timer()

    def request_done(self) -> None:
        """The handler returned: the next bytes start the next request."""
        self._between_requests = True
        self._served += 1

    def _start_header_timer(self) -> None:
        if self._header_timeout > 0:
            self._header_timer = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._between_requests or self.transport is None:
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
    connection.headers_complete()
    try:
        return await handler(request)
    finally:
        connection.request_done()


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response the router makes says ``Server: kiln``."""
    response.headers["Server"] = SERVER


async def listen(runner: web.AppRunner, host: str, port: int, *, header_timeout: float,
                 **handler_options: Any) -> asyncio.Server:
    """Accept connections for ``runner``'s application on ``host:port`` (after ``runner.setup()``).

    ``handler_options`` are aiohttp's per-connection options (``keepalive_timeout``, ``access_log``…).
    The caller closes the returned server before ``runner.cleanup()``.
    """
    manager = runner.server
    assert manager is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Connection(manager, loop=loop, header_timeout=header_timeout, **handler_options), host, port,
        reuse_address=True)
