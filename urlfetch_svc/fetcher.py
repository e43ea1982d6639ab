"""Performing one fetch with App Engine's limits: size, deadline, redirects, certificates.

aiohttp does the HTTP. kiln adds, for every hop (the first and each
redirect), three stages in this order: the URL is normalised once
(:func:`~urlfetch_svc.policy.parse_url`: IDNA/NFKC, every numeric address
form); the normalised host is resolved here and each address checked
against the app's :class:`~urlfetch_svc.policy.Policy`; and aiohttp is
handed the normalised URL and a resolver that only returns the addresses
just checked (it never looks a name up itself), so the connection goes to
exactly the address that was checked, while TLS still sends and verifies
the host name. Also: one connection pool per policy, so a connection opened
for an app allowed an internal network is never reused for another (a
kept-alive connection was opened to an address checked under the same
policy); redirects followed here, at most :data:`MAX_REDIRECTS`, with the
method rules browsers use; the response read in bounded chunks, cut at
:data:`MAX_RESPONSE_BYTES`; the whole fetch (connect, redirects, body) under
one deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from urlfetch_svc.policy import ForbiddenDestination, InvalidUrl, Policy, Target, join, parse_url

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
DEFAULT_DEADLINE = 5.0
MAX_DEADLINE = 60.0
_CHUNK = 256 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}

# The addresses checked for the current hop, by (host, port): all the pinned resolver may hand aiohttp.
_pinned: contextvars.ContextVar[Mapping[tuple[str, int], list[ResolveResult]]] = contextvars.ContextVar(
    "urlfetch_pinned")


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


async def checked_addresses(target: Target, policy: Policy) -> list[ResolveResult]:
    """The addresses ``target`` may be fetched from: its own (an IP host), or those its name resolves to that
    ``policy`` allows; the connection is made to these and no others.

    Raises:
        ForbiddenDestination: the address, or every address the name resolves to, is forbidden.
        FetchFailed: the name does not resolve (``DNS_ERROR``).
    """
    if target.address is not None:
        policy.check(str(target.address), target.port)
        return []  # aiohttp connects to an IP host as it is, without a resolver
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.name, target.port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_ADDRCONFIG)
    except OSError as exc:
        raise FetchFailed("DNS_ERROR", f"could not resolve {target.host!r}: {exc.strerror or exc}") from None
    allowed: list[ResolveResult] = []
    refused: ForbiddenDestination | None = None
    for family, _, proto, _, sockaddr in infos:
        address = str(sockaddr[0])
        try:
            policy.check(address, target.port)
        except ForbiddenDestination as exc:
            refused = exc
            continue
        allowed.append(ResolveResult(hostname=target.host, host=address, port=target.port, family=family,
                                     proto=proto, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
    if not allowed:
        raise ForbiddenDestination(f"{target.host} resolves to a forbidden address: {refused}")
    return allowed


class _PinnedResolver(AbstractResolver):
    """aiohttp's resolver: hands back the addresses checked for this hop (:data:`_pinned`) and never resolves."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = _pinned.get({}).get((host, port))
        if not found:  # only if aiohttp asked for a host this module did not give it: refuse, never look it up
            raise ForbiddenDestination(f"{host}:{port} was not checked against the policy")
        return found

    async def close(self) -> None:
        pass


class Fetcher:
    """Fetches URLs for apps; one aiohttp session (connection pool) per policy."""

    def __init__(self, max_connections: int = 100) -> None:
        self._sessions: dict[Policy, aiohttp.ClientSession] = {}
        self._max_connections = max_connections
        self._verified = ssl.create_default_context()

    def _session(self, policy: Policy) -> aiohttp.ClientSession:
        found = self._sessions.get(policy)
        if found is None or found.closed:
            # No DNS cache: each hop's connection uses the addresses checked for that hop, nothing remembered.
            connector = aiohttp.TCPConnector(resolver=_PinnedResolver(), limit=self._max_connections,
                                             use_dns_cache=False, enable_cleanup_closed=True)
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
        try:
            async with asyncio.timeout(req.deadline):
                return await self._follow(req, policy)
        except TimeoutError:
            raise FetchFailed("DEADLINE_EXCEEDED", f"the fetch did not finish within its {req.deadline:g} s "
                                                   "deadline") from None

    async def _follow(self, req: Request, policy: Policy) -> Response:
        method, url, payload, headers = req.method, req.url, req.payload, list(req.headers)
        for _ in range(MAX_REDIRECTS + 1):
            target = parse_url(url)  # 1. normalise: the host and port the connection will use
            pinned = await checked_addresses(target, policy)  # 2. resolve and check: the addresses it may use
            target.raise_if_invalid()  # what is wrong with a URL to an allowed place (credentials, zone id)
            resp = await self._once(method, target, pinned, headers, payload, req, policy)  # 3. connect to those
            resp.final_url = url  # as the app or the redirect wrote it (App Engine's final_url)
            location = _location(resp.headers)
            if not (req.follow_redirects and resp.status in _REDIRECTS and location):
                return resp
            url = join(target.url, location)
            if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                method, payload = ("HEAD" if method == "HEAD" else "GET"), b""
                headers = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
        raise FetchFailed("TOO_MANY_REDIRECTS", f"more than {MAX_REDIRECTS} redirects (last: {url})")

    async def _once(self, method: str, target: Target, pinned: list[ResolveResult],
                    headers: Sequence[tuple[str, str]], payload: bytes, req: Request, policy: Policy) -> Response:
        ssl_arg: Any = (self._verified if req.validate_certificate else False) if target.scheme == "https" else None
        url = yarl.URL(target.url, encoded=True)
        if (url.raw_host, url.port) != (target.host, target.port):  # the normalised form must reach aiohttp as is
            raise InvalidUrl(f"the HTTP client reads {target.url!r} as host {url.raw_host!r}, port {url.port}")
        token = _pinned.set({(target.host, target.port): pinned})
        try:
            async with self._session(policy).request(
                    method, url, headers=headers, data=payload or None, allow_redirects=False,
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
        finally:
            _pinned.reset(token)


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


def _location(headers: Sequence[tuple[str, str]]) -> str | None:
    """The Location header, its bytes read as UTF-8 as browsers do (headers here are decoded as latin-1)."""
    value = _header(headers, "Location")
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return value


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name.lower()), None)
