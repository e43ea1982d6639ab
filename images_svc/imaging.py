"""The Pillow side of the images service: reading untrusted bytes safely, transforming, encoding.

Every function here is synchronous and CPU-bound; the service runs them on its worker threads (Pillow releases
the GIL while it decodes, resamples and encodes). Hostile input is bounded in this order:

1. only the seven formats App Engine read are tried (``Image.open(formats=...)``), so Pillow's other plugins —
   some of which call out to external programs — never see app data;
2. the size comes from the header, and an image over the pixel limit is refused before any pixel is decoded;
   Pillow's own fence (``Image.MAX_IMAGE_PIXELS``, which fails at twice its value) is set to the same limit,
   which also stops images nested in others (an ICO decodes its embedded PNG while being opened);
3. decoding errors — truncation, corrupt data — become :class:`BadImageDataError`; bytes no reader accepts
   become :class:`NotImageError` unless they start like an image;
4. results over 32 MB or over an encoder's side limit become :class:`ImageTooLargeError`.
"""

from __future__ import annotations

import calendar
import dataclasses
import io
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from images_svc import ops
from images_svc.errors import (BadImageDataError, ImagesError, ImageTooLargeError, NotImageError,
                               TransformationFailedError)

log = logging.getLogger(__name__)

T = TypeVar("T")

INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO")
# App Engine did not document its encoder settings; 85 is a common web default for JPEG and WebP.
DEFAULT_QUALITY = 85
# JPEG sources are decoded no smaller than twice the first resize's output (as Image.thumbnail does): libjpeg
# skips the inverse DCT of detail the resize would discard, and the result differs from a full decode's by under
# one level on average (measured on bench/images_bench.py's photo: 2-megapixel to 200 px, 40% less time).
DRAFT_GAP = 2.0
_RESAMPLE = Image.Resampling.LANCZOS
_TRANSPOSE = {
    90: Image.Transpose.ROTATE_270,    # Pillow turns counter-clockwise; App Engine clockwise
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
_EXIF_IFD = 0x8769
_MAX_METADATA_VALUE = 256


def configure(max_pixels: int) -> None:
    """Process-wide Pillow settings for untrusted input; called once when the service starts.

    Pillow raises DecompressionBombError above twice ``MAX_IMAGE_PIXELS`` and only warns above it, so half the
    limit makes Pillow fail exactly where the service's limit is; the warning below that is dropped, since
    :func:`open_image` refuses those images itself.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels // 2
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    Image.init()


@dataclasses.dataclass(frozen=True)
class Info:
    """What the header says."""

    format: str
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class Result:
    """An encoded result and its size."""

    data: bytes
    width: int
    height: int
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def open_image(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Read only the header of ``data`` and check its size.

    Raises:
        NotImageError: empty, or no reader accepts it and it does not start like an image.
        BadImageDataError: it starts like an image but the header is broken.
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    if not data:
        raise NotImageError("the image data is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image is too large to process: {exc}") from None
    except UnidentifiedImageError:
        claimed = ops.sniff(data)
        if claimed:
            raise BadImageDataError(f"the data starts like a {claimed} image but is corrupt") from None
        raise NotImageError("the data is not an image in a supported format (JPEG, PNG, WEBP, GIF, BMP, "
                            "TIFF, ICO)") from None
    except Exception as exc:  # noqa: BLE001 - a broken header can fail any way inside a plugin
        raise BadImageDataError(f"the {ops.sniff(data) or 'image'} header is corrupt: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImageDataError(f"the image header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"the image is {width}x{height} ({width * height} pixels); the limit is "
                                 f"{max_pixels} pixels")
    return img


def info(data: bytes, max_pixels: int) -> Info:
    """Format and size from the header alone (App Engine's width/height/format did not decode either)."""
    img = open_image(data, max_pixels)
    return Info(format=str(img.format), width=img.size[0], height=img.size[1])


def decode(img: ImageFile.ImageFile, draft: ops.Size | None = None) -> Image.Image:
    """Decode the first frame into a mode the transforms handle (RGB, RGBA, L or LA).

    Raises:
        BadImageDataError: the pixel data is truncated or corrupt.
        ImageTooLargeError: memory ran out.
    """
    if draft is not None and img.format == "JPEG":
        img.draft("RGB" if img.mode == "RGB" else None, draft)
    try:
        img.load()
        return _normalise(img)
    except (MemoryError, Image.DecompressionBombError) as exc:
        raise ImageTooLargeError(f"the image is too large to decode: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data fails in many ways inside decoders
        raise BadImageDataError(f"the image data is corrupt or truncated: {exc}") from None


def _normalise(img: Image.Image) -> Image.Image:
    """Bring palette, bilevel, CMYK and high-bit-depth images to 8-bit L, LA, RGB or RGBA."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return img
    if mode in ("P", "PA"):
        return img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I") or mode == "F":
        return img.convert("I").point(lambda v: v / 256).convert("L")
    return img.convert("RGBA" if mode in ("RGBa", "La") else "RGB")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1 when absent or unreadable)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not fail the transform
        return 1
    return value if isinstance(value, int) else 1


def metadata(img: Image.Image, parse: bool) -> dict[str, Any]:
    """App Engine's source metadata: always ImageWidth/ImageLength; with ``parse``, the EXIF fields by name."""
    found: dict[str, Any] = {}
    if parse:
        try:
            exif = img.getexif()
            tags = {**dict(exif), **dict(exif.get_ifd(_EXIF_IFD))}
        except Exception:  # noqa: BLE001 - unreadable EXIF is reported as none
            tags = {}
        for tag, value in tags.items():
            name = ExifTags.TAGS.get(tag)
            plain = _json_value(value)
            if name and plain is not None:
                found[name] = plain
        if isinstance(found.get("DateTimeOriginal"), str):
            stamp = _exif_time(found["DateTimeOriginal"])
            if stamp is None:
                del found["DateTimeOriginal"]
            else:
                found["DateTimeOriginal"] = stamp
    found["ImageWidth"], found["ImageLength"] = img.size
    return found


def _json_value(value: Any) -> Any:
    """A JSON-safe copy of an EXIF value (rationals as floats, tuples as lists); ``None`` drops it."""
    if isinstance(value, bytes):
        return None
    if isinstance(value, str):
        return value.rstrip("\x00")[:_MAX_METADATA_VALUE]
    if isinstance(value, (tuple, list)):
        items = [_json_value(v) for v in value[:_MAX_METADATA_VALUE]]
        return None if any(v is None for v in items) else items
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if number == number else None  # NaN (a 0/0 rational) is not JSON


def _exif_time(text: str) -> int | None:
    """EXIF's "YYYY:MM:DD HH:MM:SS" as seconds since the epoch (App Engine returned DateTimeOriginal so)."""
    try:
        return calendar.timegm(time.strptime(text.strip()[:19], "%Y:%m:%d %H:%M:%S"))
    except ValueError:
        return None


def apply(img: Image.Image, steps: Sequence[ops.Op]) -> Image.Image:
    """Run the transforms in order."""
    for step in steps:
        img = _apply_one(img, step)
    return img


def _apply_one(img: Image.Image, step: ops.Op) -> Image.Image:
    if isinstance(step, ops.Resize):
        plan = ops.plan_resize(img.size, step)
        return img.resize(plan.size, _RESAMPLE, box=plan.box)
    if isinstance(step, ops.Rotate):
        return img.transpose(_TRANSPOSE[step.degrees]) if step.degrees else img
    if isinstance(step, ops.Flip):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT if step.horizontal else Image.Transpose.FLIP_TOP_BOTTOM)
    if isinstance(step, ops.Crop):
        return img.crop(ops.crop_box(img.size, step))
    return _autolevels(img)


def _autolevels(img: Image.Image) -> Image.Image:
    """Stretch each colour channel so its darkest and brightest 0.5% reach 0 and 255: levels, contrast and a
    colour balance in one, like Picasa's button App Engine named it after. Alpha is kept as it was."""
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    base = img.convert("RGB" if img.mode in ("RGB", "RGBA") else "L")
    out = ImageOps.autocontrast(base, cutoff=0.5)
    if alpha is not None:
        out.putalpha(alpha)
    return out


def encode(img: Image.Image, output: ops.Output) -> bytes:
    """Encode as PNG, JPEG or WEBP.

    JPEG has no alpha: transparent pixels become ``substitution_rgb`` when given, else the alpha is dropped (as
    App Engine's SDK did).

    Raises:
        ImageTooLargeError: the image is wider or taller than the encoder allows, or the result is over 32 MB.
    """
    limit = ops.ENCODER_MAX_SIDE.get(output.format)
    if limit is not None and max(img.size) > limit:
        raise ImageTooLargeError(f"{output.format} output is limited to {limit} pixels a side; the image is "
                                 f"{img.size[0]}x{img.size[1]}")
    options: dict[str, Any] = {}
    if output.format == "JPEG":
        img = _flatten(img, output.substitution_rgb)
        options["quality"] = output.quality or DEFAULT_QUALITY
    elif output.format == "WEBP":
        options["quality"] = output.quality or DEFAULT_QUALITY
    buf = io.BytesIO()
    img.save(buf, output.format, **options)
    if buf.tell() > ops.MAX_RESULT_BYTES:
        raise ImageTooLargeError(f"the encoded result is {buf.tell()} bytes; the limit is {ops.MAX_RESULT_BYTES}")
    return buf.getvalue()


def _flatten(img: Image.Image, substitution_rgb: int | None) -> Image.Image:
    if img.mode not in ("RGBA", "LA"):
        return img
    if substitution_rgb is None:
        return img.convert("RGB" if img.mode == "RGBA" else "L")
    rgb = ((substitution_rgb >> 16) & 0xFF, (substitution_rgb >> 8) & 0xFF, substitution_rgb & 0xFF)
    background = Image.new("RGB", img.size, rgb)
    background.paste(img.convert("RGBA"), mask=img.getchannel("A"))
    return background


def transform(data: bytes, steps: Sequence[ops.Op], output: ops.Output, *, correct_orientation: bool,
              parse_metadata: bool, max_pixels: int, draft: bool = True) -> Result:
    """Decode (a JPEG at a reduced scale when ``draft`` and the first resize allows), (optionally) set upright by
    EXIF, run the transforms, encode."""
    img = open_image(data, max_pixels)
    # A JPEG's EXIF is in its header, and must be read before a draft decode changes the size; other formats may
    # keep theirs after the pixels, and reading it first would decode them outside decode()'s error handling.
    early = img.format == "JPEG"
    if early:
        upright, source_metadata = _source_facts(img, correct_orientation, parse_metadata)
    pixels = decode(img, ops.draft_request(img.size, [*upright, *steps], DRAFT_GAP) if draft and early else None)
    if not early:
        upright, source_metadata = _source_facts(img, correct_orientation, parse_metadata)
    return _guarded(lambda: _finish(apply(pixels, [*upright, *steps]), output, source_metadata))


def _source_facts(img: Image.Image, correct_orientation: bool,
                  parse_metadata: bool) -> tuple[list[ops.Op], dict[str, Any]]:
    """The transforms that set the source upright (when asked) and its metadata."""
    upright = ops.orientation_ops(exif_orientation(img), img.size) if correct_orientation else []
    return upright, metadata(img, parse_metadata)


def _finish(img: Image.Image, output: ops.Output, source_metadata: dict[str, Any]) -> Result:
    return Result(encode(img, output), img.size[0], img.size[1], source_metadata)


def histogram(data: bytes, max_pixels: int) -> tuple[list[int], list[int], list[int]]:
    """256 counts per channel, R, G, B; as App Engine did, colour is weighted by alpha (premultiplied)."""
    img = decode(open_image(data, max_pixels))

    def count() -> list[int]:
        if img.mode in ("RGBA", "LA"):
            return img.convert("RGBA").convert("RGBa").histogram()[:768]
        return img.convert("RGB").histogram()
    counts = _guarded(count)
    return counts[:256], counts[256:512], counts[512:768]


def composite(sources: Sequence[bytes], layers: Sequence[ops.Layer], canvas: ops.Size, color: int,
              output: ops.Output, *, max_pixels: int) -> Result:
    """Draw the layers in order on a canvas of ``color`` (ARGB), each blended with its opacity.

    The pixel limit applies to all sources together, since they are all decoded at once.
    """
    opened = [open_image(data, max_pixels) for data in sources]
    total = sum(img.size[0] * img.size[1] for img in opened)
    if total > max_pixels:
        raise ImageTooLargeError(f"the composite's sources have {total} pixels together; the limit is {max_pixels}")
    decoded = [decode(img) for img in opened]
    return _guarded(lambda: _finish(_draw(decoded, layers, canvas, color), output, {}))


def _draw(sources: Sequence[Image.Image], layers: Sequence[ops.Layer], canvas_size: ops.Size,
          color: int) -> Image.Image:
    canvas = Image.new("RGBA", canvas_size, ops.argb_to_rgba(color))
    rgba: dict[int, Image.Image] = {}
    for layer in layers:
        if layer.source not in rgba:
            rgba[layer.source] = sources[layer.source].convert("RGBA")
        src = rgba[layer.source]
        origin = ops.anchor_origin(layer.anchor, canvas_size, src.size, (layer.x_offset, layer.y_offset))
        clipped = ops.clip_layer(origin, src.size, canvas_size)
        if clipped is None:
            continue
        box, dest = clipped
        piece = src.crop(box)
        if layer.opacity < 1.0:
            piece.putalpha(piece.getchannel("A").point([round(v * layer.opacity) for v in range(256)]))
        canvas.alpha_composite(piece, dest)
    return canvas


def _guarded(work: Callable[[], T]) -> T:
    """Run work on decoded pixels: kiln's own errors pass; anything else from Pillow is logged and becomes
    App Engine's TransformationError instead of an opaque INTERNAL."""
    try:
        return work()
    except ImagesError:
        raise
    except MemoryError:
        raise ImageTooLargeError("the image is too large to transform") from None
    except Exception as exc:  # noqa: BLE001 - the reason is logged; the app gets a precise class
        log.exception("transformation failed")
        raise TransformationFailedError(f"the transformation failed: {exc}") from None
