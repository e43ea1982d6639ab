"""gRPC servicer of the Blobstore API: the calling app's identity, proto to domain values, App Engine's rules.

Every call acts for the app whose token it carries (:func:`kiln_platform.grpcserver.caller_app`) and reaches only
that app's rows and data. CreateBlob takes the blob as a stream, cuts it into fixed chunks (so a read finds a
byte's chunk by division) and hashes it as it goes; nothing is held whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from blobstore_svc.errors import (
    ArgumentOutOfRangeError,
    BlobFetchSizeTooLargeError,
    BlobNotFoundError,
    BlobTooLargeError,
    DataIndexOutOfRangeError,
    InvalidBlobKeyError,
    UploadUrlExpiredError,
    UploadUrlNotFoundError,
    UrlTooLongError,
)
from blobstore_svc.store import (
    CHUNK_BYTES,
    KEY_PATTERN,
    BlobRecord,
    BlobWriter,
    Store,
    UploadRecord,
    new_key,
)
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import grpcserver

log = logging.getLogger(__name__)

# App Engine's MAX_BLOB_FETCH_SIZE: the most one FetchData returns.
MAX_BLOB_FETCH_SIZE = (1 << 20) - (1 << 15)
MAX_KEYS = 1000  # keys a GetBlobInfo or DeleteBlobs call may name
MAX_PAGE = 1000
MAX_SUCCESS_PATH = 2000  # characters of an upload's success path (App Engine refuses long URLs: URL_TOO_LONG)
MAX_TEXT = 1000  # characters of a content type or file name
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def check_key(key: str) -> str:
    """``key`` if it could be a blob key.

    Raises:
        InvalidBlobKeyError: it is empty, too long or has other characters.
    """
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidBlobKeyError(f"{key[:100]!r} is not a blob key")
    return key


def check_keys(keys: Sequence[str]) -> list[str]:
    if len(keys) > MAX_KEYS:
        raise ArgumentOutOfRangeError(f"at most {MAX_KEYS} blob keys a call, got {len(keys)}")
    return [check_key(k) for k in keys]


def info_to_proto(record: BlobRecord) -> pb.BlobInfo:
    info = pb.BlobInfo(blob_key=record.key, content_type=record.content_type, filename=record.filename,
                       size=record.size, md5_hash=record.md5_hash)
    info.creation.FromMicroseconds(record.creation_us)
    return info


def upload_to_proto(record: UploadRecord) -> pb.UploadUrl:
    url = pb.UploadUrl(id=record.id, success_path=record.success_path,
                       max_bytes_per_blob=record.max_bytes_per_blob, max_bytes_total=record.max_bytes_total)
    url.expires.FromMicroseconds(record.expires_us)
    return url


def fetch_range(start: int, end: int) -> tuple[int, int]:
    """App Engine's fetch_data rule: ``start`` to ``end`` inclusive as a half-open range.

    Raises:
        DataIndexOutOfRangeError: ``start`` is negative or ``end`` is before it.
        BlobFetchSizeTooLargeError: more than MAX_BLOB_FETCH_SIZE bytes.
    """
    if start < 0:
        raise DataIndexOutOfRangeError(f"start_index must be 0 or more, got {start}")
    if end < start:
        raise DataIndexOutOfRangeError(f"end_index {end} is before start_index {start}")
    if end - start + 1 > MAX_BLOB_FETCH_SIZE:
        raise BlobFetchSizeTooLargeError(f"at most {MAX_BLOB_FETCH_SIZE} bytes a fetch, asked for {end - start + 1}")
    return start, end + 1


class BlobstoreService(blobstore_pb2_grpc.BlobstoreServiceServicer):
    """Implements ``kiln.pb.blobstore.v1.BlobstoreService``."""

    def __init__(self, store: Store, *, max_blob_bytes: int, upload_url_seconds: int) -> None:
        self._store = store
        self._max_blob_bytes = max_blob_bytes
        self._upload_url_seconds = upload_url_seconds
        self._dropping: set[asyncio.Task[None]] = set()

    async def CreateBlob(self, request_iterator: AsyncIterator[pb.CreateBlobRequest],
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.CreateBlobResponse:
        app = grpcserver.caller_app()
        stream = aiter(request_iterator)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise ArgumentOutOfRangeError("CreateBlob: the stream carried no message") from None
        if len(first.content_type) > MAX_TEXT or len(first.filename) > MAX_TEXT:
            raise ArgumentOutOfRangeError(f"content_type and filename: at most {MAX_TEXT} characters each")
        if first.max_bytes < 0:
            raise ArgumentOutOfRangeError(f"max_bytes must be 0 or more, got {first.max_bytes}")
        limit = min(first.max_bytes or self._max_blob_bytes, self._max_blob_bytes)
        key = new_key()
        beginning = asyncio.ensure_future(self._store.begin(app, key))
        try:
            writer = await asyncio.shield(beginning)
        except asyncio.CancelledError:
            # The client went away while the blob was being begun (its pending record or file may be made all the
            # same): once begun, it is dropped, so nothing stays half-stored.
            beginning.add_done_callback(self._drop_begun)
            raise
        try:
            size, md5 = await self._write(writer, first.data, stream, limit)
            record = BlobRecord(key, first.content_type or DEFAULT_CONTENT_TYPE, time.time_ns() // 1000,
                                first.filename, size, md5)
            await writer.commit(record)
        except BaseException:
            # A stream that failed or was cancelled (the client went away) leaves nothing behind.
            await asyncio.shield(writer.abort())
            raise
        log.debug("stored blob %s of %s: %d bytes", key, app, size)
        return pb.CreateBlobResponse(info=info_to_proto(record))

    def _drop_begun(self, beginning: asyncio.Future[BlobWriter]) -> None:
        if not beginning.cancelled() and beginning.exception() is None:
            task = asyncio.ensure_future(beginning.result().abort())
            self._dropping.add(task)  # held until done (the loop keeps only weak references to tasks)
            task.add_done_callback(self._dropping.discard)

    @staticmethod
    async def _write(writer: Any, data: bytes, stream: AsyncIterator[pb.CreateBlobRequest],
                     limit: int) -> tuple[int, str]:
        """Write the stream's data in CHUNK_BYTES chunks; the size and MD5 of all of it."""
        digest = hashlib.md5(usedforsecurity=False)
        # The pieces received since the last chunk, joined once a chunk's worth is held: each byte is copied once
        # on its way to the store (an upload's 256 KiB messages make a 1 MiB chunk as one join, written as is).
        pending: list[bytes] = []
        held = size = index = 0

        async def take(piece: bytes) -> None:
            nonlocal size, index, held
            size += len(piece)
            if size > limit:
                raise BlobTooLargeError(f"the blob is larger than its limit of {limit} bytes")
            digest.update(piece)
            pending.append(piece)
            held += len(piece)
            if held < CHUNK_BYTES:
                return
            joined = b"".join(pending)
            at = 0
            while held - at >= CHUNK_BYTES:
                await writer.write(index, joined if len(joined) == CHUNK_BYTES else joined[at:at + CHUNK_BYTES])
                at += CHUNK_BYTES
                index += 1
            pending[:] = [joined[at:]] if at < held else []
            held -= at
        await take(data)
        async for message in stream:
            if message.content_type or message.filename or message.max_bytes:
                raise ArgumentOutOfRangeError("CreateBlob: only the first message may carry the header fields")
            await take(message.data)
        if held or index == 0:
            await writer.write(index, b"".join(pending))
        return size, digest.hexdigest()

    async def GetBlobInfo(self, request: pb.GetBlobInfoRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetBlobInfoResponse:
        app = grpcserver.caller_app()
        keys = check_keys(request.blob_keys)
        return pb.GetBlobInfoResponse(infos=[info_to_proto(r) for r in await self._store.infos(app, keys)])

    async def QueryBlobInfo(self, request: pb.QueryBlobInfoRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.QueryBlobInfoResponse:
        app = grpcserver.caller_app()
        if not 0 <= request.limit <= MAX_PAGE:
            raise ArgumentOutOfRangeError(f"limit: 1 to {MAX_PAGE} (0: {MAX_PAGE}), got {request.limit}")
        limit = request.limit or MAX_PAGE
        records = await self._store.page(app, request.start_after, limit + 1)
        return pb.QueryBlobInfoResponse(infos=[info_to_proto(r) for r in records[:limit]], more=len(records) > limit)

    async def _record(self, app: str, key: str) -> BlobRecord:
        found = await self._store.infos(app, [check_key(key)])
        if not found:
            raise BlobNotFoundError(f"no blob has the key {key!r}")
        return found[0]

    async def FetchData(self, request: pb.FetchDataRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.FetchDataResponse:
        app = grpcserver.caller_app()
        start, end = fetch_range(request.start_index, request.end_index)
        record = await self._record(app, request.blob_key)
        end = min(end, record.size)
        if start >= end:
            return pb.FetchDataResponse()
        data = b"".join([piece async for piece in self._store.read(app, record, start, end)])
        return pb.FetchDataResponse(data=data)

    async def ReadBlob(self, request: pb.ReadBlobRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.ReadBlobResponse]:
        app = grpcserver.caller_app()
        if request.start < 0 or request.end < 0:
            raise DataIndexOutOfRangeError(f"start and end must be 0 or more, got {request.start}, {request.end}")
        record = await self._record(app, request.blob_key)
        end = record.size if request.end == 0 else min(request.end, record.size)
        if request.start > end:
            raise DataIndexOutOfRangeError(f"start {request.start} is past the blob's end ({record.size} bytes)")
        yield pb.ReadBlobResponse(info=info_to_proto(record))
        async for piece in self._store.read(app, record, request.start, end):
            yield pb.ReadBlobResponse(data=piece)

    async def DeleteBlobs(self, request: pb.DeleteBlobsRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteBlobsResponse:
        app = grpcserver.caller_app()
        await self._store.delete(app, check_keys(request.blob_keys))
        return pb.DeleteBlobsResponse()

    async def CreateUploadUrl(self, request: pb.CreateUploadUrlRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> pb.CreateUploadUrlResponse:
        app = grpcserver.caller_app()
        path = request.success_path
        if not path.startswith("/"):
            raise ArgumentOutOfRangeError(f"success_path must be a path starting with '/', got {path[:100]!r}")
        if len(path) > MAX_SUCCESS_PATH:
            raise UrlTooLongError(f"success_path is {len(path)} characters; the limit is {MAX_SUCCESS_PATH}")
        if request.max_bytes_per_blob < 0 or request.max_bytes_total < 0:
            raise ArgumentOutOfRangeError("max_bytes_per_blob and max_bytes_total must be 0 (no limit) or more")
        record = UploadRecord(secrets.token_urlsafe(32), path, request.max_bytes_per_blob, request.max_bytes_total,
                              (time.time_ns() // 1000) + self._upload_url_seconds * 1_000_000)
        await self._store.put_upload(app, record)
        return pb.CreateUploadUrlResponse(upload_url=upload_to_proto(record))

    async def ConsumeUploadUrl(self, request: pb.ConsumeUploadUrlRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.ConsumeUploadUrlResponse:
        app = grpcserver.caller_app()
        if not KEY_PATTERN.fullmatch(request.id):
            raise UploadUrlNotFoundError(f"no upload URL {request.id[:100]!r}")
        record = await self._store.take_upload(app, request.id)
        if record.expires_us < time.time_ns() // 1000:
            raise UploadUrlExpiredError(f"the upload URL {request.id!r} expired")
        return pb.ConsumeUploadUrlResponse(upload_url=upload_to_proto(record))

    async def PutServingUrl(self, request: pb.PutServingUrlRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.PutServingUrlResponse:
        app = grpcserver.caller_app()
        record = await self._record(app, request.blob_key)
        await self._store.put_serving(app, record.key)
        return pb.PutServingUrlResponse(info=info_to_proto(record))

    async def DeleteServingUrl(self, request: pb.DeleteServingUrlRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteServingUrlResponse:
        app = grpcserver.caller_app()
        await self._store.drop_serving(app, check_key(request.blob_key))
        return pb.DeleteServingUrlResponse()

    async def GetServingUrl(self, request: pb.GetServingUrlRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetServingUrlResponse:
        app = grpcserver.caller_app()
        key = check_key(request.blob_key)
        # The mark alone is not enough: a blob deleted while its URL was being made may have left one behind.
        marked, found = await asyncio.gather(self._store.serving(app, key), self._store.infos(app, [key]))
        if not marked or not found:
            raise BlobNotFoundError(f"no blob with the key {key!r} has a serving URL")
        return pb.GetServingUrlResponse(info=info_to_proto(found[0]))
