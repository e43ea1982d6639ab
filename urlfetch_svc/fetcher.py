"""Performing one fetch with App Engine's limits: size, deadline, redirects, certificates.

aiohttp does the HTTP. kiln adds: every connection's address checked against
the app's :class:`~urlfetch_svc.policy.Policy` (a resolver that refuses
internal addresses, plus a check of literal IPs, on every redirect hop); one
connection pool per policy, so a connection opened for an app allowed an
internal network is never reused for another; redirects followed here, at
most :data:`MAX_REDIRECTS`, with the method rules browsers use; the response
read in bounded chunks, cut at :data:`MAX_RESPONSE_BYTES`; the whole fetch
(connect, redirects, body) under one deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import ipaddress
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from urlfetch_svc.policy import ForbiddenDestination, InvalidUrl, Policy, Target, parse_url

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
DEFAULT_DEADLINE = 5.0
MAX_DEADLINE = 60.0
_CHUNK = 256 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}

_policy: contextvars.ContextVar[Policy] = contextvars.ContextVar("urlfetch_policy")


class FetchFailed(Exception):
    """A fetch that could not complete; ``code`` is App Engine's URLFetchServiceError name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class Request:
    """What the app asked for, validated by the service."""

    method: str
    url: str
    headers: list[tuple[str, str]]
    payload: bytes
    follow_redirects: bool
    deadline: float
    validate_certificate: bool
    allow_truncated: bool


@dataclasses.dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    content: bytes
    truncated: bool
    final_url: str


class _CheckedResolver(AbstractResolver):
    """Resolves with the system resolver and keeps only addresses the current app's policy allows."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            found = await self._inner.resolve(host, port, family)
        except OSError as exc:
            raise FetchFailed("DNS_ERROR", f"could not resolve {host!r}: {exc.strerror or exc}") from None
        policy = _policy.get()
        allowed = []
        refused: ForbiddenDestination | None = None
        for entry in found:
            try:
                policy.check(entry["host"], port)
                allowed.append(entry)
            except ForbiddenDestination as exc:
                refused = exc
        if not allowed:
            raise ForbiddenDestination(f"{host} resolves to a forbidden address: {refused}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class Fetcher:
    """Fetches URLs for apps; one aiohttp session (connection pool) per policy."""

    def __init__(self, max_connections: int = 100) -> None:
        self._sessions: dict[Policy, aiohttp.ClientSession] = {}
        self._max_connections = max_connections
        self._verified = ssl.create_default_context()

    def _session(self, policy: Policy) -> aiohttp.ClientSession:
        found = self._sessions.get(policy)
        if found is None or found.closed:
            connector = aiohttp.TCPConnector(resolver=_CheckedResolver(), limit=self._max_connections,
                                             ttl_dns_cache=10, enable_cleanup_closed=True)
            found = self._sessions[policy] = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"))
        return found

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def fetch(self, req: Request, policy: Policy) -> Response:
        """Perform ``req``; raise :class:`FetchFailed`, :class:`InvalidUrl` or :class:`ForbiddenDestination`."""
        _policy.set(policy)
        try:
            async with asyncio.timeout(req.deadline):
                return await self._follow(req, policy)
        except TimeoutError:
            raise FetchFailed("DEADLINE_EXCEEDED", f"the fetch did not finish within its {req.deadline:g} s "
                                                   "deadline") from None

    async def _follow(self, req: Request, policy: Policy) -> Response:
        method, url, payload, headers = req.method, req.url, req.payload, list(req.headers)
        for _ in range(MAX_REDIRECTS + 1):
            target = parse_url(url)
            _check_literal(target, policy)
            resp = await self._once(method, target, headers, payload, req)
            location = _header(resp.headers, "Location")
            if not (req.follow_redirects and resp.status in _REDIRECTS and location):
                return resp
            url = urllib.parse.urljoin(url, location)
            if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                method, payload = ("HEAD" if method == "HEAD" else "GET"), b""
                headers = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
        raise FetchFailed("TOO_MANY_REDIRECTS", f"more than {MAX_REDIRECTS} redirects (last: {url})")

    async def _once(self, method: str, target: Target, headers: Sequence[tuple[str, str]], payload: bytes,
                    req: Request) -> Response:
        ssl_arg: Any = (self._verified if req.validate_certificate else False) if target.scheme == "https" else None
        try:
            async with self._session(_policy.get()).request(
                    method, target.url, headers=headers, data=payload or None, allow_redirects=False,
                    ssl=ssl_arg, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                content, truncated = await _read_limited(resp)
                if truncated and not req.allow_truncated:
                    raise FetchFailed("RESPONSE_TOO_LARGE", f"the response is larger than {MAX_RESPONSE_BYTES} "
                                                            "bytes; pass allow_truncated=True to get the first part")
                out_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]
                return Response(resp.status, out_headers, content, truncated, target.url)
        except (FetchFailed, ForbiddenDestination, InvalidUrl):
            raise
        except aiohttp.ClientConnectorCertificateError as exc:
            raise FetchFailed("SSL_CERTIFICATE_ERROR", f"the server's certificate is not valid: "
                                                       f"{exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise FetchFailed("SSL_CERTIFICATE_ERROR", f"TLS handshake failed: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            cause = exc.__cause__ or exc.os_error
            if isinstance(cause, (ForbiddenDestination, FetchFailed)):
                raise cause from None
            raise FetchFailed("CONNECTION_ERROR", f"could not connect to {target.host}:{target.port}: "
                                                  f"{exc.os_error.strerror or exc.os_error}") from None
        except aiohttp.ServerDisconnectedError:
            raise FetchFailed("CLOSED", "the server closed the connection before answering") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise FetchFailed("MALFORMED_REPLY", f"the server's reply was malformed: {exc}") from None
        except aiohttp.ClientError as exc:
            raise FetchFailed("FETCH_ERROR", f"the fetch failed: {exc}") from None


def _check_literal(target: Target, policy: Policy) -> None:
    """aiohttp does not resolve IP literals, so check them here."""
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        return
    policy.check(target.host, target.port)


async def _read_limited(resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The body, at most :data:`MAX_RESPONSE_BYTES`; True if more was sent (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_RESPONSE_BYTES:
        chunk = await resp.content.read(_CHUNK)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)
        size += len(chunk)
    resp.close()  # stop reading an endless or oversized body; the connection is not reused
    return b"".join(chunks)[:MAX_RESPONSE_BYTES], True


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)
