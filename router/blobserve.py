"""Serving a response that carries ``X-AppEngine-BlobKey``: the router replaces its body with the blob.

App Engine's runtime lets an app answer with an empty body and the header
``X-AppEngine-BlobKey: <key>``; the front end then sends the blob's bytes
instead (what ``BlobstoreDownloadHandler.send_blob`` relies on). The rules,
as App Engine's documentation and its development server describe them:

- Only a ``200`` answer is served; any other status with the header, a key
  that names no blob *of this app* (the router calls blobstore_svc as the app
  it routed the request to, :mod:`router.appcalls`, so another app's key is
  simply not found) or a failing blob service gives an empty ``500``, logged.
- ``Content-Type`` is the blob's when the app set none (or an empty one, or
  App Engine's ``application/vnd.google.appengine.auto``).
- A range comes from ``X-AppEngine-BlobRange`` if the app set it, else from
  the client's ``Range``: one range, ``bytes=a-b``, ``bytes=a-`` or
  ``bytes=-n``, answered ``206`` with ``Content-Range``. A range that starts
  past the end, or one that cannot be read (several ranges, other units, a
  reversed range), gets ``416`` with ``Content-Range: bytes */<size>``.
- ``ETag`` is the blob's MD5 (a strong validator: a blob never changes) and
  ``Last-Modified`` its creation, unless the app set its own; ``If-None-Match``
  (or, without it, ``If-Modified-Since``) gives ``304``, and ``If-Range``
  that does not match makes the client's ``Range`` ignored (RFC 9110).
- Both ``X-AppEngine-*`` blob headers are removed, ``Content-Length`` is the
  bytes sent, the app's other headers go through :mod:`router.responses` as
  any response's do, and the body is streamed from ``ReadBlob`` a chunk at a
  time, never held whole (so the router's ``max_response_bytes`` does not
  apply, as App Engine's 32 MB limit does not). ``HEAD`` gets the headers.

Blobs are not gzipped (their types are mostly compressed already, and a range
names bytes of the stored blob).
"""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Iterable
from typing import cast

import grpc
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln.pb.runtime.v1 import http_pb2
from router import responses
from router.appcalls import AppCredentials

log = logging.getLogger(__name__)

BLOB_KEY_HEADER = "X-AppEngine-BlobKey"
BLOB_RANGE_HEADER = "X-AppEngine-BlobRange"
AUTO_CONTENT_TYPE = "application/vnd.google.appengine.auto"  # App Engine's "use the blob's type"
_KEY_NAME = BLOB_KEY_HEADER.lower()
_BLOB_HEADERS = frozenset({_KEY_NAME, BLOB_RANGE_HEADER.lower()})
_RANGE = re.compile(r"bytes=[ \t]*([0-9]*)-([0-9]*)[ \t]*")
_ReadCall = grpc.aio.UnaryStreamCall[pb.ReadBlobRequest, pb.ReadBlobResponse]
_ERROR_CODE_KEY = "kiln-error-code"
_INDEX_ERROR = "DATA_INDEX_OUT_OF_RANGE"


class Unsatisfiable(Exception):
    """The range cannot be served (416)."""


def range_spec(value: str) -> tuple[int | None, int | None]:
    """A ``Range`` value as ``(first, last)`` (``last`` inclusive, ``None`` when open), or ``(None, n)`` for the
    last ``n`` bytes.

    Raises:
        Unsatisfiable: not one ``bytes`` range (several, other units, reversed, ``-0``, not numbers).
    """
    found = _RANGE.fullmatch(value)
    if found is None:
        raise Unsatisfiable(f"not a single byte range: {value[:100]!r}")
    first, last = found.group(1), found.group(2)
    if not first:
        if not last or int(last) == 0:
            raise Unsatisfiable(f"no bytes named: {value[:100]!r}")
        return None, int(last)
    start = int(first)
    if not last:
        return start, None
    end = int(last)
    if end < start:
        raise Unsatisfiable(f"reversed range: {value[:100]!r}")
    return start, end


def resolve(spec: tuple[int | None, int | None], size: int) -> tuple[int, int]:
    """A :func:`range_spec` within a blob of ``size`` bytes, as ``[start, end)``.

    Raises:
        Unsatisfiable: it starts at or past the end (every range of an empty blob does).
    """
    first, last = spec
    if first is None:
        assert last is not None
        start, end = max(size - last, 0), size
    else:
        start, end = first, size if last is None else min(last + 1, size)
    if start >= size:
        raise Unsatisfiable(f"starts at {start}, the blob has {size} bytes")
    return start, end


def not_modified(request: web.Request, etag: str, last_modified: float) -> bool:
    """Whether a GET or HEAD's conditions say the client's copy is current (RFC 9110 13.2.2: ``If-None-Match``
    with weak comparison, else ``If-Modified-Since``)."""
    if request.method not in ("GET", "HEAD"):
        return False
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        return _matches(if_none_match, etag, weak=True)
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        parsed = email.utils.parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored
    return int(last_modified) <= parsed.timestamp()


def range_applies(request: web.Request, etag: str, last_modified_header: str) -> bool:
    """``If-Range``: the client's ``Range`` counts only when its validator is the current one (a strong ETag match
    or the exact ``Last-Modified`` date)."""
    validator = request.headers.get("If-Range")
    if validator is None:
        return True
    if validator.startswith(('"', 'W/"')):
        return _matches(validator, etag, weak=False)
    return validator == last_modified_header


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    ours = etag.removeprefix("W/") if weak else etag
    if not weak and ours.startswith("W/"):
        return False  # a weak validator never matches strongly
    for candidate in header.split(","):
        candidate = candidate.strip()
        if weak:
            candidate = candidate.removeprefix("W/")
        if candidate == ours:
            return True
    return False


class BlobResponse(web.StreamResponse):
    """The blob's bytes, streamed as aiohttp sends the response (after the router's last header changes), one
    ``ReadBlob`` message at a time."""

    def __init__(self, *, status: int, headers: CIMultiDict[str], length: int,
                 call: _ReadCall | None,
                 first: bytes, key: str) -> None:
        super().__init__(status=status, headers=headers)
        self.content_length = length
        self.body_bytes = length if call is not None else 0  # what the request log records as sent
        self._call = call
        self._first = first
        self._key = key

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        call, self._call = self._call, None
        if call is None:
            return writer
        try:
            await self._stream(request, call)
        finally:
            call.cancel()
        return writer

    async def _stream(self, request: web.BaseRequest,
                      call: _ReadCall) -> None:
        left = self.body_bytes
        if self._first:
            left -= len(self._first)
            await self.write(self._first)
            self._first = b""
        try:
            while left > 0:
                message = await _next(call)
                if message is None:
                    break
                data = message.data
                left -= len(data)
                await self.write(data)
        except grpc.aio.AioRpcError as exc:
            log.error("blob %s: reading failed after the response started: %s", self._key, exc.details())
        if left != 0:
            # The length was promised in the headers: the client must see a broken response, not a short one.
            log.error("blob %s: %d bytes short of its length; closing the connection", self._key, left)
            if request.transport is not None:
                request.transport.close()


def sent_bytes(out: web.StreamResponse) -> int:
    """The body bytes a response made here sends (for the request log): none for ``HEAD``, 304, 416, 500."""
    return out.body_bytes if isinstance(out, BlobResponse) else 0


class BlobServer:
    """Answers responses carrying ``X-AppEngine-BlobKey`` from blobstore_svc, as the app (see module docstring)."""

    def __init__(self, stub: blobstore_pb2_grpc.BlobstoreServiceAsyncStub, credentials: AppCredentials) -> None:
        self._stub = stub  # on the router's one channel to blobstore_svc
        self._credentials = credentials

    def _service(self) -> blobstore_pb2_grpc.BlobstoreServiceAsyncStub:
        return self._stub

    async def respond(self, request: web.Request, resp: http_pb2.HttpResponse, key: str, app_id: str, *,
                      max_bytes: int) -> web.StreamResponse:
        """The response for the app's answer ``resp`` that names blob ``key``; ``resp.status`` is set to the
        status sent (for the request log). Raises :class:`responses.BadResponseHeaderError` as
        :func:`responses.build` does."""
        if resp.status != 200:
            log.error("app %s answered %d with %s: only a 200 answer can serve a blob; answering 500", app_id,
                      resp.status, BLOB_KEY_HEADER)
            return _failed(resp)
        range_value, app_type = _take_blob_headers(resp)
        resp.ClearField("body")
        resp.ClearField("body_object")
        base = responses.build(resp, request, max_bytes=max_bytes)  # the app's headers, by the usual rules
        headers = CIMultiDict(base.headers)
        client_range = range_value is None and "Range" in request.headers
        if range_value is None:
            range_value = request.headers.get("Range")
        try:
            spec = range_spec(range_value) if range_value is not None else None
        except Unsatisfiable:
            spec = None
            unreadable = True
        else:
            unreadable = False
        metadata = self._credentials.metadata(app_id)
        stub = self._service()
        start = 0 if spec is None or spec[0] is None else spec[0]
        end = 0 if spec is None or spec[0] is None or spec[1] is None else spec[1] + 1
        if spec is not None and spec[0] is None:
            info = await self._info(stub, key, metadata, app_id)  # a suffix range needs the size first
            if info is None:
                return _failed(resp)
            start = max(info.size - (spec[1] or 0), 0)
        call = stub.ReadBlob(pb.ReadBlobRequest(blob_key=key, start=start, end=end), metadata=metadata)
        try:
            first = await _first(call)
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            if _error_code(exc) == _INDEX_ERROR:  # the range starts past the end: 416 needs the size
                info = await self._info(stub, key, metadata, app_id)
                return _failed(resp) if info is None else _unsatisfiable(resp, headers, info.size)
            _log_missing(app_id, key, exc)
            return _failed(resp)
        info = first.info
        etag = headers.get("ETag") or f'"{info.md5_hash}"'
        headers.setdefault("ETag", etag)
        created = info.creation.seconds
        last_modified = headers.get("Last-Modified") or email.utils.formatdate(created, usegmt=True)
        headers.setdefault("Last-Modified", last_modified)
        if not app_type:
            headers["Content-Type"] = info.content_type
        if not_modified(request, etag, created):
            call.cancel()
            resp.status = 304
            for name in ("Content-Type", "Content-Disposition"):
                headers.popall(name, None)
            return web.Response(status=304, headers=headers)
        if client_range and not range_applies(request, etag, last_modified):
            spec, unreadable = None, False
            if start != 0 or end != 0:  # the stream started at the range: read the whole blob instead
                call.cancel()
                return await self.respond_whole(request, resp, headers, key, app_id, metadata)
        if unreadable:
            call.cancel()
            return _unsatisfiable(resp, headers, info.size)
        if spec is None:
            start, end = 0, info.size
        else:
            try:
                start, end = resolve(spec, info.size)
            except Unsatisfiable:
                call.cancel()
                return _unsatisfiable(resp, headers, info.size)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
        resp.status = 206 if spec is not None else 200
        send = request.method != "HEAD"
        if not send:
            call.cancel()
        return BlobResponse(status=resp.status, headers=headers, length=end - start, call=call if send else None,
                            first=first.data, key=key)

    async def respond_whole(self, request: web.Request, resp: http_pb2.HttpResponse, headers: CIMultiDict[str],
                            key: str, app_id: str, metadata: tuple[tuple[str, str], ...]) -> web.StreamResponse:
        """The whole blob (a client's ``Range`` whose ``If-Range`` no longer matches)."""
        call = self._service().ReadBlob(pb.ReadBlobRequest(blob_key=key), metadata=metadata)
        try:
            first = await _first(call)
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            _log_missing(app_id, key, exc)
            return _failed(resp)
        resp.status = 200
        send = request.method != "HEAD"
        if not send:
            call.cancel()
        return BlobResponse(status=200, headers=headers, length=first.info.size, call=call if send else None,
                            first=first.data, key=key)

    @staticmethod
    async def _info(stub: blobstore_pb2_grpc.BlobstoreServiceAsyncStub, key: str, metadata: tuple[tuple[str, str], ...],
                    app_id: str) -> pb.BlobInfo | None:
        try:
            found = await stub.GetBlobInfo(pb.GetBlobInfoRequest(blob_keys=[key]), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            _log_missing(app_id, key, exc)
            return None
        if not found.infos:
            log.error("app %s: no blob has the key %r that its response names; answering 500", app_id, key[:100])
            return None
        info: pb.BlobInfo = found.infos[0]
        return info


def _take_blob_headers(resp: http_pb2.HttpResponse) -> tuple[str | None, bool]:
    """Remove the blob headers (and an empty or automatic ``Content-Type``) from the app's response; the app's
    ``X-AppEngine-BlobRange`` and whether it set a ``Content-Type`` of its own."""
    range_value: str | None = None
    app_type = False
    app_headers = resp.headers
    index = 0
    while index < len(app_headers):
        header = app_headers[index]
        lowered = header.name.lower()
        if lowered in _BLOB_HEADERS:
            if lowered != _KEY_NAME:
                range_value = header.value.decode("latin-1")
            del app_headers[index]
            continue
        if lowered == "content-type":
            if header.value.strip() in (b"", b"None", AUTO_CONTENT_TYPE.encode()):
                del app_headers[index]
                continue
            app_type = True
        index += 1
    return range_value, app_type


async def _next(call: _ReadCall) -> pb.ReadBlobResponse | None:
    """The stream's next message, or ``None`` at its end."""
    message = await call.read()
    return None if message is grpc.aio.EOF else cast(pb.ReadBlobResponse, message)


async def _first(call: _ReadCall) -> pb.ReadBlobResponse:
    """ReadBlob's first message (the blob's info; the service always sends it, or fails the call)."""
    message = await _next(call)
    if message is None:
        raise RuntimeError("ReadBlob ended without the blob's info")
    return message


def _error_code(exc: grpc.aio.AioRpcError) -> str:
    trailing = exc.trailing_metadata()
    for name, value in cast(Iterable[tuple[str, str | bytes]], trailing or ()):
        if name == _ERROR_CODE_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


def _log_missing(app_id: str, key: str, exc: grpc.aio.AioRpcError) -> None:
    log.error("app %s: blob %r of its response cannot be served (%s: %s); answering 500", app_id, key[:100],
              exc.code().name, exc.details())


def _failed(resp: http_pb2.HttpResponse) -> web.Response:
    """App Engine's answer when the blob cannot be served: an empty 500 (the app's headers not sent)."""
    resp.status = 500
    return responses.empty(500)


def _unsatisfiable(resp: http_pb2.HttpResponse, headers: CIMultiDict[str], size: int) -> web.Response:
    resp.status = 416
    headers.popall("Content-Type", None)
    headers["Content-Range"] = f"bytes */{size}"
    return web.Response(status=416, headers=headers)
