"""gRPC servicer for URL Fetch: the app's identity, validation of the request, App Engine's added headers."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import grpc

from kiln import errors
from kiln_platform import auth, grpcserver
from kiln.pb.urlfetch.v1 import urlfetch_pb2 as pb
from kiln.pb.urlfetch.v1 import urlfetch_pb2_grpc
from urlfetch_svc import fetcher
from urlfetch_svc.fetcher import FetchFailed, Fetcher
from urlfetch_svc.policy import ForbiddenDestination, InvalidUrl, Policies, parse_url

log = logging.getLogger(__name__)

_METHODS = {pb.METHOD_UNSPECIFIED: "GET", pb.METHOD_GET: "GET", pb.METHOD_POST: "POST", pb.METHOD_HEAD: "HEAD",
            pb.METHOD_PUT: "PUT", pb.METHOD_DELETE: "DELETE", pb.METHOD_PATCH: "PATCH"}
# App Engine drops these from an app's request: the service sets them, or they would let an app pose as another.
_DROPPED = {"x-kiln-inbound-signature", "content-length", "host", "vary", "via", "x-appengine-inbound-appid", "x-forwarded-for",
            "x-proxyuser-ip", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
            "trailer", "proxy-authorization"}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
MAX_URL_CHARS = 8192


class UrlFetchError(errors.KilnError):
    """A fetch that failed; ``error_code`` is App Engine's URLFetchServiceError name, sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = code


class InvalidUrlError(UrlFetchError, errors.BadRequestError):
    pass


class PayloadTooLargeError(UrlFetchError, errors.TooLargeError):
    pass


class ForbiddenError(UrlFetchError, errors.PermissionDeniedError):
    pass


class FetchDeadlineError(UrlFetchError, errors.DeadlineExceededError):
    pass


class RemoteError(UrlFetchError, errors.UnavailableError):
    pass


def user_agent(app_id: str, given: str | None) -> str:
    """App Engine's User-Agent: the app's own, then the platform's mark with the app id."""
    mark = f"AppEngine-Google; (+http://code.google.com/appengine; appid: {app_id})"
    return f"{given} {mark}" if given else mark


class UrlFetchService(urlfetch_pb2_grpc.UrlFetchServiceServicer):
    """Implements ``kiln.pb.urlfetch.v1.UrlFetchService``."""

    def __init__(self, *, policies: Policies, max_in_flight: int = 64, inbound_secret: str = "",
                 apps_domains: Sequence[str] = ()) -> None:
        self._policies = policies
        self._inbound_secret = inbound_secret
        self._apps_domains = tuple(apps_domains)
        self._fetcher = Fetcher()
        # Bounds memory: each fetch may hold up to MAX_RESPONSE_BYTES.
        self._slots = asyncio.Semaphore(max_in_flight)

    async def close(self) -> None:
        await self._fetcher.close()

    async def Fetch(self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.FetchResponse:
        app = grpcserver.caller_app()
        req = self._validate(request, app)
        async with self._slots:
            try:
                resp = await self._fetcher.fetch(req, self._policies.for_app(app))
            except InvalidUrl as exc:
                raise InvalidUrlError("INVALID_URL", f"invalid URL {request.url!r}: {exc}") from None
            except ForbiddenDestination as exc:
                raise ForbiddenError("FORBIDDEN_DESTINATION", str(exc)) from None
            except FetchFailed as exc:
                if exc.code == "DEADLINE_EXCEEDED":
                    raise FetchDeadlineError(exc.code, str(exc)) from None
                raise RemoteError(exc.code, str(exc)) from None
        out = pb.FetchResponse(status_code=resp.status, content=resp.content,
                               content_was_truncated=resp.truncated, final_url=resp.final_url)
        out.headers.extend(pb.Header(name=k, value=v) for k, v in resp.headers)
        return out

    def _validate(self, request: pb.FetchRequest, app: str) -> fetcher.Request:
        if len(request.url) > MAX_URL_CHARS:
            raise InvalidUrlError("INVALID_URL", f"the URL is longer than {MAX_URL_CHARS} characters")
        try:
            parse_url(request.url)  # fail early; the fetcher parses each hop again and checks its destination
        except InvalidUrl as exc:
            raise InvalidUrlError("INVALID_URL", f"invalid URL {request.url!r}: {exc}") from None
        method = _METHODS.get(request.method)
        if method is None:
            raise errors.BadRequestError(f"unknown method {request.method}")
        if len(request.payload) > fetcher.MAX_REQUEST_BYTES:
            raise PayloadTooLargeError("PAYLOAD_TOO_LARGE", f"the request payload is {len(request.payload)} bytes; the "
                                                     f"limit is {fetcher.MAX_REQUEST_BYTES}")
        if request.payload and method not in ("POST", "PUT", "PATCH"):
            raise errors.BadRequestError(f"a {method} request cannot carry a payload")
        deadline = request.deadline_seconds or fetcher.DEFAULT_DEADLINE
        if not 0 < deadline:
            raise errors.BadRequestError(f"deadline must be positive, got {request.deadline_seconds}")
        headers = self._headers(request, app)
        if not request.follow_redirects:
            headers += self._inbound(method, request.url, app)
        return fetcher.Request(method=method, url=request.url, headers=headers, payload=request.payload,
                               follow_redirects=request.follow_redirects,
                               deadline=min(deadline, fetcher.MAX_DEADLINE),
                               validate_certificate=request.validate_certificate,
                               allow_truncated=request.allow_truncated)

    def _inbound(self, method: str, url: str, app: str) -> list[tuple[str, str]]:
        """App Engine's X-AppEngine-Inbound-AppId for a call to another kiln app, signed for the router."""
        target = parse_url(url)
        parts = urllib.parse.urlsplit(target.url)  # normalised: the host and path the request will carry
        host = target.host
        if not self._inbound_secret or not any(host == d or host.endswith("." + d) for d in self._apps_domains):
            return []
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        signature = auth.sign_inbound(self._inbound_secret, app, method, host, path, time.time())
        return [(auth.INBOUND_APP_HEADER, app), (auth.INBOUND_SIGNATURE_HEADER, signature)]

    @staticmethod
    def _headers(request: pb.FetchRequest, app: str) -> list[tuple[str, str]]:
        if len(request.headers) > MAX_HEADERS:
            raise errors.BadRequestError(f"at most {MAX_HEADERS} headers, got {len(request.headers)}")
        if sum(len(h.name) + len(h.value) for h in request.headers) > MAX_HEADER_BYTES:
            raise errors.BadRequestError(f"headers larger than {MAX_HEADER_BYTES} bytes")
        out, agent = [], None
        for h in request.headers:
            if not _TOKEN.match(h.name):
                raise errors.BadRequestError(f"invalid header name {h.name!r}")
            if any(c in h.value for c in "\r\n\0"):
                raise errors.BadRequestError(f"header {h.name} contains a line break or NUL")
            lowered = h.name.lower()
            if lowered in _DROPPED:
                continue
            if lowered == "user-agent":
                agent = h.value
                continue
            out.append((h.name, h.value))
        out.append(("User-Agent", user_agent(app, agent)))
        return out
