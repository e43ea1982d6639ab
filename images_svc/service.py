"""gRPC servicer for the Images API: the app's identity, proto to domain values, work on the worker threads.

Validation happens here, on the event loop, before anything is queued: a malformed request costs microseconds.
Decoding and transforming run on a thread pool of ``workers`` threads, so the loop keeps answering (health
checks, other calls, cheap errors) while Pillow works, and at most ``workers`` images are decoded at once. Calls
beyond ``max_waiting`` waiting for a worker are refused as busy rather than piling up requests in memory.

An image named by a blob key is read from blobstore_svc as the calling app (:mod:`images_svc.blobs`); serving URLs
(GetServingUrl, DeleteServingUrl, ServeImage) follow :mod:`images_svc.serving`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from images_svc import imaging, ops, serving
from images_svc.blobs import Blobs, caller_metadata
from images_svc.errors import (BadImageDataError, BadTransformDataError, ImageTooLargeError, InvalidBlobKeyError,
                               NotImageError, ObjectNotFoundError, TransformationFailedError)
from kiln import errors
from kiln_platform import grpcserver
from kiln.pb.images.v1 import images_pb2 as pb
from kiln.pb.images.v1 import images_pb2_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

_OUTPUTS = {pb.FORMAT_UNSPECIFIED: "PNG", pb.FORMAT_PNG: "PNG", pb.FORMAT_JPEG: "JPEG", pb.FORMAT_WEBP: "WEBP"}
_FORMATS = {"PNG": pb.FORMAT_PNG, "JPEG": pb.FORMAT_JPEG, "WEBP": pb.FORMAT_WEBP, "GIF": pb.FORMAT_GIF,
            "BMP": pb.FORMAT_BMP, "TIFF": pb.FORMAT_TIFF, "ICO": pb.FORMAT_ICO}


class ImagesService(images_pb2_grpc.ImagesServiceServicer):
    """Implements ``kiln.pb.images.v1.ImagesService``."""

    def __init__(self, *, max_pixels: int, workers: int = 0, max_waiting: int = 64,
                 jpeg_draft: bool = True, blobs: Blobs | None = None,
                 cache_bytes: int = 64 * 1024 * 1024) -> None:
        self._max_pixels = max_pixels
        self._blobs = blobs
        self._served = serving.ResultCache(cache_bytes)
        self._jpeg_draft = jpeg_draft
        count = workers or os.cpu_count() or 1
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=count, thread_name_prefix="images")
        self._slots = asyncio.Semaphore(count)
        self._max_waiting = max_waiting
        self._waiting = 0

    async def close(self) -> None:
        """Stop the workers (in-flight calls had the server's grace period to finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._blobs is not None:
            await self._blobs.close()

    async def Transform(self, request: pb.TransformRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.TransformResponse:
        app = grpcserver.caller_app()
        steps = transforms_from_proto(request.transforms)
        substitution = (request.transparent_substitution_rgb
                        if request.HasField("transparent_substitution_rgb") else None)
        output = output_from_proto(request.output, substitution)
        data = await self._content(request.image, context)
        log.debug("transform for %s: %d bytes, %d transforms", app, len(data), len(steps))
        result = await self._run(functools.partial(
            imaging.transform, data, steps, output, correct_orientation=request.correct_orientation,
            parse_metadata=request.parse_metadata, max_pixels=self._max_pixels, draft=self._jpeg_draft))
        response = pb.TransformResponse(width=result.width, height=result.height,
                                        source_metadata=json.dumps(result.metadata))
        response.image.content = result.data   # set in place: building an ImageData apart would copy it again
        return response

    async def Composite(self, request: pb.CompositeRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.CompositeResponse:
        sources = [await self._content(image, context) for image in request.images]
        total = sum(len(s) for s in sources)
        if total > ops.MAX_REQUEST_BYTES:
            raise ImageTooLargeError(f"the composite's images are {total} bytes together; the limit is "
                                     f"{ops.MAX_REQUEST_BYTES}")
        if len(request.layers) > ops.MAX_LAYERS:
            raise BadTransformDataError(f"at most {ops.MAX_LAYERS} composite layers a call, got {len(request.layers)}")
        layers = [layer_from_proto(layer) for layer in request.layers]
        ops.check_canvas(request.width, request.height, layers, len(sources))
        output = output_from_proto(request.output, None)
        result = await self._run(functools.partial(
            imaging.composite, sources, layers, (request.width, request.height), request.color, output,
            max_pixels=self._max_pixels))
        response = pb.CompositeResponse()
        response.image.content = result.data
        return response

    async def Histogram(self, request: pb.HistogramRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.HistogramResponse:
        data = await self._content(request.image, context)
        red, green, blue = await self._run(functools.partial(imaging.histogram, data, self._max_pixels))
        return pb.HistogramResponse(red=red, green=green, blue=blue)

    async def GetInfo(self, request: pb.GetInfoRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetInfoResponse:
        data = await self._content(request.image, context)
        found = await self._run(functools.partial(imaging.info, data, self._max_pixels))
        return pb.GetInfoResponse(format=_FORMATS[found.format], width=found.width, height=found.height)

    async def GetServingUrl(self, request: pb.GetServingUrlRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetServingUrlResponse:
        key = _blob_key(request.blob_key)
        blobs, metadata = self._blobs_for(context), caller_metadata(context)
        data = await blobs.read(key, metadata)
        try:
            await self._run(functools.partial(imaging.info, data, self._max_pixels))
        except (NotImageError, BadImageDataError) as exc:
            # App Engine's get_serving_url raises TransformationError for a blob it cannot serve as an image.
            raise TransformationFailedError(f"the blob {key!r} cannot be served as an image: {exc}") from None
        await blobs.mark(key, metadata)
        return pb.GetServingUrlResponse(path=serving.SERVING_PATH + key)

    async def DeleteServingUrl(self, request: pb.DeleteServingUrlRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteServingUrlResponse:
        key = _blob_key(request.blob_key)
        await self._blobs_for(context).unmark(key, caller_metadata(context))
        return pb.DeleteServingUrlResponse()

    async def ServeImage(self, request: pb.ServeImageRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServeImageResponse:
        app = grpcserver.caller_app()
        key = request.serving_id
        if not serving.KEY_PATTERN.fullmatch(key):
            raise ObjectNotFoundError(f"no serving URL {key[:100]!r}")
        options = serving.Options(request.size if request.HasField("size") else None, request.crop)
        blobs, metadata = self._blobs_for(context), caller_metadata(context)
        info = await blobs.marked(key, metadata)  # every time: a deleted URL stops at once, cached or not
        tag = serving.etag(info.md5_hash, options)
        if request.if_none_match and serving.matches(request.if_none_match, tag):
            return pb.ServeImageResponse(etag=tag, not_modified=True)
        found = self._served.get((app, key, options))
        if found is None:
            data = await blobs.read(key, metadata, missing=ObjectNotFoundError)
            found = await self._run(functools.partial(serving.render, data, options, max_pixels=self._max_pixels,
                                                      draft=self._jpeg_draft))
            self._served.put((app, key, options), found)
        response = pb.ServeImageResponse(content_type=found.content_type, etag=tag)
        response.content = found.content
        return response

    def _blobs_for(self, context: grpc.aio.ServicerContext[Any, Any]) -> Blobs:
        if self._blobs is None:
            raise InvalidBlobKeyError("this images service has no blobstore (its blobstore_addr is not set)")
        return self._blobs

    async def _content(self, image: pb.ImageData, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """The bytes of an image: inline, or the calling app's blob read from blobstore_svc as that app."""
        if image.blob_key and not image.blob_key.startswith("/gs/") and not image.content:
            key = _blob_key(image.blob_key)
            data = await self._blobs_for(context).read(key, caller_metadata(context))
            if not data:
                raise NotImageError(f"the blob {key!r} is empty")
            return data
        return _content(image)

    async def _run(self, work: Callable[[], T]) -> T:
        """Run ``work`` on a worker thread once one is free; refuse when too many calls already wait."""
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise errors.UnavailableError(f"the images service is busy ({self._waiting} calls waiting); retry")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)
        finally:
            self._slots.release()


def _blob_key(key: str) -> str:
    """``key`` if it could name a blob (blobstore_svc's key characters).

    Raises:
        InvalidBlobKeyError: it could not.
    """
    if not serving.KEY_PATTERN.fullmatch(key):
        raise InvalidBlobKeyError(f"{key[:100]!r} is not a blob key")
    return key


def _content(image: pb.ImageData) -> bytes:
    """The bytes of an inline image (a ``/gs/`` name: kiln has no Cloud Storage)."""
    content = image.content   # read once: each read of a bytes field copies it
    if image.blob_key:
        if content:
            raise InvalidBlobKeyError("give an image's content or its blob key, not both")
        raise ObjectNotFoundError(f"{image.blob_key} does not exist (kiln has no Cloud Storage)")
    if not content:
        raise NotImageError("the image data is empty")
    if len(content) > ops.MAX_REQUEST_BYTES:
        raise ImageTooLargeError(f"the image is {len(content)} bytes; the limit is {ops.MAX_REQUEST_BYTES}")
    return content


def transforms_from_proto(transforms: Sequence[pb.Transform]) -> list[ops.Op]:
    """Each proto Transform as one operation; more than 10 are refused before any is parsed."""
    if len(transforms) > ops.MAX_TRANSFORMS:
        raise BadTransformDataError(f"at most {ops.MAX_TRANSFORMS} transforms a call, got {len(transforms)}")
    steps = [op_from_proto(t) for t in transforms]
    ops.check_transforms(steps)
    return steps


def op_from_proto(t: pb.Transform) -> ops.Op:
    """The one operation a Transform sets.

    Raises:
        BadTransformDataError: it sets none, or several, or invalid arguments.
    """
    builders: list[Callable[[], ops.Op]] = []
    if t.HasField("width") or t.HasField("height"):
        builders.append(lambda: ops.Resize(
            t.width, t.height, t.crop_to_fit, t.crop_offset_x if t.HasField("crop_offset_x") else 0.5,
            t.crop_offset_y if t.HasField("crop_offset_y") else 0.5, t.allow_stretch))
    if t.HasField("rotate"):
        builders.append(lambda: ops.Rotate(t.rotate))
    if t.horizontal_flip:
        builders.append(lambda: ops.Flip(horizontal=True))
    if t.vertical_flip:
        builders.append(lambda: ops.Flip(horizontal=False))
    if (t.HasField("crop_left_x") or t.HasField("crop_top_y") or t.HasField("crop_right_x")
            or t.HasField("crop_bottom_y")):
        builders.append(lambda: ops.Crop(
            t.crop_left_x if t.HasField("crop_left_x") else 0.0, t.crop_top_y if t.HasField("crop_top_y") else 0.0,
            t.crop_right_x if t.HasField("crop_right_x") else 1.0,
            t.crop_bottom_y if t.HasField("crop_bottom_y") else 1.0))
    if t.autolevels:
        builders.append(ops.AutoLevels)
    if len(builders) != 1:
        raise BadTransformDataError(f"each transform must set exactly one operation, this one sets {len(builders)}")
    return builders[0]()


def output_from_proto(output: pb.OutputSettings, substitution: int | None) -> ops.Output:
    """The encoding to produce; GIF, BMP, TIFF and ICO are input formats only, as on App Engine."""
    name = _OUTPUTS.get(output.format)
    if name is None:
        raise BadTransformDataError(f"{pb.Format.Name(output.format)} is not an output encoding: use PNG, JPEG "
                                    f"or WEBP")
    return ops.Output(name, output.quality if output.HasField("quality") else None, substitution)


def layer_from_proto(layer: pb.CompositeLayer) -> ops.Layer:
    """A composite layer; the proto's anchors count from 1 (0 means top left), the domain's from 0."""
    anchor = max(0, layer.anchor - 1)
    return ops.Layer(layer.source_index, layer.x_offset, layer.y_offset,
                     layer.opacity if layer.HasField("opacity") else 1.0, anchor)
