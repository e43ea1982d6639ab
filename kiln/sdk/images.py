"""App Engine's ``images`` service for Google's SDK: ``Transform``, ``Composite`` and ``Histogram`` through kiln's
images service (Pillow runs there, never in the app's process).

- ``Transform``: each of the SDK's transforms — resize (``crop_to_fit``, crop offsets, ``allow_stretch``), rotate,
  horizontal and vertical flips, crop, ``im_feeling_lucky`` — becomes kiln's, in order; the output encoding (PNG,
  JPEG, WEBP) and quality; the input settings: ``correct_exif_orientation`` (App Engine's rule, applied by the
  service), ``parse_metadata`` (the source's EXIF as JSON) and ``transparent_substitution_rgb``. The response
  carries the result's width and height, which the SDK keeps for ``Image.width``/``height``.
- ``Composite``: the canvas (size, ARGB colour, output) and each layer (source, offsets, opacity, anchor).
- ``Histogram``: red, green and blue counts.
- ``GetUrlBase``/``DeleteUrlBase`` (``get_serving_url``, ``delete_serving_url``): the images service's serving URLs
  (``/_ah/img/<blob key>`` on the app's host, served by the router); the SDK appends the size and crop options
  itself. A blob that is not an image fails with ``UNSPECIFIED_ERROR`` (``TransformationError``).

The SDK checks arguments before calling, as kiln's service checks them again. Errors carry images' own codes, so
the SDK raises its exception: ``NOT_IMAGE`` → ``NotImageError``, ``BAD_IMAGE_DATA`` → ``BadImageError``,
``IMAGE_TOO_LARGE`` → ``LargeImageError``, ``BAD_TRANSFORM_DATA`` → ``BadRequestError``, ``INVALID_BLOB_KEY`` →
``InvalidBlobKeyError`` (no blob of the app has the key), ``OBJECT_NOT_FOUND`` →
``ObjectNotFoundError`` (nor Cloud Storage), ``UNSPECIFIED_ERROR`` → ``TransformationError``.
"""

from __future__ import annotations

from typing import Any, cast

import grpc
from google.appengine.api.images import images_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.api import images as kiln_images
from kiln.pb.images.v1 import images_pb2 as pb
from kiln.pb.images.v1 import images_pb2_grpc
from kiln.sdk import _errors
from kiln.sdk.service import CallContext

__all__ = ["Images"]

_ERR = gae.ImagesServiceError
_ERRORS = _errors.table({
    "BAD_TRANSFORM_DATA": _ERR.BAD_TRANSFORM_DATA, "NOT_IMAGE": _ERR.NOT_IMAGE, "BAD_IMAGE_DATA": _ERR.BAD_IMAGE_DATA,
    "IMAGE_TOO_LARGE": _ERR.IMAGE_TOO_LARGE, "INVALID_BLOB_KEY": _ERR.INVALID_BLOB_KEY,
    "ACCESS_DENIED": _ERR.ACCESS_DENIED, "OBJECT_NOT_FOUND": _ERR.OBJECT_NOT_FOUND,
    "UNSPECIFIED": _ERR.UNSPECIFIED_ERROR,
}, {grpc.StatusCode.INVALID_ARGUMENT: _ERR.BAD_TRANSFORM_DATA,
    grpc.StatusCode.RESOURCE_EXHAUSTED: _ERR.IMAGE_TOO_LARGE})
_FORMATS = {gae.OutputSettings.PNG: pb.FORMAT_PNG, gae.OutputSettings.JPEG: pb.FORMAT_JPEG,
            gae.OutputSettings.WEBP: pb.FORMAT_WEBP}
# The fields of the SDK's Transform that kiln's has under the same name and meaning (rotate: any multiple of 90).
_TRANSFORM_FIELDS = ("width", "height", "crop_to_fit", "crop_offset_x", "crop_offset_y", "allow_stretch", "rotate",
                     "horizontal_flip", "vertical_flip", "crop_left_x", "crop_top_y", "crop_right_x", "crop_bottom_y",
                     "autolevels")


class Images:
    """The ``images`` service (module docstring)."""

    name = "images"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        serve = _METHODS.get(method)
        url = _URL_METHODS.get(method)
        if serve is None and url is None:
            raise apiproxy_errors.CallNotFoundError(f"images.{method}() is not a method of App Engine's images service")
        stub = _rpc.stub("IMAGES", images_pb2_grpc.ImagesServiceStub)
        timeout = ctx.deadline if ctx.deadline is not None else kiln_images.DEFAULT_DEADLINE
        if url is not None:  # serving URLs are made on the host of the request the call belongs to
            url(stub, request, response, timeout, ctx)
        elif serve is not None:
            serve(stub, request, response, timeout)


def _get_url_base(stub: images_pb2_grpc.ImagesServiceStub, request: gae.ImagesGetUrlBaseRequest,
                  response: gae.ImagesGetUrlBaseResponse, timeout: float, ctx: CallContext) -> None:
    if request.blob_key.startswith("/gs/"):
        raise apiproxy_errors.ApplicationError(_ERR.OBJECT_NOT_FOUND,
                                               f"{request.blob_key} does not exist (kiln has no Cloud Storage)")
    reply = _rpc.call(stub.GetServingUrl, pb.GetServingUrlRequest(blob_key=request.blob_key), timeout=timeout,
                      table=_ERRORS)
    # The SDK appends =s<size> and -c to this URL itself.
    response.url = kiln_images.serving_url(ctx.environ, reply.path, request.create_secure_url)


def _delete_url_base(stub: images_pb2_grpc.ImagesServiceStub, request: gae.ImagesDeleteUrlBaseRequest,
                     response: gae.ImagesDeleteUrlBaseResponse, timeout: float, ctx: CallContext) -> None:
    _rpc.call(stub.DeleteServingUrl, pb.DeleteServingUrlRequest(blob_key=request.blob_key), timeout=timeout,
              table=_ERRORS)


def _transform(stub: images_pb2_grpc.ImagesServiceStub, request: gae.ImagesTransformRequest,
               response: gae.ImagesTransformResponse, timeout: float) -> None:
    reply = _rpc.call(stub.Transform, transform_request(request), timeout=timeout, table=_ERRORS)
    transform_response(reply, response)


def _composite(stub: images_pb2_grpc.ImagesServiceStub, request: gae.ImagesCompositeRequest,
               response: gae.ImagesCompositeResponse, timeout: float) -> None:
    reply = _rpc.call(stub.Composite, composite_request(request), timeout=timeout, table=_ERRORS)
    response.image.content = reply.image.content


def _histogram(stub: images_pb2_grpc.ImagesServiceStub, request: gae.ImagesHistogramRequest,
               response: gae.ImagesHistogramResponse, timeout: float) -> None:
    histogram = pb.HistogramRequest()
    _image(request.image, histogram.image)
    reply = _rpc.call(stub.Histogram, histogram, timeout=timeout, table=_ERRORS)
    response.histogram.red.extend(reply.red)
    response.histogram.green.extend(reply.green)
    response.histogram.blue.extend(reply.blue)


def _image(source: gae.ImageData, target: pb.ImageData) -> None:
    """The SDK's image (inline bytes or a blob key) into kiln's, in place (each copy of the bytes costs)."""
    if source.blob_key:
        target.blob_key = source.blob_key
    content = source.content
    if len(content) > kiln_images.MAX_REQUEST_SIZE:
        raise apiproxy_errors.ApplicationError(
            _ERR.IMAGE_TOO_LARGE,
            f"the image data is {len(content)} bytes; the limit is {kiln_images.MAX_REQUEST_SIZE}")
    target.content = content


def _output(source: gae.OutputSettings) -> pb.OutputSettings:
    found = _FORMATS.get(source.mime_type)
    if found is None:
        raise apiproxy_errors.ApplicationError(_ERR.BAD_TRANSFORM_DATA, f"unknown output encoding {source.mime_type}")
    out = pb.OutputSettings(format=found)
    if source.HasField("quality"):
        out.quality = source.quality
    return out


def transform(source: gae.Transform) -> pb.Transform:
    """kiln's transform for one of the SDK's: the fields the SDK set, and only those (they say which transform)."""
    out = pb.Transform()
    for name in _TRANSFORM_FIELDS:
        if source.HasField(name):
            setattr(out, name, getattr(source, name))
    return out


def transform_request(request: gae.ImagesTransformRequest) -> pb.TransformRequest:
    """kiln's Transform request for the SDK's."""
    settings = request.input
    out = pb.TransformRequest(
        output=_output(request.output), parse_metadata=settings.parse_metadata,
        correct_orientation=settings.correct_exif_orientation == gae.InputSettings.CORRECT_ORIENTATION)
    out.transforms.extend(transform(t) for t in request.transform)
    if settings.HasField("transparent_substitution_rgb"):
        out.transparent_substitution_rgb = settings.transparent_substitution_rgb & 0xFFFFFFFF  # int32 on the wire
    _image(request.image, out.image)
    return out


def transform_response(reply: pb.TransformResponse, response: gae.ImagesTransformResponse) -> None:
    """Fill the SDK's Transform response from kiln's."""
    response.image.content = reply.image.content
    response.image.width = reply.width
    response.image.height = reply.height
    if reply.source_metadata:
        response.source_metadata = reply.source_metadata


def composite_request(request: gae.ImagesCompositeRequest) -> pb.CompositeRequest:
    """kiln's Composite request for the SDK's (the SDK's anchors count from 0, kiln's from 1)."""
    canvas = request.canvas
    color = canvas.color if canvas.HasField("color") else -1  # App Engine's default: opaque white
    out = pb.CompositeRequest(width=canvas.width, height=canvas.height, color=color & 0xFFFFFFFF,
                              output=_output(canvas.output))
    for image in request.image:
        _image(image, out.images.add())
    total = sum(len(image.content) for image in out.images)
    if total > kiln_images.MAX_REQUEST_SIZE:
        raise apiproxy_errors.ApplicationError(
            _ERR.IMAGE_TOO_LARGE,
            f"the composite's images are {total} bytes together; the limit is {kiln_images.MAX_REQUEST_SIZE}")
    for option in request.options:
        out.layers.add(source_index=option.source_index, x_offset=option.x_offset, y_offset=option.y_offset,
                       opacity=option.opacity, anchor=cast(pb.Anchor.ValueType, option.anchor + 1))
    return out


_METHODS: dict[str, Any] = {"Transform": _transform, "Composite": _composite, "Histogram": _histogram}
_URL_METHODS: dict[str, Any] = {"GetUrlBase": _get_url_base, "DeleteUrlBase": _delete_url_base}
