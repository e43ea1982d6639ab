"""The images service's reads of blobstore_svc, made *as the app that called*: each call forwards the
``authorization`` metadata (the app's token) of the call being served, so blobstore_svc scopes every read to that
app exactly as it does the app's own calls. The images service holds no credentials of its own toward it.

blobstore_svc's errors become the images service's: a key that names no blob of the app is App Engine's
``INVALID_BLOB_KEY`` when an image is read and ``OBJECT_NOT_FOUND`` when a serving URL is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from images_svc import ops
from images_svc.errors import ImageTooLargeError, InvalidBlobKeyError, ObjectNotFoundError
from kiln import errors
from kiln.api import _rpc
from kiln.pb.blobstore.v1 import blobstore_pb2 as bpb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import auth

TIMEOUT_SECONDS = 30.0


def caller_metadata(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str], ...]:
    """The call's ``authorization`` entry, to forward (the guard already verified it)."""
    found: Iterable[tuple[str, str | bytes]] = context.invocation_metadata() or ()
    for key, value in found:
        if key == auth.METADATA_KEY and isinstance(value, str):
            return ((key, value),)
    raise errors.UnauthenticatedError("the call carries no app token to read blobs with")


def _error(exc: grpc.aio.AioRpcError, key: str, *, missing: type[errors.KilnError]) -> BaseException:
    code = exc.code()
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
        return missing(f"no blob has the key {key[:100]!r}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.UnavailableError(f"the blobstore did not answer: {exc.details()}")
    return errors.KilnError(f"the blobstore failed: {code.name} {exc.details()}")


class Blobs:
    """blobstore_svc at ``address`` (one channel for the process)."""

    def __init__(self, address: str, *, max_message_bytes: int) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=_rpc.channel_options(max_message_bytes))
        self._stub = blobstore_pb2_grpc.BlobstoreServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def read(self, key: str, metadata: tuple[tuple[str, str], ...], *,
                   missing: type[errors.KilnError] = InvalidBlobKeyError) -> bytes:
        """The whole blob, at most ops.MAX_REQUEST_BYTES (the images service's input limit)."""
        pieces: list[bytes] = []
        try:
            call = self._stub.ReadBlob(bpb.ReadBlobRequest(blob_key=key), metadata=metadata,
                                       timeout=TIMEOUT_SECONDS)
            async for message in call:
                if message.HasField("info") and message.info.size > ops.MAX_REQUEST_BYTES:
                    call.cancel()
                    raise ImageTooLargeError(f"the blob is {message.info.size} bytes; an image may be at most "
                                             f"{ops.MAX_REQUEST_BYTES}")
                if message.data:
                    pieces.append(message.data)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, key, missing=missing) from None
        return b"".join(pieces)

    async def mark(self, key: str, metadata: tuple[tuple[str, str], ...]) -> bpb.BlobInfo:
        """Mark the blob as served by its serving URL."""
        try:
            reply = await self._stub.PutServingUrl(bpb.PutServingUrlRequest(blob_key=key), metadata=metadata,
                                                   timeout=TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, key, missing=InvalidBlobKeyError) from None
        return reply.info

    async def unmark(self, key: str, metadata: tuple[tuple[str, str], ...]) -> None:
        """Remove the blob's serving mark."""
        try:
            await self._stub.DeleteServingUrl(bpb.DeleteServingUrlRequest(blob_key=key), metadata=metadata,
                                              timeout=TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, key, missing=InvalidBlobKeyError) from None

    async def marked(self, key: str, metadata: tuple[tuple[str, str], ...]) -> bpb.BlobInfo:
        """The info of a blob with a serving URL.

        Raises:
            ObjectNotFoundError: no blob of the app has the key, or it has no serving URL.
        """
        try:
            reply = await self._stub.GetServingUrl(bpb.GetServingUrlRequest(blob_key=key), metadata=metadata,
                                                   timeout=TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, key, missing=ObjectNotFoundError) from None
        return reply.info
