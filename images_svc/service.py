"""gRPC servicer for the Images API: the app's identity, proto to domain values, work on the worker threads.

Validation happens here, on the event loop, before anything is queued: a malformed request costs microseconds.
Decoding and transforming run on a thread pool of ``workers`` threads, so the loop keeps answering (health
checks, other calls, cheap errors) while Pillow works, and at most ``workers`` images are decoded at once. Calls
beyond ``max_waiting`` waiting for a worker are refused as busy rather than piling up requests in memory.
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

from images_svc import imaging, ops
from images_svc.errors import (BadTransformDataError, ImageTooLargeError, InvalidBlobKeyError, NotImageError,
                               ObjectNotFoundError)
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
                 jpeg_draft: bool = True) -> None:
        self._max_pixels = max_pixels
        self._jpeg_draft = jpeg_draft
        count = workers or os.cpu_count() or 1
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=count, thread_name_prefix="images")
        self._slots = asyncio.Semaphore(count)
        self._max_waiting = max_waiting
        self._waiting = 0

    async def close(self) -> None:
        """Stop the workers (in-flight calls had the server's grace period to finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def Transform(self, request: pb.TransformRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> pb.TransformResponse:
        app = grpcserver.caller_app()
        data = _content(request.image)
        steps = transforms_from_proto(request.transforms)
        substitution = (request.transparent_substitution_rgb
                        if request.HasField("transparent_substitution_rgb") else None)
        output = output_from_proto(request.output, substitution)
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
        sources = [_content(image) for image in request.images]
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
        data = _content(request.image)
        red, green, blue = await self._run(functools.partial(imaging.histogram, data, self._max_pixels))
        return pb.HistogramResponse(red=red, green=green, blue=blue)

    async def GetInfo(self, request: pb.GetInfoRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> pb.GetInfoResponse:
        data = _content(request.image)
        found = await self._run(functools.partial(imaging.info, data, self._max_pixels))
        return pb.GetInfoResponse(format=_FORMATS[found.format], width=found.width, height=found.height)

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


def _content(image: pb.ImageData) -> bytes:
    """The bytes of an inline image; blob keys name nothing in kiln, which has no Blobstore or Cloud Storage."""
    content = image.content   # read once: each read of a bytes field copies it
    if image.blob_key:
        if content:
            raise InvalidBlobKeyError("give an image's content or its blob key, not both")
        if image.blob_key.startswith("/gs/"):
            raise ObjectNotFoundError(f"{image.blob_key} does not exist (kiln has no Cloud Storage)")
        raise InvalidBlobKeyError(f"no blob has the key {image.blob_key!r} (kiln has no Blobstore)")
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
