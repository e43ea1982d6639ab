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
:mod:`runtime.metadata` answers them; nor do Cloud Logging's writes
(``https://logging.googleapis.com/v2/entries:write``): :mod:`runtime.cloudlogging`
answers them.

urllib3 2 (under ``requests``, and so google-auth and Google's client
libraries) subclasses ``http.client.HTTPConnection`` but opens its own socket
(``connect()``, and every HTTPS request), so the replaced ``http.client`` alone
does not carry it. When the app imports ``urllib3.connectionpool``, its pools
are given :class:`Urllib3Connection`, which sends each request through the same
path as above (the pools, retries, redirects and response decoding stay
urllib3's). urllib3 1.x keeps its own connections (refused by the sandbox). The
runtime also sets ``GOOGLE_CLOUD_DISABLE_GRPC``, so that Google's client
libraries take their HTTP/JSON transport rather than gRPC, whose C core opens
its own sockets.
"""

from __future__ import annotations

import http.client
import importlib.abc
import importlib.machinery
import io
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from kiln.api import urlfetch
from runtime import cloudlogging, metadata

log = logging.getLogger(__name__)

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
        status, header_list, content = exchange(method, url, _merge(headers), b"".join(self._body), self.timeout)
        raw = [f"HTTP/1.1 {status} {http.client.responses.get(status, '')}\r\n"]
        for name, value in header_list:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                raw.append(f"{name}: {value}\r\n")
        raw.append(f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n")
        reply = http.client.HTTPResponse(_Canned("".join(raw).encode("latin-1") + content),  # type: ignore[arg-type]
                                         method=method, url=url)
        reply.begin()
        return reply

    def _authority(self) -> str:
        return _authority(self.scheme, self.host, self.port)

    def close(self) -> None:
        self._fetch, self._body = None, []


class FetchHTTPSConnection(FetchHTTPConnection):
    """``http.client.HTTPSConnection`` over URL Fetch; certificates are validated by the service."""

    scheme = "https"
    default_port = http.client.HTTPS_PORT


def exchange(method: str, url: str, headers: Mapping[str, str], body: bytes,
             timeout: float | None) -> metadata.Answer:
    """One request of the app's HTTP clients: answered in the process (the metadata server, Cloud Logging's
    writes) or fetched by URL Fetch.

    Raises:
        OSError: URL Fetch failed (naming its error), as a failed connection would.
    """
    found = metadata.answer(method, url, headers) or cloudlogging.answer(method, url, headers, body)
    if found is not None:
        return found
    try:
        result = urlfetch.fetch(url, payload=body or None, method=method, headers=dict(headers),
                                follow_redirects=False, deadline=timeout, allow_truncated=False)
    except urlfetch.Error as exc:
        raise OSError(f"URL Fetch: {type(exc).__name__}: {exc}") from exc
    return result.status_code, list(result.header_list), result.content


def _authority(scheme: str, host: str, port: int | None) -> str:
    default = 443 if scheme == "https" else 80
    host = f"[{host}]" if ":" in host else host
    return host if port in (None, default) else f"{host}:{port}"


def _body_bytes(body: Any) -> bytes:
    """A request body as urllib3 or http.client may be given it: bytes, str, a file or an iterable of those."""
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if hasattr(body, "read"):
        out = []
        while chunk := body.read(65536):
            out.append(chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk))
        return b"".join(out)
    if isinstance(body, Iterable):
        return b"".join(_body_bytes(chunk) for chunk in body)
    raise TypeError(f"cannot send a body of type {type(body).__name__}")


class Urllib3Connection:
    """A urllib3 2 connection (its ``BaseHTTPConnection`` interface) whose requests go through :func:`exchange`:
    no socket; ``connect()`` does nothing, certificates are validated by URL Fetch."""

    default_port = 80
    scheme = "http"
    is_verified = False
    proxy_is_verified = None
    has_connected_to_proxy = False

    def __init__(self, host: str, port: int | None = None, *, timeout: Any = None, **_options: Any) -> None:
        # urllib3's TLS, socket and proxy options are the URL Fetch service's business here.
        self.host, self.port = host, port or self.default_port
        self.timeout = timeout
        self.proxy: Any = None
        self.proxy_config: Any = None
        self.blocksize = 16384
        self.source_address = None
        self.socket_options = None
        self._response: Any = None
        self._closed = True

    def set_tunnel(self, host: str, port: int | None = None, headers: Mapping[str, str] | None = None,
                   scheme: str = "http") -> None:
        raise OSError("kiln: outbound requests go through URL Fetch, which does not tunnel through a proxy")

    def connect(self) -> None:
        """Nothing to connect: the URL Fetch service opens the connection."""

    def request(self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, *,
                chunked: bool = False, preload_content: bool = True, decode_content: bool = True,
                enforce_content_length: bool = True) -> None:
        target = url if _ABSOLUTE.match(url) else f"{self.scheme}://{_authority(self.scheme, self.host, self.port)}{url}"
        timeout = float(self.timeout) if isinstance(self.timeout, (int, float)) else None
        status, header_list, content = exchange(method, target, dict(headers or {}), _body_bytes(body), timeout)
        package = _URLLIB3
        response_module = sys.modules[f"{package}.response"]
        fields = sys.modules[f"{package}._collections"].HTTPHeaderDict()
        for name, value in header_list:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                fields.add(name, value)
        fields.add("Content-Length", str(len(content)))
        self._response = response_module.HTTPResponse(
            body=io.BytesIO(content), headers=fields, status=status, version=11, version_string="HTTP/1.1",
            reason=http.client.responses.get(status, ""), preload_content=preload_content,
            decode_content=decode_content, original_response=None, request_method=method, request_url=target,
            enforce_content_length=enforce_content_length)
        self._closed = False

    def getresponse(self) -> Any:
        if self._response is None:
            raise http.client.ResponseNotReady("no request was sent")
        response, self._response = self._response, None
        return response

    def close(self) -> None:
        self._closed, self._response = True, None

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_connected(self) -> bool:
        return not self._closed


class Urllib3HTTPSConnection(Urllib3Connection):
    """:class:`Urllib3Connection` for ``https`` URLs."""

    default_port = 443
    scheme = "https"
    is_verified = True  # URL Fetch validates the server's certificate

    def set_cert(self, *args: Any, **kwargs: Any) -> None:
        """Certificates are URL Fetch's to check."""


_URLLIB3 = "urllib3"


def adopt_urllib3(connectionpool: ModuleType) -> None:
    """Give urllib3 2's connection pools (``connectionpool`` is its module) the URL Fetch connections."""
    version = getattr(sys.modules.get(f"{_URLLIB3}._version"), "__version__", "")
    if not version.startswith("2."):
        log.warning("urllib3 %s keeps its own sockets (kiln carries urllib3 2 through URL Fetch)", version or "?")
        return
    connectionpool.HTTPConnectionPool.ConnectionCls = Urllib3Connection
    connectionpool.HTTPSConnectionPool.ConnectionCls = Urllib3HTTPSConnection


class _Urllib3Hook(importlib.abc.MetaPathFinder):
    """Calls :func:`adopt_urllib3` when ``urllib3.connectionpool`` has been loaded (it is the app's own package)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != f"{_URLLIB3}.connectionpool":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            adopt_urllib3(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_HOOK = _Urllib3Hook()


def _merge(headers: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def install() -> None:
    """Route ``http.client`` (and so ``urllib``) and urllib3 2 through URL Fetch in this process, and Google's client
    libraries to their HTTP transport (module docstring)."""
    http.client.HTTPConnection = FetchHTTPConnection  # type: ignore[misc]
    http.client.HTTPSConnection = FetchHTTPSConnection  # type: ignore[misc,assignment]
    os.environ["GOOGLE_CLOUD_DISABLE_GRPC"] = "true"
    if f"{_URLLIB3}.connectionpool" in sys.modules:
        adopt_urllib3(sys.modules[f"{_URLLIB3}.connectionpool"])
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    http.client.HTTPConnection, http.client.HTTPSConnection = _ORIGINAL  # type: ignore[misc]
    os.environ.pop("GOOGLE_CLOUD_DISABLE_GRPC", None)
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
