"""App Engine's URL Fetch API (``google.appengine.api.urlfetch``) for kiln apps.

``fetch(url, payload=None, method=GET, headers={}, allow_truncated=False,
follow_redirects=True, deadline=None, validate_certificate=None)`` fetches a
URL through kiln's URL Fetch service; ``create_rpc``/``make_fetch_call`` run
fetches concurrently and ``rpc.get_result()`` collects them. Results have
``content``, ``status_code``, ``headers`` (case-insensitive), ``final_url``
and ``content_was_truncated``. Errors are the classes of
:mod:`kiln.api.urlfetch_errors`, re-exported here.

``validate_certificate=None`` validates certificates (App Engine left the
choice to the implementation; kiln chooses the safe one). The default
deadline is 5 seconds (``set_default_fetch_deadline`` changes it for the
current thread), at most 60.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, cast

import grpc

from kiln.api import _rpc
from kiln.api.urlfetch_errors import (ConnectionClosedError, DeadlineExceededError, DNSLookupError, DownloadError,
                                      Error, ForbiddenDestinationError, InternalTransientError, InvalidMethodError,
                                      InvalidURLError, MalformedReplyError, PayloadTooLargeError,
                                      ResponseTooLargeError, SSLCertificateError, TooManyRedirectsError)
from kiln.pb.urlfetch.v1 import urlfetch_pb2 as pb
from kiln.pb.urlfetch.v1 import urlfetch_pb2_grpc

__all__ = ["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "fetch", "create_rpc", "make_fetch_call",
           "set_default_fetch_deadline", "get_default_fetch_deadline", "Error", "DownloadError", "DNSLookupError",
           "InvalidURLError", "InvalidMethodError", "PayloadTooLargeError", "ResponseTooLargeError",
           "DeadlineExceededError", "SSLCertificateError", "TooManyRedirectsError", "ConnectionClosedError",
           "MalformedReplyError", "InternalTransientError", "ForbiddenDestinationError"]

GET, POST, HEAD, PUT, DELETE, PATCH = 1, 2, 3, 4, 5, 6
_BY_NAME = {"GET": GET, "POST": POST, "HEAD": HEAD, "PUT": PUT, "DELETE": DELETE, "PATCH": PATCH}
_WITH_PAYLOAD = {POST, PUT, PATCH}
DEFAULT_DEADLINE = 5.0
MAX_DEADLINE = 60.0
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# Extra time the gRPC call gets beyond the fetch's own deadline, so the service reports the timeout.
_CALL_MARGIN = 2.0

_ERRORS = _rpc.ErrorTable(codes={
    "INVALID_URL": InvalidURLError, "FETCH_ERROR": DownloadError, "DEADLINE_EXCEEDED": DeadlineExceededError,
    "SSL_CERTIFICATE_ERROR": SSLCertificateError, "DNS_ERROR": DNSLookupError, "CLOSED": ConnectionClosedError,
    "TOO_MANY_REDIRECTS": TooManyRedirectsError, "MALFORMED_REPLY": MalformedReplyError,
    "CONNECTION_ERROR": DownloadError, "PAYLOAD_TOO_LARGE": PayloadTooLargeError,
    "FORBIDDEN_DESTINATION": ForbiddenDestinationError,
    "RESPONSE_TOO_LARGE": lambda _details: ResponseTooLargeError(None),
}, statuses={
    grpc.StatusCode.DEADLINE_EXCEEDED:
        lambda _details: DeadlineExceededError("the URL Fetch service did not answer in time"),
    grpc.StatusCode.UNAVAILABLE:
        lambda details: InternalTransientError(f"the URL Fetch service is unavailable: {details}"),
})

_settings = threading.local()


def set_default_fetch_deadline(value: float | None) -> None:
    """The deadline of this thread's fetches that give none (App Engine's per-thread default)."""
    _settings.deadline = value


def get_default_fetch_deadline() -> float | None:
    return getattr(_settings, "deadline", None)


class CaselessDict(MutableMapping[str, str]):
    """Headers: a dict whose keys compare without case, keeping the case they were first set with."""

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._data: dict[str, tuple[str, str]] = {}
        for key, value in (items or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> str:
        return self._data[key.lower()][1]

    def __setitem__(self, key: str, value: str) -> None:
        self._data[key.lower()] = (key, value)

    def __delitem__(self, key: str) -> None:
        del self._data[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return (original for original, _ in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class _URLFetchResult:
    """What a fetch returned."""

    def __init__(self, resp: pb.FetchResponse, url: str) -> None:
        self.content: bytes = resp.content
        self.status_code: int = resp.status_code
        self.content_was_truncated: bool = resp.content_was_truncated
        self.final_url: str | None = resp.final_url if resp.final_url and resp.final_url != url else None
        self.headers = CaselessDict()
        self.header_list: list[tuple[str, str]] = [(h.name, h.value) for h in resp.headers]
        for name, value in self.header_list:
            # Repeated headers are joined as App Engine's result did (Set-Cookie keeps every value this way too).
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value

    def __repr__(self) -> str:
        return f"<_URLFetchResult status_code={self.status_code} content={len(self.content)} bytes>"


class RPC(_rpc.UserRPC):
    """An asynchronous fetch (App Engine's ``UserRPC`` for URL Fetch)."""

    _allow_truncated = False

    def get_result(self) -> _URLFetchResult:
        """The result, or the fetch's error raised (``ResponseTooLargeError`` keeps the first part)."""
        result = cast(_URLFetchResult, super().get_result())
        if result.content_was_truncated and not self._allow_truncated:
            raise ResponseTooLargeError(result)
        return result


def create_rpc(deadline: float | None = None, callback: Callable[[], Any] | None = None) -> RPC:
    """An RPC object for :func:`make_fetch_call`."""
    return RPC(deadline, callback)


def make_fetch_call(rpc: RPC, url: str, payload: bytes | str | None = None, method: int | str = GET,
                    headers: Mapping[str, str] | None = None, allow_truncated: bool = False,
                    follow_redirects: bool = True, validate_certificate: bool | None = None) -> RPC:
    """Start fetching ``url`` on ``rpc``; collect it with ``rpc.get_result()``."""
    method_id = _method(method)
    body = b""
    if method_id in _WITH_PAYLOAD and payload is not None:
        body = payload.encode() if isinstance(payload, str) else bytes(payload)
    if len(body) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeError(f"the payload is {len(body)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    if not isinstance(url, str) or not url:
        raise InvalidURLError(f"the URL must be a non-empty string, got {url!r}")
    deadline = rpc.deadline if rpc.deadline is not None else get_default_fetch_deadline()
    deadline = min(float(deadline if deadline is not None else DEFAULT_DEADLINE), MAX_DEADLINE)
    if deadline <= 0:
        raise ValueError(f"deadline must be positive, got {deadline}")
    request = pb.FetchRequest(method=cast(pb.Method.ValueType, method_id), url=url, payload=body, follow_redirects=follow_redirects,
                              deadline_seconds=deadline, allow_truncated=allow_truncated,
                              validate_certificate=True if validate_certificate is None else validate_certificate)
    for name, value in (headers or {}).items():
        request.headers.add(name=str(name), value=str(value))
    rpc._allow_truncated = allow_truncated
    rpc.make_call(_rpc.stub("URLFETCH", urlfetch_pb2_grpc.UrlFetchServiceStub).Fetch, request,
                  hook=lambda response: _URLFetchResult(response, url), table=_ERRORS,
                  timeout=deadline + _CALL_MARGIN)
    return rpc


def fetch(url: str, payload: bytes | str | None = None, method: int | str = GET,
          headers: Mapping[str, str] | None = None, allow_truncated: bool = False, follow_redirects: bool = True,
          deadline: float | None = None, validate_certificate: bool | None = None) -> _URLFetchResult:
    """Fetch ``url`` and return the result (see the module docstring)."""
    rpc = create_rpc(deadline=deadline)
    make_fetch_call(rpc, url, payload, method, headers, allow_truncated, follow_redirects, validate_certificate)
    return rpc.get_result()


Fetch = fetch  # App Engine's older name


def _method(method: int | str) -> int:
    if isinstance(method, str):
        found = _BY_NAME.get(method.upper())
        if found is None:
            raise InvalidMethodError(f"invalid method {method!r}; use GET, POST, HEAD, PUT, DELETE or PATCH")
        return found
    if method not in _BY_NAME.values():
        raise InvalidMethodError(f"invalid method {method!r}")
    return method
