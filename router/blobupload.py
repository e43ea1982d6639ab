"""Blobstore uploads: ``POST /_ah/upload/<id>…`` is taken by the router, stored, then forwarded to the app.

An app makes a one-time upload URL with ``create_upload_url(success_path, …)`` (blobstore_svc's
CreateUploadUrl). A form posted there never reaches the app as sent; as on App Engine:

1. The URL is taken once (ConsumeUploadUrl) *as the app the request's host routes to* (the router's routing,
   never the client's or the app's word: :mod:`router.appcalls`), so another app's URL is not found on this
   app's host, and of two posts racing for one URL only one gets it.
2. The ``multipart/form-data`` body is read as a stream (aiohttp's MultipartReader over the request's
   stream): each file part goes, :data:`MESSAGE_BYTES` at a time, into its own CreateBlob stream, so no file is
   ever held whole. The router's ``max_request_bytes`` does not apply; the URL's ``max_bytes_per_blob`` and
   ``max_bytes_total`` do (and blobstore_svc's own largest blob). Other fields are kept as they are (together
   at most ``max_request_bytes``: they travel to the app).
3. The request goes on to ``success_path`` through the router's normal path (handler, ``secure``, ``login``,
   the app) with each file part replaced by App Engine's blob-info part: ``Content-Type:
   message/external-body; blob-key="…"; access-type="X-AppEngine-BlobKey"`` whose body holds the headers
   dev_appserver writes (``Content-Type``, ``Content-Length``, ``Content-MD5`` as App Engine writes it — the
   URL-safe base64 of the hex digest —, ``X-AppEngine-Upload-Creation``, ``Content-Disposition``), which
   the SDK's ``BlobstoreUploadHandler.get_uploads()``/``parse_blob_info`` and ``kiln.api.blobstore.get_uploads``
   read. A file input left empty (``filename=""``) is dropped, as App Engine drops it; a form without files is
   forwarded with no uploads.

Refusals (App Engine's status codes, as dev_appserver gives them): another method than POST 405; a URL that
is unknown, of another app, used or expired 404; a file over ``max_bytes_per_blob`` or files over
``max_bytes_total`` 413; a body that is not a well-formed ``multipart/form-data`` (truncated, no boundary, a
malformed part Content-Type, a file name or content type over 500 characters) 400. Nothing is half-stored: a
blob whose stream failed is cancelled (blobstore_svc keeps nothing of it), and blobs already stored for the
request are deleted before the refusal is sent.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
import re
import secrets
from typing import Any

import aiohttp
import grpc
from aiohttp import BodyPartReader, web

from kiln import errors
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from router import paths, responses
from router.appcalls import AppCredentials

log = logging.getLogger(__name__)

PREFIX = "/_ah/upload/"
PIECE_BYTES = 256 * 1024  # read from the client at a time (at most)
# Sent to blobstore_svc a message at a time: its chunk size, so each message is stored as one chunk as it is (the
# client's pieces come as the network delivers them, 64-190 KiB here; fewer, larger messages cost less CPU).
MESSAGE_BYTES = 1024 * 1024
MAX_NAME_CHARS = 500  # App Engine's limit on an upload's file name and content type (dev_appserver's)
CALL_SECONDS = 30.0  # deadline of the unary calls (ConsumeUploadUrl, DeleteBlobs)
BLOB_KEY_ACCESS = "X-AppEngine-BlobKey"
CREATION_HEADER = "X-AppEngine-Upload-Creation"
_MIME = re.compile(r"[^/;\s]+/[^/;\s]+")
# Headers of the posted request that describe its body: the forwarded request has a body of its own.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-md5", "transfer-encoding"})
_URL_GONE = frozenset({"UPLOAD_URL_NOT_FOUND", "UPLOAD_URL_USED", "UPLOAD_URL_EXPIRED", "INVALID_BLOB_KEY"})


@dataclasses.dataclass(frozen=True)
class Forward:
    """The request to send on to the app: the success path, the header fields for the new body, the body."""

    url: paths.Target
    fields: list[tuple[str, str]]
    body: bytes


class Refused(Exception):
    """The upload is refused with ``status`` (App Engine's) and a message safe to show."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclasses.dataclass
class _Limits:
    per_blob: int  # 0: none
    total: int  # 0: none
    fields: int  # bytes of non-file fields
    stored: int = 0
    field_bytes: int = 0


class Uploads:
    """Takes uploads for the router (module docstring); one per router process, on the router's one channel to
    blobstore_svc."""

    def __init__(self, stub: blobstore_pb2_grpc.BlobstoreServiceAsyncStub, credentials: AppCredentials, *,
                 max_field_bytes: int) -> None:
        self._stub = stub
        self._credentials = credentials
        self._max_field_bytes = max_field_bytes

    async def receive(self, request: web.Request, url: paths.Target, app_id: str,
                      fields: list[tuple[str, str]]) -> web.StreamResponse | Forward:
        """Store the upload posted to ``request`` for ``app_id`` (from the router's routing): the request to
        forward, or the refusal to answer with."""
        if request.method != "POST":
            return responses.plain(405, "Uploads are POST requests.")
        upload_id = url.path[len(PREFIX):].partition("/")[0]
        boundary = "===============" + secrets.token_hex(16) + "=="
        metadata = self._credentials.metadata(app_id)
        stored: list[str] = []
        try:
            record = await self._consume(upload_id, metadata)
            limits = _Limits(record.max_bytes_per_blob, record.max_bytes_total, self._max_field_bytes)
            reader = await _reader(request)
            parts = await self._store_parts(reader, limits, metadata, stored, boundary.encode())
            target = paths.parse_target(record.success_path)
        except Refused as refused:
            await self._forget(stored, metadata)
            return responses.plain(refused.status, refused.text)
        except paths.BadPathError as exc:
            await self._forget(stored, metadata)
            return responses.plain(500, f"The upload's success path cannot be served: {exc}.")
        except BaseException:
            # The client went away (the handler is cancelled) or the blob service failed: nothing stays stored.
            await asyncio.shield(self._forget(stored, metadata))
            raise
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        kept = [(n, v) for n, v in fields if n.lower() not in _BODY_HEADERS]
        kept += [("Content-Type", f'multipart/form-data; boundary="{boundary}"'), ("Content-Length", str(len(body)))]
        return Forward(target, kept, body)

    async def _consume(self, upload_id: str, metadata: Any) -> pb.UploadUrl:
        try:
            reply = await self._stub.ConsumeUploadUrl(pb.ConsumeUploadUrlRequest(id=upload_id), metadata=metadata,
                                                      timeout=CALL_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if _error_code(exc) in _URL_GONE:
                raise Refused(404, "No such upload URL: it is unknown, used or expired.") from None
            log.error("blobstore_svc refused to take upload URL: %s %s", exc.code(), exc.details())
            raise Refused(503, "The blob service is not available.") from None
        return reply.upload_url

    async def _store_parts(self, reader: aiohttp.MultipartReader, limits: _Limits, metadata: Any,
                           stored: list[str], boundary: bytes) -> list[bytes]:
        """Each part of the form in order, files stored: the forwarded body's parts (each after ``boundary``)."""
        out: list[bytes] = []
        while True:
            try:
                part = await reader.next()
            except (ValueError, AssertionError, aiohttp.ClientPayloadError) as exc:
                raise Refused(400, f"Bad upload: the multipart body is malformed ({exc}).") from None
            if part is None:
                return out
            if not isinstance(part, BodyPartReader):
                raise Refused(400, "Bad upload: nested multipart parts are not supported.")
            name = part.name
            if name is None:
                raise Refused(400, "Bad upload: a part has no form-data name.")
            if part.filename is None:
                out.append(field_part(boundary, name, await _read_field(part, limits)))
            elif not part.filename:
                await _drain(part)  # a file input left empty: App Engine forwards nothing for it
            else:
                out.append(blob_part(boundary, name, part.filename,
                                      *await self._store_file(part, part.filename, limits, metadata, stored)))

    async def _store_file(self, part: BodyPartReader, filename: str, limits: _Limits, metadata: Any,
                          stored: list[str]) -> tuple[str, pb.BlobInfo]:
        """Stream one file part into a new blob: its content type and stored info."""
        content_type = part.headers.get(aiohttp.hdrs.CONTENT_TYPE, "application/octet-stream").strip()
        if not _MIME.match(content_type):
            raise Refused(400, f"Bad upload: incorrectly formatted MIME type {content_type[:100]!r}.")
        if len(filename) > MAX_NAME_CHARS or len(content_type) > MAX_NAME_CHARS:
            raise Refused(400, f"Bad upload: a file name or content type is over {MAX_NAME_CHARS} characters.")
        call = self._stub.CreateBlob(metadata=metadata)
        try:
            await call.write(pb.CreateBlobRequest(content_type=content_type, filename=filename,
                                                  max_bytes=limits.per_blob))
            size = 0
            held = bytearray()
            while True:
                piece = await _read_piece(part)
                if not piece:
                    break
                size += len(piece)
                limits.stored += len(piece)
                if (limits.per_blob and size > limits.per_blob) or (limits.total and limits.stored > limits.total):
                    raise Refused(413, "Request Entity Too Large: the upload is over its size limit.")
                held += piece
                if len(held) >= MESSAGE_BYTES:
                    with memoryview(held) as view:
                        message = pb.CreateBlobRequest(data=bytes(view[:MESSAGE_BYTES]))
                    del held[:MESSAGE_BYTES]
                    await call.write(message)
            if held:
                await call.write(pb.CreateBlobRequest(data=bytes(held)))
            await call.done_writing()
            reply: pb.CreateBlobResponse = await call
        except grpc.aio.AioRpcError as exc:
            if _error_code(exc) == "BLOB_TOO_LARGE":
                raise Refused(413, "Request Entity Too Large: the upload is over its size limit.") from None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise Refused(400, f"Bad upload: {exc.details()}") from None
            log.error("blobstore_svc failed to store an upload: %s %s", exc.code(), exc.details())
            raise Refused(503, "The blob service is not available.") from None
        except BaseException:
            call.cancel()  # blobstore_svc drops a blob whose stream did not finish
            raise
        stored.append(reply.info.blob_key)
        return content_type, reply.info

    async def _forget(self, keys: list[str], metadata: Any) -> None:
        if not keys:
            return
        try:
            await self._stub.DeleteBlobs(pb.DeleteBlobsRequest(blob_keys=keys), metadata=metadata,
                                         timeout=CALL_SECONDS)
        except grpc.aio.AioRpcError as exc:
            log.error("could not delete the blobs of a refused upload %s: %s %s", keys, exc.code(), exc.details())
        keys.clear()


async def _reader(request: web.Request) -> aiohttp.MultipartReader:
    content_type = request.headers.get(aiohttp.hdrs.CONTENT_TYPE, "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise Refused(400, "Bad upload: the body must be multipart/form-data.")
    try:
        return await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise Refused(400, f"Bad upload: {exc}.") from None


async def _read_piece(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(PIECE_BYTES)
    except (ValueError, AssertionError, aiohttp.ClientPayloadError) as exc:
        raise Refused(400, f"Bad upload: the multipart body is malformed ({exc}).") from None


async def _read_field(part: BodyPartReader, limits: _Limits) -> bytes:
    chunks = []
    while piece := await _read_piece(part):
        limits.field_bytes += len(piece)
        if limits.field_bytes > limits.fields:
            raise Refused(413, "Request Entity Too Large: the form's fields are over the request size limit.")
        chunks.append(piece)
    return b"".join(chunks)


async def _drain(part: BodyPartReader) -> None:
    while await _read_piece(part):
        pass


def _quote(value: str) -> str:
    """A MIME parameter value, quoted (as the email package writes it; ``"`` and ``\\`` escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _disposition(name: str, filename: str | None = None) -> str:
    out = f"form-data; name={_quote(name)}"
    return out + (f"; filename={_quote(filename)}" if filename is not None else "")


def _header_bytes(lines: list[tuple[str, str]]) -> bytes:
    # Header values are sent as UTF-8 (names of uploaded files may be any text; the SDK decodes the part as UTF-8).
    return "".join(f"{n}: {v}\r\n" for n, v in lines).encode("utf-8", "surrogateescape")


def field_part(boundary: bytes, name: str, value: bytes) -> bytes:
    """A form field of the forwarded body, as sent (after ``--boundary``)."""
    head = _header_bytes([("Content-Type", "text/plain"), ("Content-Disposition", _disposition(name))])
    return b"--" + boundary + b"\r\n" + head + b"\r\n" + value + b"\r\n"


def format_creation(info: pb.BlobInfo) -> str:
    """App Engine's ``X-AppEngine-Upload-Creation`` text of the blob's creation (UTC, with microseconds)."""
    micros = info.creation.ToMicroseconds()
    stamp = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=micros)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")


def blob_part(boundary: bytes, name: str, filename: str, content_type: str, info: pb.BlobInfo) -> bytes:
    """A stored file's blob-info part of the forwarded body (after ``--boundary``), as dev_appserver writes it."""
    outer = _header_bytes([
        ("Content-Type", f"message/external-body; blob-key={_quote(info.blob_key)}; "
                         f"access-type={_quote(BLOB_KEY_ACCESS)}"),
        ("Content-Disposition", _disposition(name, filename))])
    inner = _header_bytes([
        ("Content-Type", content_type), ("Content-Length", str(info.size)),
        ("Content-MD5", base64.urlsafe_b64encode(info.md5_hash.encode()).decode()),
        (CREATION_HEADER, format_creation(info)), ("Content-Disposition", _disposition(name, filename))])
    return b"--" + boundary + b"\r\n" + outer + b"\r\n" + inner + b"\r\n\r\n"


def _error_code(exc: grpc.aio.AioRpcError) -> str:
    return str(dict(exc.trailing_metadata() or ()).get(errors.ERROR_CODE_KEY, ""))
