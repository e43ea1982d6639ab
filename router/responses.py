"""Post-processing of an app's response, as App Engine's front end does it.

- Hop-by-hop and front-end-owned headers are dropped (``Connection``,
  ``Content-Encoding``, ``Content-Length``, ``Date``, ``Keep-Alive``,
  ``Proxy-Authenticate``, ``Server``, ``Trailer``, ``Transfer-Encoding``,
  ``Upgrade``).
- A header HTTP cannot carry (a name that is not a token, a value with CR, LF,
  NUL or another control, non-ASCII bytes that are not UTF-8:
  :mod:`kiln_platform.httpfields`) makes the whole response a 500, with a log
  line (:class:`BadResponseHeaderError`), so an app can neither inject headers
  nor split the response, and no header is silently changed. The runtime applies
  the same rule first, so an app's own request log says why; the router checks
  again because it trusts no runtime. Values are sent as the app's bytes.
- ``Content-Type`` defaults to ``text/html``; ``Date`` and ``Server`` are set;
  ``Content-Length`` is computed.
- A response that sets a cookie loses any ``public`` directive and gets
  ``private`` added unless it already says ``private``, ``no-cache`` or
  ``no-store`` (its other directives, such as ``max-age``, stay), and an
  ``Expires`` of now unless the app's is already past, so shared caches never
  keep one user's cookie (:func:`keep_private`, App Engine's rule; the router's
  own session renewals get the same).
- An app cannot set the router's own cookies (:mod:`router.cookies`): such
  ``Set-Cookie`` headers are dropped.
- With no ``Cache-Control`` from the app, the response is privately cacheable
  and varies on ``Accept-Encoding``.
- Text-like bodies are gzipped for clients that send ``Accept-Encoding: gzip``
  and a ``User-Agent``.
- A body over the size limit becomes an empty 500.
- A response carrying ``X-AppEngine-BlobKey`` raises :class:`NamesBlobError`: its body is the blob
  (:mod:`router.blobserve`).
"""

from __future__ import annotations

import email.utils
import gzip
import time

from aiohttp import web

from kiln.pb.runtime.v1 import http_pb2
from kiln_platform import httpfields
from router import cookies

RESPONSE_DROP = frozenset({"connection", "content-encoding", "content-length", "date", "keep-alive",
                           "proxy-authenticate", "server", "trailer", "transfer-encoding", "upgrade"})
_STRICT_CACHE = frozenset({"private", "no-cache", "no-store"})  # directives as strict as private
_TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/x-javascript",
               "application/xml", "application/xhtml+xml", "application/rss+xml", "application/atom+xml",
               "image/svg+xml")
GZIP_MIN_BYTES = 64


class BadResponseHeaderError(ValueError):
    """The app's response has a header that cannot be sent; the message names it (for the log, not the client)."""


class NamesBlobError(Exception):
    """The app's response carries ``X-AppEngine-BlobKey`` (``key``): :mod:`router.blobserve` answers it."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


BLOB_KEY = "x-appengine-blobkey"
# Response headers that passed the check, as (lower-cased name, value text) by (name, value bytes): an app sends the
# same few (Content-Type, Cache-Control…) on most responses. Only headers that passed are kept, so the check itself
# is never skipped for a new header; long values (cookies, tokens) are rarely sent twice and are not kept.
_passed: dict[tuple[str, bytes], tuple[str, str]] = {}
_PASSED_KEPT = 1024
_PASSED_VALUE_BYTES = 256


def build(resp: http_pb2.HttpResponse, request: web.Request, *, max_bytes: int) -> web.Response:
    """The HTTP response for an app's answer (see module docstring), or :class:`BadResponseHeaderError`."""
    body = resp.body  # read once: each read of a bytes field makes a new object
    if len(body) > max_bytes:
        return web.Response(status=500, body=b"", headers=_front_end_headers())
    headers: list[tuple[str, str]] = []
    # One pass: each name read and lower-cased once; the last value of a name counts, as in a dict of them.
    content_type: str | None = None
    cache_control: str | None = None
    sets_cookie = False
    app_headers = resp.headers
    # By index: iterating a protobuf repeated field ends with an IndexError it formats (about 1.8 k instructions).
    for index in range(len(app_headers)):
        header = app_headers[index]
        name, raw = header.name, header.value
        key = (name, raw)
        passed = _passed.get(key)
        if passed is None:
            problem = httpfields.response_problem(name, raw)
            if problem is not None:
                raise BadResponseHeaderError(f"the app's response header cannot be sent: {problem}")
            # Checked: ASCII or UTF-8, which aiohttp writes back as exactly these bytes.
            passed = (name.lower(), raw.decode("utf-8"))
            if len(raw) <= _PASSED_VALUE_BYTES:
                if len(_passed) >= _PASSED_KEPT:
                    _passed.clear()
                _passed[key] = passed
        lowered, value = passed
        if lowered in RESPONSE_DROP:
            continue
        if lowered == "set-cookie":
            if cookies.sets_router_cookie(value):
                continue
            sets_cookie = True
        elif lowered == "content-type":
            content_type = value
        elif lowered == "cache-control":
            cache_control = value
        elif lowered == BLOB_KEY:  # what a response without it pays: this comparison for each header
            raise NamesBlobError(value)
        headers.append((name, value))
    if content_type is None:
        headers.append(("Content-Type", "text/html"))
        content_type = "text/html"
    if cache_control is None and not sets_cookie:
        headers.append(("Cache-Control", "private"))
        headers.append(("Vary", "Accept-Encoding"))
    if _wants_gzip(request, content_type, body):
        body = gzip.compress(body, compresslevel=6)
        headers.append(("Content-Encoding", "gzip"))
        if not any(n.lower() == "vary" and "accept-encoding" in v.lower() for n, v in headers):
            headers.append(("Vary", "Accept-Encoding"))
    if not sets_cookie:
        headers.append(("Server", "kiln"))
        headers.append(("Date", http_date()))
        return web.Response(status=resp.status, body=body if request.method != "HEAD" else b"", headers=headers)
    out = web.Response(status=resp.status, body=body if request.method != "HEAD" else b"", headers=headers)
    keep_private(out)
    out.headers.update(_front_end_headers())
    return out


def keep_private(out: web.StreamResponse) -> None:
    """A response that sets a cookie: no shared cache may keep it (App Engine: ``Cache-Control`` "set to private,
    if it is not already more restrictive", ``Expires`` "to the current date, if it is not already in the past").

    ``public`` is dropped and ``private`` appended unless a directive already as strict is there; the others
    (``max-age=60``...) are kept as the app wrote them, in its order, as App Engine's front end does.
    """
    directives = [d.strip() for value in out.headers.getall("Cache-Control", ()) for d in value.split(",")]
    kept = [d for d in directives if d and d.lower() != "public"]
    if not any(d.lower() in _STRICT_CACHE for d in kept):
        kept.append("private")
    out.headers["Cache-Control"] = ", ".join(kept)
    if not _already_past(out.headers.get("Expires")):
        out.headers["Expires"] = http_date()


def _already_past(expires: str | None) -> bool:
    """Whether an ``Expires`` value is a valid date before now (an unreadable one is not: it gets replaced)."""
    if expires is None:
        return False
    parsed = email.utils.parsedate_tz(expires)
    if parsed is None:
        return False
    try:
        return email.utils.mktime_tz(parsed) < time.time()
    except (OverflowError, ValueError):  # a year no clock can hold
        return False


def _wants_gzip(request: web.Request, content_type: str, body: bytes) -> bool:
    if len(body) < GZIP_MIN_BYTES or "User-Agent" not in request.headers:
        return False
    accepted = [part.split(";")[0].strip().lower() for part in request.headers.get("Accept-Encoding", "").split(",")]
    return "gzip" in accepted and content_type.lower().startswith(_TEXT_TYPES)


_date_cache: dict[int, tuple[int, str]] = {}  # offset -> (the second it was made in, the date)
_DATE_OFFSETS_KEPT = 64  # whole-second offsets come from app.yaml expirations: a few per version


def http_date(offset: float = 0) -> str:
    """An HTTP date for now (+ ``offset`` seconds); each second's is computed once per whole-second offset
    (static files' ``Expires`` asks for one on every response)."""
    now = time.time()
    if offset != int(offset):
        return email.utils.formatdate(now + offset, usegmt=True)
    whole = int(offset)
    second = int(now)
    cached = _date_cache.get(whole)
    if cached is None or cached[0] != second:
        if cached is None and len(_date_cache) >= _DATE_OFFSETS_KEPT:
            _date_cache.clear()
        # formatdate drops the fraction, so the date of now + a whole offset is that of the second + the offset.
        cached = _date_cache[whole] = (second, email.utils.formatdate(second + whole, usegmt=True))
    return cached[1]


def _front_end_headers() -> dict[str, str]:
    return {"Server": "kiln", "Date": http_date()}


def empty(status: int) -> web.Response:
    """A response of the router's own with no body and so no ``Content-Type`` (App Engine's missing static file)."""
    return web.Response(status=status, body=b"", headers=_front_end_headers())


def plain(status: int, text: str) -> web.Response:
    """A short text response generated by the router itself."""
    out = web.Response(status=status, text=f"{text}\n", content_type="text/plain")
    out.headers.update(_front_end_headers())
    return out


def usage_headers(elapsed_seconds: float, cpu_micros: int, instance_hour_usd: float) -> dict[str, str]:
    """App Engine's headers for administrators: resource usage and the estimated cost of 1,000 such requests.

    The estimate prices the request's CPU time at the configured cost of an
    instance hour, as App Engine's F1 pricing did.
    """
    cpu_ms = cpu_micros / 1000
    cpm = cpu_micros / 1e6 / 3600 * instance_hour_usd * 1000
    return {"X-AppEngine-Resource-Usage": f"ms={elapsed_seconds * 1000:.0f} cpu_ms={cpu_ms:.0f}",
            "X-AppEngine-Estimated-CPM-US-Dollars": f"${cpm:.6f}"}
