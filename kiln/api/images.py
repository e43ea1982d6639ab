"""App Engine's Images API (``google.appengine.api.images``) for kiln apps.

``Image(image_data)`` queues transforms — ``resize``, ``crop``, ``rotate``, ``horizontal_flip``,
``vertical_flip``, ``im_feeling_lucky`` — that ``execute_transforms(output_encoding=PNG, quality=None,
parse_source_metadata=False, transparent_substitution_rgb=None)`` runs in order in kiln's images service and
returns the encoded bytes; ``width``, ``height`` and ``format`` describe the image (asked of the service when
first read, and updated by each ``execute_transforms``). ``set_correct_orientation(CORRECT_ORIENTATION)`` sets
the image upright from its EXIF orientation before the transforms run, unless it is already taller than wide (App
Engine's rule: the camera has most likely turned it already); results never carry an EXIF orientation. Module
functions do one transform each (``resize``, ``crop``, ``rotate``, …, each with ``correct_orientation=``),
``composite`` draws up to 16 images on a canvas, ``histogram`` counts colour values; every call has an
``*_async`` form returning an RPC whose ``get_result()`` collects it.

The pixels are handled by the service (Pillow runs there, never in the app's process). What App Engine's SDK
checked before calling — argument types (``TypeError``) and ranges, the output encoding, more than 10
transforms (``BadRequestError``), empty data (``NotImageError``) — is checked here, before any call; the
service answers the rest: ``NotImageError``, ``BadImageError`` for corrupt or truncated data,
``LargeImageError``.

Limits: input data (all inputs of a composite together) up to 32 MB (``MAX_REQUEST_SIZE``); images up to 50
megapixels (``MAX_IMAGE_PIXELS``, the service's default ``--max-megapixels``), which refuses decompression
bombs from their header; resize targets and canvases up to 4000 pixels a side; an encoded result up to 32 MB.
An ``Image`` made from a ``blob_key`` is read by the service from the app's Blobstore (a key that names no blob of
the app raises ``InvalidBlobKeyError`` when used); one made from a ``/gs/`` ``filename`` raises
``ObjectNotFoundError`` (kiln has no Cloud Storage).

``get_serving_url(blob_key, size=None, crop=False, secure_url=None)`` returns a stable URL on the app's own host,
``http(s)://<host>/_ah/img/<blob key>``, with App Engine's options appended (``=s<size>``, ``=s<size>-c``; any
of them may be appended to the URL later); the router serves it until ``delete_serving_url(blob_key)`` or the
blob's deletion. Sizes are 0 to 1600 (``IMG_SERVING_SIZES_LIMIT``; 0: the original size); without a size the
image is served at most 512 pixels on its longest side, as on App Engine. A blob that is not an image raises
``TransformationError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, cast

from kiln import runtime as _runtime
from kiln.api import _rpc
from kiln.api.images_errors import (AccessDeniedError, BadImageError, BadRequestError, BlobKeyRequiredError, Error,
                                    InvalidBlobKeyError, LargeImageError, NotImageError, ObjectNotFoundError,
                                    TransformationError, UnsupportedSizeError)
from kiln.pb.images.v1 import images_pb2 as pb
from kiln.pb.images.v1 import images_pb2_grpc

__all__ = ["Image", "RPC", "create_rpc", "resize", "resize_async", "crop", "crop_async", "rotate", "rotate_async",
           "horizontal_flip", "horizontal_flip_async", "vertical_flip", "vertical_flip_async", "im_feeling_lucky",
           "im_feeling_lucky_async", "composite", "composite_async", "histogram", "histogram_async",
           "JPEG", "PNG", "WEBP", "BMP", "GIF", "ICO", "TIFF", "OUTPUT_ENCODING_TYPES",
           "UNCHANGED_ORIENTATION", "CORRECT_ORIENTATION", "ORIENTATION_CORRECTION_TYPE",
           "TOP_LEFT", "TOP_CENTER", "TOP_RIGHT", "CENTER_LEFT", "CENTER_CENTER", "CENTER_RIGHT", "BOTTOM_LEFT",
           "BOTTOM_CENTER", "BOTTOM_RIGHT", "ANCHOR_TYPES", "MAX_TRANSFORMS_PER_REQUEST",
           "MAX_COMPOSITES_PER_REQUEST", "MAX_RESIZE_DIMENSION", "MAX_REQUEST_SIZE", "MAX_IMAGE_PIXELS",
           "Error", "TransformationError", "BadRequestError", "NotImageError", "BadImageError", "LargeImageError",
           "InvalidBlobKeyError", "BlobKeyRequiredError", "UnsupportedSizeError", "AccessDeniedError",
           "ObjectNotFoundError", "get_serving_url", "get_serving_url_async", "delete_serving_url",
           "delete_serving_url_async", "IMG_SERVING_SIZES_LIMIT"]

# App Engine's values, so code comparing ``image.format == images.JPEG`` or storing them keeps working.
JPEG, PNG, WEBP = 0, 1, 2
BMP, GIF, ICO, TIFF = -1, -2, -3, -4
OUTPUT_ENCODING_TYPES = frozenset([JPEG, PNG, WEBP])

UNCHANGED_ORIENTATION, CORRECT_ORIENTATION = 0, 1
ORIENTATION_CORRECTION_TYPE = frozenset([UNCHANGED_ORIENTATION, CORRECT_ORIENTATION])

(TOP_LEFT, TOP_CENTER, TOP_RIGHT, CENTER_LEFT, CENTER_CENTER, CENTER_RIGHT, BOTTOM_LEFT, BOTTOM_CENTER,
 BOTTOM_RIGHT) = range(9)
ANCHOR_TYPES = frozenset(range(9))

MAX_TRANSFORMS_PER_REQUEST = 10
MAX_COMPOSITES_PER_REQUEST = 16
MAX_RESIZE_DIMENSION = 4000
MAX_REQUEST_SIZE = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
IMG_SERVING_SIZES_LIMIT = 1600
# Decoding a 50-megapixel image takes seconds on a small machine; App Engine's "typically 5 seconds" is too short.
DEFAULT_DEADLINE = 30.0

_ENCODINGS = {JPEG: pb.FORMAT_JPEG, PNG: pb.FORMAT_PNG, WEBP: pb.FORMAT_WEBP}
_FORMATS = {pb.FORMAT_JPEG: JPEG, pb.FORMAT_PNG: PNG, pb.FORMAT_WEBP: WEBP, pb.FORMAT_GIF: GIF, pb.FORMAT_BMP: BMP,
            pb.FORMAT_TIFF: TIFF, pb.FORMAT_ICO: ICO}
_ERRORS = _rpc.ErrorTable(codes={
    "BAD_TRANSFORM_DATA": BadRequestError, "NOT_IMAGE": NotImageError, "BAD_IMAGE_DATA": BadImageError,
    "IMAGE_TOO_LARGE": LargeImageError, "ACCESS_DENIED": AccessDeniedError, "OBJECT_NOT_FOUND": ObjectNotFoundError,
    "UNSPECIFIED": TransformationError,
}, unclassified=lambda details: Error(f"the images service failed: {details}"))


# --- argument checks (what App Engine's SDK checked before calling) ---------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: object, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return cast(int, value)


def _check_fraction(value: object, name: str) -> float:
    """App Engine's crop and offset arguments: exactly a float, from 0.0 to 1.0."""
    if type(value) is not float:
        raise TypeError(f"arg '{name}' must be of type 'float', got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise BadRequestError(f"arg '{name}' must be between 0.0 and 1.0 (inclusive), got {value}")
    return value


def _check_output(output_encoding: object, quality: object) -> None:
    if output_encoding not in OUTPUT_ENCODING_TYPES:
        raise BadRequestError(f"output encoding {output_encoding!r} is not one of JPEG, PNG, WEBP")
    Image.CheckValidIntParameter(quality, 1, 100, "quality")


def _check_orientation(correct_orientation: int) -> int:
    if correct_orientation not in ORIENTATION_CORRECTION_TYPE:
        raise BadRequestError(f"orientation correction must be UNCHANGED_ORIENTATION or CORRECT_ORIENTATION, got "
                              f"{correct_orientation!r}")
    return correct_orientation


def _bytes(data: object, name: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, got {type(data).__name__}")
    out = bytes(data)
    if len(out) > MAX_REQUEST_SIZE:
        raise LargeImageError(f"the image data is {len(out)} bytes; the limit is {MAX_REQUEST_SIZE}")
    return out


def _blob_key_text(blob_key: Any) -> str:
    """A BlobKey, a BlobInfo (its ``key()``) or a string, as text."""
    key = getattr(blob_key, "key", None)
    return str(key() if callable(key) else blob_key)


def _output(output_encoding: int, quality: int | None) -> pb.OutputSettings:
    settings = pb.OutputSettings(format=_ENCODINGS[output_encoding])
    if quality is not None and output_encoding in (JPEG, WEBP):
        settings.quality = quality
    return settings


# --- calls ---------------------------------------------------------------------------------------------------

RPC = _rpc.UserRPC  # App Engine's ``UserRPC`` for the images service


def create_rpc(deadline: float | None = None, callback: Callable[[], Any] | None = None) -> RPC:
    """An RPC object for the ``*_async`` functions (``deadline`` in seconds, default 30)."""
    return RPC(deadline, callback)


def _start(rpc: RPC | None, method: str, request: Any, hook: Callable[[Any], Any], blob_key: str | None = None, *,
           now: bool = False) -> RPC:
    """Send ``request`` to the service's ``method`` on ``rpc`` (a new one when ``None``)."""
    call = getattr(_rpc.stub("IMAGES", images_pb2_grpc.ImagesServiceStub), method)
    table = _ERRORS.with_codes({"INVALID_BLOB_KEY": lambda _details: InvalidBlobKeyError(blob_key)})
    return (rpc or RPC()).make_call(call, request, hook=hook, table=table, default_timeout=DEFAULT_DEADLINE, now=now)


# --- Image ---------------------------------------------------------------------------------------------------

class Image:
    """An image to inspect and transform (App Engine's ``images.Image``)."""

    def __init__(self, image_data: bytes | None = None, blob_key: Any = None, filename: str | None = None) -> None:
        """Give exactly one of ``image_data`` (bytes), ``blob_key`` or ``filename`` (``/gs/bucket/object``).

        Raises:
            NotImageError: none given, or more than one.
            TypeError: ``image_data`` is not bytes.
            LargeImageError: ``image_data`` is over 32 MB.
        """
        if not image_data and not blob_key and not filename:
            raise NotImageError("Empty image data.")
        if (image_data and (blob_key or filename)) or (blob_key and filename):
            raise NotImageError("Can only take one of image, blob key or filename.")
        if filename and not (isinstance(filename, str) and filename.startswith("/gs/")):
            raise BadRequestError(f"filename must have the form /gs/bucket_name/object_name, got {filename!r}")
        self._image_data: bytes | None = _bytes(image_data, "image_data") if image_data else None
        self._blob_key: str | None = filename or (_blob_key_text(blob_key) if blob_key else None)
        self._transforms: list[pb.Transform] = []
        self._width: int | None = None
        self._height: int | None = None
        self._format: int | None = None
        self._correct_orientation = UNCHANGED_ORIENTATION
        self._original_metadata: dict[str, Any] | None = None

    @staticmethod
    def CheckValidIntParameter(parameter: object, min_value: int, max_value: int, name: str) -> None:
        """App Engine's check: ``None``, or an integer from ``min_value`` to ``max_value``."""
        if parameter is None:
            return
        value = _check_int(parameter, name)
        if not min_value <= value <= max_value:
            raise BadRequestError(f"{name} must be between {min_value} and {max_value}, got {value}")

    # -- what the image is -------------------------------------------------------------------------------------

    @property
    def width(self) -> int:
        """Width in pixels."""
        if self._width is None:
            self._update_info()
        return cast(int, self._width)

    @property
    def height(self) -> int:
        """Height in pixels."""
        if self._height is None:
            self._update_info()
        return cast(int, self._height)

    @property
    def format(self) -> int:
        """One of JPEG, PNG, WEBP, GIF, BMP, TIFF, ICO."""
        if self._format is None:
            self._update_info()
        return cast(int, self._format)

    def _update_info(self) -> None:
        """Ask the service for the header's size and format (nothing is decoded)."""
        request = pb.GetInfoRequest()
        self._set_image(request.image)
        response = cast(pb.GetInfoResponse, _start(None, "GetInfo", request, lambda r: r, self._blob_key,
                                                         now=True).get_result())
        self._width, self._height = response.width, response.height
        self._format = _FORMATS.get(response.format)

    def _set_image(self, target: pb.ImageData) -> None:
        """Put the image into a request's field in place (building it apart and assigning would copy the bytes
        once more)."""
        if self._blob_key:
            target.blob_key = self._blob_key
        else:
            target.content = self._image_data or b""

    # -- transforms ---------------------------------------------------------------------------------------------

    def _add(self, transform: pb.Transform) -> None:
        if len(self._transforms) >= MAX_TRANSFORMS_PER_REQUEST:
            raise BadRequestError(f"{MAX_TRANSFORMS_PER_REQUEST} transforms have already been requested on this "
                                  f"image.")
        self._transforms.append(transform)

    def resize(self, width: int = 0, height: int = 0, crop_to_fit: bool = False, crop_offset_x: float = 0.5,
               crop_offset_y: float = 0.5, allow_stretch: bool = False) -> None:
        """Queue a resize keeping the aspect ratio: the more restricting of ``width`` and ``height`` wins.

        With both given, ``crop_to_fit`` scales by the less restricting one and crops the rest (``crop_offset_x``
        0 left .. 1 right, ``crop_offset_y`` 0 top .. 1 bottom); ``allow_stretch`` gives exactly that size.

        Raises:
            TypeError: width/height not integers, crop_to_fit/allow_stretch not booleans, offsets not floats.
            BadRequestError: a size below 0 or above 4000, neither given, crop_to_fit or allow_stretch without
                both, an offset outside 0..1, or 10 transforms already queued.
        """
        width, height = _check_int(width, "width"), _check_int(height, "height")
        if width < 0 or height < 0:
            raise BadRequestError("Width and height must be >= 0.")
        if not width and not height:
            raise BadRequestError("At least one of width or height must be > 0.")
        if width > MAX_RESIZE_DIMENSION or height > MAX_RESIZE_DIMENSION:
            raise BadRequestError(f"Both width and height must be <= {MAX_RESIZE_DIMENSION}.")
        for flag, name in ((crop_to_fit, "crop_to_fit"), (allow_stretch, "allow_stretch")):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be boolean.")
            if flag and not (width and height):
                raise BadRequestError(f"Both width and height must be > 0 when {name} is specified.")
        offset_x = _check_fraction(crop_offset_x, "crop_offset_x")
        offset_y = _check_fraction(crop_offset_y, "crop_offset_y")
        self._add(pb.Transform(width=width, height=height, crop_to_fit=crop_to_fit, crop_offset_x=offset_x,
                               crop_offset_y=offset_y, allow_stretch=allow_stretch))

    def crop(self, left_x: float, top_y: float, right_x: float, bottom_y: float) -> None:
        """Queue a crop to the box (left_x*width, top_y*height)-(right_x*width, bottom_y*height).

        Raises:
            TypeError: an argument is not a float.
            BadRequestError: outside 0..1, an empty box, or 10 transforms already queued.
        """
        left, top = _check_fraction(left_x, "left_x"), _check_fraction(top_y, "top_y")
        right, bottom = _check_fraction(right_x, "right_x"), _check_fraction(bottom_y, "bottom_y")
        if left >= right:
            raise BadRequestError("left_x must be less than right_x")
        if top >= bottom:
            raise BadRequestError("top_y must be less than bottom_y")
        self._add(pb.Transform(crop_left_x=left, crop_top_y=top, crop_right_x=right, crop_bottom_y=bottom))

    def rotate(self, degrees: int) -> None:
        """Queue a clockwise rotation by a multiple of 90 degrees.

        Raises:
            TypeError: ``degrees`` is not an integer.
            BadRequestError: not a multiple of 90, or 10 transforms already queued.
        """
        degrees = _check_int(degrees, "degrees")
        if degrees % 90:
            raise BadRequestError("degrees argument must be multiple of 90.")
        self._add(pb.Transform(rotate=degrees % 360))

    def horizontal_flip(self) -> None:
        """Queue a left-right mirror."""
        self._add(pb.Transform(horizontal_flip=True))

    def vertical_flip(self) -> None:
        """Queue a top-bottom mirror."""
        self._add(pb.Transform(vertical_flip=True))

    def im_feeling_lucky(self) -> None:
        """Queue an automatic levels/contrast/colour adjustment ("I'm Feeling Lucky")."""
        self._add(pb.Transform(autolevels=True))

    def set_correct_orientation(self, correct_orientation: int) -> None:
        """CORRECT_ORIENTATION: set the image upright from its EXIF orientation before the queued transforms, unless
        it is already taller than wide. Either way the result carries no EXIF orientation.

        Raises:
            BadRequestError: not UNCHANGED_ORIENTATION or CORRECT_ORIENTATION.
        """
        self._correct_orientation = _check_orientation(correct_orientation)

    def get_original_metadata(self) -> dict[str, Any] | None:
        """The source's metadata from the last ``execute_transforms``: ImageWidth and ImageLength always, EXIF
        fields by name when ``parse_source_metadata`` was set; ``None`` before any."""
        return self._original_metadata

    # -- running them -------------------------------------------------------------------------------------------

    def execute_transforms(self, output_encoding: int = PNG, quality: int | None = None,
                           parse_source_metadata: bool = False, transparent_substitution_rgb: int | None = None,
                           rpc: RPC | None = None) -> bytes:
        """Run the queued transforms in order and return the encoded result (see :meth:`execute_transforms_async`).
        """
        return cast(bytes, self._execute(output_encoding, quality, parse_source_metadata, transparent_substitution_rgb,
                                         rpc, now=True).get_result())

    def execute_transforms_async(self, output_encoding: int = PNG, quality: int | None = None,
                                 parse_source_metadata: bool = False,
                                 transparent_substitution_rgb: int | None = None, rpc: RPC | None = None) -> RPC:
        """Start running the queued transforms; ``get_result()`` returns the encoded bytes.

        ``quality`` (1..100) applies to JPEG and WEBP. ``transparent_substitution_rgb`` (0xRRGGBB) replaces
        transparent pixels in an output without alpha (JPEG).

        Raises:
            BadRequestError: an unknown encoding, a quality outside 1..100, or no transform queued.
            TypeError: ``quality`` is not an integer.
            ValueError: ``transparent_substitution_rgb`` is not an integer.
            NotImageError, BadImageError, LargeImageError, TransformationError, InvalidBlobKeyError,
            ObjectNotFoundError: from ``get_result()``, as the service found.
        """
        return self._execute(output_encoding, quality, parse_source_metadata, transparent_substitution_rgb, rpc,
                             now=False)

    def _execute(self, output_encoding: int, quality: int | None, parse_source_metadata: bool,
                 transparent_substitution_rgb: int | None, rpc: RPC | None, *, now: bool) -> RPC:
        _check_output(output_encoding, quality)
        if not self._transforms:
            raise BadRequestError("Must specify at least one transformation.")
        if transparent_substitution_rgb is not None:
            if not _is_int(transparent_substitution_rgb):
                raise ValueError("transparent_substitution_rgb must be a 32 bit integer")
            if not 0 <= transparent_substitution_rgb <= 0xFFFFFFFF:
                raise BadRequestError("transparent_substitution_rgb must be a 32 bit integer")
        request = pb.TransformRequest(transforms=self._transforms, output=_output(output_encoding, quality),
                                      correct_orientation=self._correct_orientation == CORRECT_ORIENTATION,
                                      parse_metadata=bool(parse_source_metadata))
        if transparent_substitution_rgb is not None:
            request.transparent_substitution_rgb = transparent_substitution_rgb
        self._set_image(request.image)

        def done(response: pb.TransformResponse) -> bytes:
            content = response.image.content   # read once: each read of a bytes field copies it
            self._image_data, self._blob_key, self._transforms = content, None, []
            self._width, self._height, self._format = response.width, response.height, output_encoding
            self._original_metadata = json.loads(response.source_metadata) if response.source_metadata else None
            return content
        return _start(rpc, "Transform", request, done, self._blob_key, now=now)

    def histogram(self, rpc: RPC | None = None) -> list[list[int]]:
        """Three 256-entry lists — red, green, blue — counting each value's pixels (colour weighted by alpha)."""
        return cast("list[list[int]]", self._histogram(rpc, now=True).get_result())

    def histogram_async(self, rpc: RPC | None = None) -> RPC:
        """Start a histogram; ``get_result()`` returns what :meth:`histogram` does."""
        return self._histogram(rpc, now=False)

    def _histogram(self, rpc: RPC | None, *, now: bool) -> RPC:
        def done(response: pb.HistogramResponse) -> list[list[int]]:
            return [list(response.red), list(response.green), list(response.blue)]
        request = pb.HistogramRequest()
        self._set_image(request.image)
        return _start(rpc, "Histogram", request, done, self._blob_key, now=now)


# --- one-call functions ------------------------------------------------------------------------------------
# Each synchronous function is its *_async twin collected at once, except that it waits for the call in this
# thread (see _start).

def _single(image_data: bytes, queue: Callable[[Image], None], output_encoding: int, quality: int | None,
            correct_orientation: int, rpc: RPC | None, transparent_substitution_rgb: int | None, *,
            now: bool = False) -> RPC:
    """One transform of ``image_data``; the synchronous functions pass ``now``."""
    image = Image(image_data)
    queue(image)
    image.set_correct_orientation(correct_orientation)
    return image._execute(output_encoding, quality, False, transparent_substitution_rgb, rpc, now=now)


def _resizing(width: int, height: int, crop_to_fit: bool, crop_offset_x: float, crop_offset_y: float,
              allow_stretch: bool) -> Callable[[Image], None]:
    return lambda image: image.resize(width, height, crop_to_fit, crop_offset_x, crop_offset_y, allow_stretch)


def resize_async(image_data: bytes, width: int = 0, height: int = 0, output_encoding: int = PNG,
                 quality: int | None = None, correct_orientation: int = UNCHANGED_ORIENTATION,
                 crop_to_fit: bool = False, crop_offset_x: float = 0.5, crop_offset_y: float = 0.5,
                 allow_stretch: bool = False, rpc: RPC | None = None,
                 transparent_substitution_rgb: int | None = None) -> RPC:
    """Start :func:`resize`."""
    return _single(image_data, _resizing(width, height, crop_to_fit, crop_offset_x, crop_offset_y, allow_stretch),
                   output_encoding, quality, correct_orientation, rpc, transparent_substitution_rgb)


def resize(image_data: bytes, width: int = 0, height: int = 0, output_encoding: int = PNG, quality: int | None = None,
           correct_orientation: int = UNCHANGED_ORIENTATION, crop_to_fit: bool = False, crop_offset_x: float = 0.5,
           crop_offset_y: float = 0.5, allow_stretch: bool = False, rpc: RPC | None = None,
           transparent_substitution_rgb: int | None = None) -> bytes:
    """Resize ``image_data`` (see :meth:`Image.resize`) and return the encoded result."""
    return cast(bytes, _single(image_data, _resizing(width, height, crop_to_fit, crop_offset_x, crop_offset_y,
                                                     allow_stretch),
                               output_encoding, quality, correct_orientation, rpc, transparent_substitution_rgb,
                               now=True).get_result())


def crop_async(image_data: bytes, left_x: float, top_y: float, right_x: float, bottom_y: float,
               output_encoding: int = PNG, quality: int | None = None,
               correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
               transparent_substitution_rgb: int | None = None) -> RPC:
    """Start :func:`crop`."""
    return _single(image_data, lambda image: image.crop(left_x, top_y, right_x, bottom_y), output_encoding, quality,
                   correct_orientation, rpc, transparent_substitution_rgb)


def crop(image_data: bytes, left_x: float, top_y: float, right_x: float, bottom_y: float, output_encoding: int = PNG,
         quality: int | None = None, correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
         transparent_substitution_rgb: int | None = None) -> bytes:
    """Crop ``image_data`` to a fractional box (see :meth:`Image.crop`)."""
    return cast(bytes, _single(image_data, lambda image: image.crop(left_x, top_y, right_x, bottom_y),
                               output_encoding, quality, correct_orientation, rpc, transparent_substitution_rgb,
                               now=True).get_result())


def rotate_async(image_data: bytes, degrees: int, output_encoding: int = PNG, quality: int | None = None,
                 correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
                 transparent_substitution_rgb: int | None = None) -> RPC:
    """Start :func:`rotate`."""
    return _single(image_data, lambda image: image.rotate(degrees), output_encoding, quality, correct_orientation,
                   rpc, transparent_substitution_rgb)


def rotate(image_data: bytes, degrees: int, output_encoding: int = PNG, quality: int | None = None,
           correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
           transparent_substitution_rgb: int | None = None) -> bytes:
    """Rotate ``image_data`` clockwise by a multiple of 90 degrees."""
    return cast(bytes, _single(image_data, lambda image: image.rotate(degrees), output_encoding, quality,
                               correct_orientation, rpc, transparent_substitution_rgb, now=True).get_result())


def horizontal_flip_async(image_data: bytes, output_encoding: int = PNG, quality: int | None = None,
                          correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
                          transparent_substitution_rgb: int | None = None) -> RPC:
    """Start :func:`horizontal_flip`."""
    return _single(image_data, Image.horizontal_flip, output_encoding, quality, correct_orientation, rpc,
                   transparent_substitution_rgb)


def horizontal_flip(image_data: bytes, output_encoding: int = PNG, quality: int | None = None,
                    correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
                    transparent_substitution_rgb: int | None = None) -> bytes:
    """Mirror ``image_data`` left-right."""
    return cast(bytes, _single(image_data, Image.horizontal_flip, output_encoding, quality, correct_orientation, rpc,
                               transparent_substitution_rgb, now=True).get_result())


def vertical_flip_async(image_data: bytes, output_encoding: int = PNG, quality: int | None = None,
                        correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
                        transparent_substitution_rgb: int | None = None) -> RPC:
    """Start :func:`vertical_flip`."""
    return _single(image_data, Image.vertical_flip, output_encoding, quality, correct_orientation, rpc,
                   transparent_substitution_rgb)


def vertical_flip(image_data: bytes, output_encoding: int = PNG, quality: int | None = None,
                  correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
                  transparent_substitution_rgb: int | None = None) -> bytes:
    """Mirror ``image_data`` top-bottom."""
    return cast(bytes, _single(image_data, Image.vertical_flip, output_encoding, quality, correct_orientation, rpc,
                               transparent_substitution_rgb, now=True).get_result())


def im_feeling_lucky_async(image_data: bytes, output_encoding: int = PNG, quality: int | None = None,
                           correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
                           transparent_substitution_rgb: int | None = None) -> RPC:
    """Start :func:`im_feeling_lucky`."""
    return _single(image_data, Image.im_feeling_lucky, output_encoding, quality, correct_orientation, rpc,
                   transparent_substitution_rgb)


def im_feeling_lucky(image_data: bytes, output_encoding: int = PNG, quality: int | None = None,
                     correct_orientation: int = UNCHANGED_ORIENTATION, rpc: RPC | None = None,
                     transparent_substitution_rgb: int | None = None) -> bytes:
    """Adjust levels, contrast and colour automatically."""
    return cast(bytes, _single(image_data, Image.im_feeling_lucky, output_encoding, quality, correct_orientation,
                               rpc, transparent_substitution_rgb, now=True).get_result())


def histogram_async(image_data: bytes, rpc: RPC | None = None) -> RPC:
    """Start :func:`histogram`."""
    return Image(image_data)._histogram(rpc, now=False)


def histogram(image_data: bytes, rpc: RPC | None = None) -> list[list[int]]:
    """Three 256-entry lists — red, green, blue — counting each value's pixels."""
    return cast("list[list[int]]", Image(image_data)._histogram(rpc, now=True).get_result())


CompositeInput = tuple[Any, int, int, float, int]


def composite_request(inputs: Sequence[CompositeInput], width: int, height: int, color: int = 0,
                      output_encoding: int = PNG, quality: int | None = None) -> pb.CompositeRequest:
    """Check a composite's arguments as App Engine's SDK did and build its request (each distinct image is sent
    once, however many layers use it).

    Raises:
        TypeError: width, height, color, an offset or anchor not an integer, or an opacity not a float.
        BadRequestError: no input or more than 16, a canvas side outside 1..4000, a colour outside 32 bits, an
            offset outside -4000..4000, an opacity outside 0..1, an unknown anchor or encoding, an empty image.
    """
    for value, name in ((width, "width"), (height, "height"), (color, "color")):
        _check_int(value, name)
    _check_output(output_encoding, quality)
    if not inputs:
        raise BadRequestError("Must provide at least one input")
    if len(inputs) > MAX_COMPOSITES_PER_REQUEST:
        raise BadRequestError(f"A maximum of {MAX_COMPOSITES_PER_REQUEST} composition operations can be performed "
                              f"in a single request")
    if not (0 < width <= MAX_RESIZE_DIMENSION and 0 < height <= MAX_RESIZE_DIMENSION):
        raise BadRequestError(f"Width and height must be between 1 and {MAX_RESIZE_DIMENSION}.")
    if not 0 <= color <= 0xFFFFFFFF:
        raise BadRequestError("Invalid color")
    request = pb.CompositeRequest(width=width, height=height, color=color, output=_output(output_encoding, quality))
    index: dict[Any, int] = {}
    for image, x, y, opacity, anchor in inputs:
        request.layers.append(_layer(image, x, y, opacity, anchor, index, request))
    if sum(i.ByteSize() for i in request.images) > MAX_REQUEST_SIZE:
        raise LargeImageError(f"the composite's images are over {MAX_REQUEST_SIZE} bytes together")
    return request


def _layer(image: Any, x: object, y: object, opacity: object, anchor: int, index: dict[Any, int],
           request: pb.CompositeRequest) -> pb.CompositeLayer:
    if not image:
        raise BadRequestError("Each input must include an image")
    x_offset, y_offset = _check_int(x, "x_offset"), _check_int(y, "y_offset")
    if not isinstance(opacity, float):
        raise TypeError("opacity must be a float")
    if not (-MAX_RESIZE_DIMENSION <= x_offset <= MAX_RESIZE_DIMENSION
            and -MAX_RESIZE_DIMENSION <= y_offset <= MAX_RESIZE_DIMENSION):
        raise BadRequestError(f"offsets must be in range [-{MAX_RESIZE_DIMENSION}, {MAX_RESIZE_DIMENSION}]")
    if not 0.0 <= opacity <= 1.0:
        raise BadRequestError("Opacity must be in the range 0.0 to 1.0")
    if anchor not in ANCHOR_TYPES:
        raise BadRequestError(f"Anchor type {anchor!r} not in recognized set")
    if image not in index:
        index[image] = len(request.images)
        target = request.images.add()
        if isinstance(image, Image):
            image._set_image(target)
        else:
            target.content = _bytes(image, "image_data")
    return pb.CompositeLayer(source_index=index[image], x_offset=x_offset, y_offset=y_offset, opacity=opacity,
                             anchor=cast(pb.Anchor.ValueType, anchor + 1))


def composite_async(inputs: Sequence[CompositeInput], width: int, height: int, color: int = 0,
                    output_encoding: int = PNG, quality: int | None = None, rpc: RPC | None = None) -> RPC:
    """Start :func:`composite`."""
    return _composite(inputs, width, height, color, output_encoding, quality, rpc, now=False)


def _composite(inputs: Sequence[CompositeInput], width: int, height: int, color: int, output_encoding: int,
               quality: int | None, rpc: RPC | None, *, now: bool) -> RPC:
    request = composite_request(inputs, width, height, color, output_encoding, quality)
    return _start(rpc, "Composite", request, lambda response: response.image.content, now=now)


def composite(inputs: Sequence[CompositeInput], width: int, height: int, color: int = 0, output_encoding: int = PNG,
              quality: int | None = None, rpc: RPC | None = None) -> bytes:
    """Draw images on a ``width`` x ``height`` canvas of ``color`` (0xAARRGGBB) and return the encoded result.

    ``inputs`` are ``(image_data, x_offset, y_offset, opacity, anchor)`` tuples, drawn in order: each image's
    ``anchor`` point (e.g. ``TOP_RIGHT``) meets the canvas's same point, then moves by the offsets, and is blended
    with ``opacity`` (0.0 .. 1.0).
    """
    return cast(bytes, _composite(inputs, width, height, color, output_encoding, quality, rpc,
                                          now=True).get_result())


# --- serving URLs ----------------------------------------------------------------------------------------------

def serving_url(environ: Any, path: str, secure_url: bool | None, size: int | None = None,
                crop: bool = False) -> str:
    """The URL of a serving path on the host the request came to (``HTTP_HOST``), else the app's default version's
    (``DEFAULT_VERSION_HOSTNAME``); the SDK's service (kiln.sdk.images) builds it here too."""
    host = environ.get("HTTP_HOST") or environ.get("DEFAULT_VERSION_HOSTNAME") or _rpc.setting(
        "DEFAULT_VERSION_HOSTNAME") or "localhost"
    url = f"{'https' if secure_url else 'http'}://{host}{path}"
    if size is not None:
        url += f"=s{size}"
    return url + "-c" if crop else url


def get_serving_url_async(blob_key: Any, size: int | None = None, crop: bool = False,
                          secure_url: bool | None = None, filename: str | None = None,
                          rpc: RPC | None = None) -> RPC:
    """Start :func:`get_serving_url`; the RPC's ``get_result()`` is the URL."""
    if not blob_key and not filename:
        raise BlobKeyRequiredError("A Blobkey or a filename is required for this operation.")
    if crop and not size:
        raise BadRequestError("Size should be set for crop operation")
    if size is not None and (not _is_int(size) or not 0 <= size <= IMG_SERVING_SIZES_LIMIT):
        raise UnsupportedSizeError("Unsupported size")
    if secure_url is not None and not isinstance(secure_url, bool):
        raise TypeError("secure_url must be boolean.")
    if filename and blob_key:
        raise BadRequestError("Cannot specify a blob_key and a filename.")
    if filename:
        raise ObjectNotFoundError(f"{filename} does not exist (kiln has no Cloud Storage)")
    key = _blob_key_text(blob_key)
    environ = _runtime.request_environ() or {}
    return _start(rpc, "GetServingUrl", pb.GetServingUrlRequest(blob_key=key),
                  lambda response: serving_url(environ, response.path, secure_url, size, crop), key)


def get_serving_url(blob_key: Any, size: int | None = None, crop: bool = False, secure_url: bool | None = None,
                    filename: str | None = None, rpc: RPC | None = None) -> str:
    """A URL on the app's host that serves the image blob ``blob_key`` (see the module docstring).

    Raises:
        BlobKeyRequiredError: no blob key.
        UnsupportedSizeError: ``size`` is not 0 to 1600.
        BadRequestError: ``crop`` without a size.
        InvalidBlobKeyError: no blob of the app has the key.
        TransformationError: the blob is not an image.
    """
    return cast(str, get_serving_url_async(blob_key, size, crop, secure_url, filename, rpc).get_result())


def delete_serving_url_async(blob_key: Any, rpc: RPC | None = None) -> RPC:
    """Start :func:`delete_serving_url`."""
    if not blob_key:
        raise BlobKeyRequiredError("A Blobkey is required for this operation.")
    key = _blob_key_text(blob_key)
    return _start(rpc, "DeleteServingUrl", pb.DeleteServingUrlRequest(blob_key=key), lambda _response: None, key)


def delete_serving_url(blob_key: Any, rpc: RPC | None = None) -> None:
    """Stop the serving URL of ``blob_key``: it answers 404 from now on (none: nothing to do)."""
    delete_serving_url_async(blob_key, rpc).get_result()
