"""The standard library's HTTP client, carried by the URL Fetch service, as on App Engine.

App Engine's Python runtime replaced ``httplib`` so that ``urllib`` and
anything built on ``http.client`` fetched through URL Fetch. kiln does the
same: :func:`install` replaces ``http.client.HTTPConnection`` and
``HTTPSConnection`` with classes that collect the request and send it with
:func:`kiln.api.urlfetch.fetch` (redirects are left to the caller, as
``http.client`` does), then hand back a real ``http.client.HTTPResponse``
parsed from the fetched status, headers and body. No socket is opened by the
app's process; the URL Fetch service's rules (sizes, deadline, forbidden
internal addresses) apply. A failed fetch raises ``OSError`` (``urllib``
turns it into ``URLError``), naming URL Fetch's error. Requests for the
metadata server (``metadata.google.internal``) never leave the process:
:mod:`runtime.metadata` answers them.
"""

from __future__ import annotations

import http.client
import io
import re
from collections.abc import Iterable
from typing import Any

from kiln.api import urlfetch
from runtime import metadata

_ORIGINAL = (http.client.HTTPConnection, http.client.HTTPSConnection)
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class _Canned:
    """Stands in for a socket: ``HTTPResponse`` reads the fetched reply from it."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._data))

    def close(self) -> None:
        pass


class FetchHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` over URL Fetch (see the module docstring)."""

    scheme = "http"

    def __init__(self, host: str, port: int | None = None, *args: Any, **kwargs: Any) -> None:
        # http.client's signatures differ between the two classes; only host, port and timeout matter here.
        timeout = kwargs.get("timeout", args[0] if args and type(self) is FetchHTTPConnection else None)
        super().__init__(host, port)
        self.timeout = float(timeout) if isinstance(timeout, (int, float)) else None
        self._fetch: tuple[str, str, list[tuple[str, str]]] | None = None
        self._body: list[bytes] = []
        self._reply: http.client.HTTPResponse | None = None

    def connect(self) -> None:
        """Nothing to connect: the URL Fetch service opens the connection."""

    def putrequest(self, method: str, url: str, skip_host: bool = False, skip_accept_encoding: bool = False) -> None:
        super().putrequest(method, url, skip_host=True, skip_accept_encoding=True)
        self._fetch = (method, url, [])
        self._body, self._reply = [], None

    def putheader(self, header: str | bytes, *values: Any) -> None:
        super().putheader(header, *values)
        assert self._fetch is not None
        name = header.decode("latin-1") if isinstance(header, bytes) else header
        self._fetch[2].append((name, ", ".join(v.decode("latin-1") if isinstance(v, bytes) else str(v)
                                               for v in values)))

    def endheaders(self, message_body: Any = None, *, encode_chunked: bool = False) -> None:
        """The request is complete here unless a body is still to come through ``send()``: fetch now, so
        a failure surfaces from ``request()`` as with a real connection (``urllib`` wraps it in ``URLError``)."""
        self._buffer.clear()  # type: ignore[attr-defined]  # nothing is written to a socket
        if message_body is not None:
            self._collect(message_body)
        assert self._fetch is not None
        more_to_come = message_body is None and any(
            (k.lower() == "content-length" and v.strip() not in ("", "0")) or k.lower() == "transfer-encoding"
            for k, v in self._fetch[2])
        if not more_to_come:
            self._reply = self._perform()

    def send(self, data: Any) -> None:
        self._collect(data)

    def _collect(self, data: Any) -> None:
        if isinstance(data, str):
            self._body.append(data.encode("iso-8859-1"))
        elif isinstance(data, (bytes, bytearray, memoryview)):
            self._body.append(bytes(data))
        elif hasattr(data, "read"):
            while chunk := data.read(65536):
                self._body.append(chunk.encode("iso-8859-1") if isinstance(chunk, str) else chunk)
        elif isinstance(data, Iterable):
            for chunk in data:
                self._collect(chunk)
        else:
            raise TypeError(f"cannot send a body of type {type(data).__name__}")

    def getresponse(self) -> http.client.HTTPResponse:
        reply = self._reply if self._reply is not None else self._perform()
        self._reply = None
        return reply

    def _perform(self) -> http.client.HTTPResponse:
        if self._fetch is None:
            raise http.client.ResponseNotReady("no request was sent")
        method, path, headers = self._fetch
        self._fetch = None
        self._HTTPConnection__state = http.client._CS_IDLE  # type: ignore[attr-defined]  # ready for the next request
        # An absolute-form target (a proxy request) is the whole URL; an origin-form path may hold "://" in its query.
        url = path if _ABSOLUTE.match(path) else f"{self.scheme}://{self._authority()}{path}"
        status, header_list, content = metadata.answer(method, url, _merge(headers)) or self._fetched(method, url,
                                                                                                   headers)
        raw = [f"HTTP/1.1 {status} {http.client.responses.get(status, '')}\r\n"]
        for name, value in header_list:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                raw.append(f"{name}: {value}\r\n")
        raw.append(f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n")
        reply = http.client.HTTPResponse(_Canned("".join(raw).encode("latin-1") + content),  # type: ignore[arg-type]
                                         method=method, url=url)
        reply.begin()
        return reply

    def _fetched(self, method: str, url: str, headers: list[tuple[str, str]]) -> metadata.Answer:
        try:
            result = urlfetch.fetch(url, payload=b"".join(self._body) or None, method=method,
                                    headers=_merge(headers), follow_redirects=False, deadline=self.timeout,
                                    allow_truncated=False)
        except urlfetch.Error as exc:
            raise OSError(f"URL Fetch: {type(exc).__name__}: {exc}") from exc
        return result.status_code, list(result.header_list), result.content

    def _authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def close(self) -> None:
        self._fetch, self._body = None, []


class FetchHTTPSConnection(FetchHTTPConnection):
    """``http.client.HTTPSConnection`` over URL Fetch; certificates are validated by the service."""

    scheme = "https"
    default_port = http.client.HTTPS_PORT


def _merge(headers: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def install() -> None:
    """Route ``http.client`` (and so ``urllib``) through URL Fetch in this process."""
    http.client.HTTPConnection = FetchHTTPConnection  # type: ignore[misc]
    http.client.HTTPSConnection = FetchHTTPSConnection  # type: ignore[misc,assignment]


def uninstall() -> None:
    http.client.HTTPConnection, http.client.HTTPSConnection = _ORIGINAL  # type: ignore[misc]
