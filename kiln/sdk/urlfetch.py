"""App Engine's ``urlfetch`` service for Google's SDK: ``Fetch`` through kiln's URL Fetch service.

The SDK's ``URLFetchRequest`` (method, URL, headers, payload, ``FollowRedirects``, ``Deadline``,
``MustValidateServerCertificate``) becomes kiln's ``FetchRequest``, made with the app's token as
:mod:`kiln.api.urlfetch` makes it; kiln's URL Fetch service applies its rules unchanged (its destination policy,
sizes, redirects, certificates). The answer fills ``URLFetchResponse``: content, status, headers (each repeated
header as its own entry), ``ContentWasTruncated``, and ``FinalUrl`` when redirects led elsewhere (as App Engine set
it; the SDK reads an empty one as ``None``).

- **Deadline**: the request's ``Deadline`` (the SDK sets it from ``fetch(deadline=…)`` or
  ``set_default_fetch_deadline``), else App Engine's default of 5 s; at most 60 s, and never past the request's own
  deadline (the proxy's ``CallContext.deadline``).
- **Truncation**: kiln's service is asked to return the first 32 MB of a larger response with
  ``ContentWasTruncated`` set; the SDK then raises ``ResponseTooLargeError`` itself unless the app passed
  ``allow_truncated=True``, as on App Engine.
- **Errors** carry urlfetch's own codes, so the SDK raises its exception: ``INVALID_URL`` → ``InvalidURLError``,
  ``FETCH_ERROR``/``CONNECTION_ERROR`` → ``DownloadError``, ``DEADLINE_EXCEEDED`` → ``DeadlineExceededError``,
  ``SSL_CERTIFICATE_ERROR``, ``DNS_ERROR``, ``CLOSED``, ``TOO_MANY_REDIRECTS``, ``MALFORMED_REPLY``,
  ``PAYLOAD_TOO_LARGE``, ``RESPONSE_TOO_LARGE``. A destination kiln's policy forbids (loopback, private networks)
  is ``FETCH_ERROR`` naming the rule: the SDK has no class of its own for it, and App Engine's service could not
  reach such addresses either.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
from google.appengine.api import urlfetch_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.api import urlfetch as kiln_urlfetch
from kiln.pb.urlfetch.v1 import urlfetch_pb2 as pb
from kiln.pb.urlfetch.v1 import urlfetch_pb2_grpc
from kiln.sdk import _errors
from kiln.sdk.service import CallContext

__all__ = ["URLFetch"]

_ERR = gae.URLFetchServiceError
_ERRORS = _errors.table({
    "INVALID_URL": _ERR.INVALID_URL, "FETCH_ERROR": _ERR.FETCH_ERROR, "DEADLINE_EXCEEDED": _ERR.DEADLINE_EXCEEDED,
    "SSL_CERTIFICATE_ERROR": _ERR.SSL_CERTIFICATE_ERROR, "DNS_ERROR": _ERR.DNS_ERROR, "CLOSED": _ERR.CLOSED,
    "TOO_MANY_REDIRECTS": _ERR.TOO_MANY_REDIRECTS, "MALFORMED_REPLY": _ERR.MALFORMED_REPLY,
    "CONNECTION_ERROR": _ERR.CONNECTION_ERROR, "PAYLOAD_TOO_LARGE": _ERR.PAYLOAD_TOO_LARGE,
    "RESPONSE_TOO_LARGE": _ERR.RESPONSE_TOO_LARGE, "FORBIDDEN_DESTINATION": _ERR.FETCH_ERROR,
}, {
    grpc.StatusCode.DEADLINE_EXCEEDED: _ERR.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE: _ERR.INTERNAL_TRANSIENT_ERROR,
    grpc.StatusCode.INVALID_ARGUMENT: _ERR.FETCH_ERROR,
})
# The SDK's RequestMethod values are kiln's Method values (GET=1 … PATCH=6).
_METHODS = frozenset(pb.Method.values()) - {pb.METHOD_UNSPECIFIED}


class URLFetch:
    """The ``urlfetch`` service (module docstring)."""

    name = "urlfetch"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        if method != "Fetch":
            raise apiproxy_errors.CallNotFoundError(f"urlfetch.{method}() is not a method of App Engine's urlfetch")
        fetch_request, deadline = translate_request(request, ctx)
        stub = _rpc.stub("URLFETCH", urlfetch_pb2_grpc.UrlFetchServiceStub)
        reply = _rpc.call(stub.Fetch, fetch_request, timeout=deadline + kiln_urlfetch._CALL_MARGIN, table=_ERRORS)
        translate_response(reply, request.Url, response)


def fetch_deadline(request: gae.URLFetchRequest, ctx: CallContext) -> float:
    """The fetch's deadline in seconds (module docstring)."""
    deadline = request.Deadline if request.HasField("Deadline") and request.Deadline > 0 else None
    out = min(kiln_urlfetch.DEFAULT_DEADLINE if deadline is None else deadline, kiln_urlfetch.MAX_DEADLINE)
    if ctx.deadline is not None:
        out = min(out, ctx.deadline)
    return out


def translate_request(request: gae.URLFetchRequest, ctx: CallContext) -> tuple[pb.FetchRequest, float]:
    """kiln's request for the SDK's, and its deadline; refuses what kiln's service would not be sent."""
    if request.Method not in _METHODS:
        raise apiproxy_errors.ApplicationError(_ERR.INVALID_URL, f"unknown method {request.Method}")
    if len(request.Payload) > kiln_urlfetch.MAX_PAYLOAD_BYTES:
        raise apiproxy_errors.ApplicationError(
            _ERR.PAYLOAD_TOO_LARGE,
            f"the payload is {len(request.Payload)} bytes; the limit is {kiln_urlfetch.MAX_PAYLOAD_BYTES}")
    deadline = fetch_deadline(request, ctx)
    out = pb.FetchRequest(method=cast(pb.Method.ValueType, request.Method), url=request.Url,
                          payload=request.Payload, follow_redirects=request.FollowRedirects,
                          deadline_seconds=deadline, validate_certificate=request.MustValidateServerCertificate,
                          allow_truncated=True)  # the SDK decides, from ContentWasTruncated (module docstring)
    for header in request.header:
        out.headers.add(name=header.Key, value=header.Value)
    return out, deadline


def translate_response(reply: pb.FetchResponse, url: str, response: gae.URLFetchResponse) -> None:
    """Fill the SDK's response from kiln's."""
    response.Content = reply.content
    response.StatusCode = reply.status_code
    response.ContentWasTruncated = reply.content_was_truncated
    for header in reply.headers:
        response.header.add(Key=header.name, Value=header.value)
    if reply.final_url and reply.final_url != url:
        response.FinalUrl = reply.final_url
