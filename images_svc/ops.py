"""What an images request asks for, as plain values, and where its pixels land.

Nothing here touches Pillow: each operation validates its own arguments when built (so a bad request is refused
before any decoding work is queued), and the geometry — resize sizes and source boxes, crop boxes, EXIF
orientation, composite anchors and clipping — is pure arithmetic the unit tests check directly.
:mod:`images_svc.imaging` carries the operations out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from images_svc.errors import BadTransformDataError

# App Engine's limits (Images API "Quotas and limits" and the Python SDK's checks).
MAX_SIDE = 4000                  # resize targets and composite canvases, per side
MAX_TRANSFORMS = 10              # transforms in one Transform call
MAX_LAYERS = 16                  # layers in one Composite call
MAX_OFFSET = 4000                # |x_offset|, |y_offset| of a composite layer
MAX_REQUEST_BYTES = 32 * 1024 * 1024   # an input (all inputs of a composite together)
MAX_RESULT_BYTES = 32 * 1024 * 1024    # the encoded result
# kiln's choice (App Engine documented none): bounds the memory a decoded image takes (RGBA: 200 MB).
DEFAULT_MAX_PIXELS = 50_000_000

OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")
# Largest side each encoder accepts (libjpeg: 65500, libwebp: 16383); PNG has no practical limit.
ENCODER_MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}


def _unit(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise BadTransformDataError(f"{name} must be between 0.0 and 1.0, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class Resize:
    """Resize to ``width`` x ``height`` (0 = follow the aspect ratio), App Engine's resize()."""

    width: int
    height: int
    crop_to_fit: bool = False
    offset_x: float = 0.5
    offset_y: float = 0.5
    allow_stretch: bool = False

    def __post_init__(self) -> None:
        if not (0 <= self.width <= MAX_SIDE and 0 <= self.height <= MAX_SIDE):
            raise BadTransformDataError(f"resize width and height must be between 0 and {MAX_SIDE}, got "
                                        f"{self.width}x{self.height}")
        if not self.width and not self.height:
            raise BadTransformDataError("resize needs a width or a height greater than 0")
        if (self.crop_to_fit or self.allow_stretch) and not (self.width and self.height):
            raise BadTransformDataError("crop_to_fit and allow_stretch need both width and height")
        _unit("crop_offset_x", self.offset_x)
        _unit("crop_offset_y", self.offset_y)


@dataclasses.dataclass(frozen=True)
class Rotate:
    """Rotate clockwise by a multiple of 90 degrees (stored normalised to 0, 90, 180 or 270)."""

    degrees: int

    def __post_init__(self) -> None:
        if self.degrees % 90:
            raise BadTransformDataError(f"rotation must be a multiple of 90 degrees, got {self.degrees}")
        object.__setattr__(self, "degrees", self.degrees % 360)


@dataclasses.dataclass(frozen=True)
class Flip:
    """Mirror left-right (``horizontal``) or top-bottom."""

    horizontal: bool


@dataclasses.dataclass(frozen=True)
class Crop:
    """Keep the box given as fractions of the width and height."""

    left: float
    top: float
    right: float
    bottom: float

    def __post_init__(self) -> None:
        for name in ("left", "top", "right", "bottom"):
            _unit(f"crop {name}", getattr(self, name))
        if self.left >= self.right:
            raise BadTransformDataError("crop left_x must be less than right_x")
        if self.top >= self.bottom:
            raise BadTransformDataError("crop top_y must be less than bottom_y")


@dataclasses.dataclass(frozen=True)
class AutoLevels:
    """App Engine's "I'm feeling lucky": stretch each colour channel to the full range."""


Op = Resize | Rotate | Flip | Crop | AutoLevels


@dataclasses.dataclass(frozen=True)
class Output:
    """How to encode a result."""

    format: str = "PNG"
    quality: int | None = None
    substitution_rgb: int | None = None

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise BadTransformDataError(f"output encoding must be one of {', '.join(OUTPUT_FORMATS)}, "
                                        f"got {self.format}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise BadTransformDataError(f"quality must be between 1 and 100, got {self.quality}")
        if self.substitution_rgb is not None and not 0 <= self.substitution_rgb <= 0xFFFFFFFF:
            raise BadTransformDataError("transparent_substitution_rgb must be a 32-bit RGB value")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One composite layer: source image, offset from its anchor, opacity, anchor (0 TOP_LEFT .. 8 BOTTOM_RIGHT)."""

    source: int
    x_offset: int
    y_offset: int
    opacity: float
    anchor: int

    def __post_init__(self) -> None:
        if not (-MAX_OFFSET <= self.x_offset <= MAX_OFFSET and -MAX_OFFSET <= self.y_offset <= MAX_OFFSET):
            raise BadTransformDataError(f"composite offsets must be between -{MAX_OFFSET} and {MAX_OFFSET}")
        _unit("opacity", self.opacity)
        if not 0 <= self.anchor <= 8:
            raise BadTransformDataError(f"unknown anchor {self.anchor}")


def check_transforms(ops: Sequence[Op]) -> None:
    """App Engine's count rule: 1 to 10 transforms a call."""
    if not ops:
        raise BadTransformDataError("at least one transform is required")
    if len(ops) > MAX_TRANSFORMS:
        raise BadTransformDataError(f"at most {MAX_TRANSFORMS} transforms a call, got {len(ops)}")


def check_canvas(width: int, height: int, layers: Sequence[Layer], sources: int) -> None:
    """App Engine's composite rules: a canvas of 1..4000 a side, 1..16 layers naming existing sources."""
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise BadTransformDataError(f"canvas width and height must be between 1 and {MAX_SIDE}, got {width}x{height}")
    if not layers:
        raise BadTransformDataError("a composite needs at least one layer")
    if len(layers) > MAX_LAYERS:
        raise BadTransformDataError(f"at most {MAX_LAYERS} composite layers a call, got {len(layers)}")
    for layer in layers:
        if not 0 <= layer.source < sources:
            raise BadTransformDataError(f"layer source_index {layer.source} names no image ({sources} given)")


# --- geometry --------------------------------------------------------------------------------------------

Size = tuple[int, int]
Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class ResizePlan:
    """The output size and the region of the current image (in its pixels) that fills it."""

    size: Size
    box: Box


def plan_resize(current: Size, op: Resize) -> ResizePlan:
    """Where a resize takes its pixels from, following App Engine's rules.

    Without ``crop_to_fit``/``allow_stretch`` the more restricting of width and height wins and the other side
    follows the aspect ratio (rounded down, as App Engine did). ``crop_to_fit`` scales by the less restricting
    side and keeps the window the offsets choose; computing that window in source pixels lets Pillow resample
    only it, so no oversized intermediate image is ever made.

    Raises:
        BadTransformDataError: the side that follows the aspect ratio would exceed 4000 pixels.
    """
    w, h = current
    full: Box = (0.0, 0.0, float(w), float(h))
    if op.allow_stretch:
        return ResizePlan((op.width, op.height), full)
    if op.crop_to_fit:
        if op.width * h >= op.height * w:   # the width ratio is the larger: full width, a band of rows
            rows = op.height * w / op.width
            top = (h - rows) * op.offset_y
            return ResizePlan((op.width, op.height), (0.0, top, float(w), top + rows))
        cols = op.width * h / op.height
        left = (w - cols) * op.offset_x
        return ResizePlan((op.width, op.height), (left, 0.0, left + cols, float(h)))
    if op.width and (not op.height or op.width * h <= op.height * w):
        size = (op.width, max(1, h * op.width // w))
    else:
        size = (max(1, w * op.height // h), op.height)
    if max(size) > MAX_SIDE:
        raise BadTransformDataError(f"resizing a {w}x{h} image to {op.width or 'any'}x{op.height or 'any'} "
                                    f"keeping its aspect ratio gives {size[0]}x{size[1]}; neither side may "
                                    f"exceed {MAX_SIDE}")
    return ResizePlan(size, full)


def crop_box(current: Size, op: Crop) -> tuple[int, int, int, int]:
    """The pixel box of a fractional crop: fractions times the size, rounded half up, never empty."""
    w, h = current
    left, right = _span(op.left, op.right, w)
    top, bottom = _span(op.top, op.bottom, h)
    return left, top, right, bottom


def _span(start: float, end: float, length: int) -> tuple[int, int]:
    lo, hi = math.floor(start * length + 0.5), math.floor(end * length + 0.5)
    if hi <= lo:    # a box thinner than a pixel still keeps one
        hi = min(length, lo + 1)
        lo = hi - 1
    return lo, hi


def resized_size(current: Size, op: Op) -> Size:
    """The size after ``op``, without pixels (for planning a JPEG draft decode)."""
    if isinstance(op, Resize):
        return plan_resize(current, op).size
    if isinstance(op, Rotate) and op.degrees in (90, 270):
        return current[1], current[0]
    if isinstance(op, Crop):
        left, top, right, bottom = crop_box(current, op)
        return right - left, bottom - top
    return current


def orientation_ops(orientation: int, size: Size) -> list[Op]:
    """The transforms that show an image with EXIF ``Orientation`` upright.

    App Engine's CORRECT_ORIENTATION rule: an image already taller than wide is left alone, since the camera
    has most likely rotated it already; 1 and unknown values need nothing.
    """
    if size[1] > size[0]:
        return []
    table: dict[int, list[Op]] = {
        2: [Flip(horizontal=True)],
        3: [Rotate(180)],
        4: [Flip(horizontal=False)],
        5: [Rotate(90), Flip(horizontal=True)],    # transpose
        6: [Rotate(90)],
        7: [Rotate(270), Flip(horizontal=True)],   # transverse
        8: [Rotate(270)],
    }
    return list(table.get(orientation, []))


def draft_request(source: Size, ops: Sequence[Op], gap: float) -> Size | None:
    """How small a JPEG may be decoded (libjpeg scales by 1/2, 1/4 or 1/8 while decoding) and still be resized
    exactly as if decoded in full: the first resize's window must keep at least ``gap`` source pixels per output
    pixel. ``None`` when nothing is gained (no resize before a crop or autolevels, or an enlargement)."""
    size = source
    quarter_turns = 0
    for op in ops:
        if isinstance(op, Resize):
            plan = plan_resize(size, op)
            x0, y0, x1, y1 = plan.box
            need_w = math.ceil(size[0] * gap * plan.size[0] / (x1 - x0))
            need_h = math.ceil(size[1] * gap * plan.size[1] / (y1 - y0))
            if need_w >= size[0] and need_h >= size[1]:
                return None
            return (need_h, need_w) if quarter_turns % 2 else (need_w, need_h)
        if isinstance(op, Rotate):
            if op.degrees in (90, 270):
                quarter_turns += 1
                size = size[1], size[0]
        elif not isinstance(op, Flip):
            return None
    return None


def argb_to_rgba(color: int) -> tuple[int, int, int, int]:
    """App Engine's canvas colour (0xAARRGGBB, unsigned) as Pillow's RGBA tuple."""
    color &= 0xFFFFFFFF
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF, (color >> 24) & 0xFF


def anchor_origin(anchor: int, canvas: Size, size: Size, offset: tuple[int, int]) -> tuple[int, int]:
    """Where a layer's top-left corner lands: its anchor point on the canvas's same anchor point, then moved by
    the offset (anchors count row by row: 0 TOP_LEFT, 1 TOP_CENTER, ... 8 BOTTOM_RIGHT)."""
    fx, fy = (anchor % 3) / 2, (anchor // 3) / 2
    return (offset[0] + math.floor(fx * (canvas[0] - size[0])),
            offset[1] + math.floor(fy * (canvas[1] - size[1])))


def clip_layer(origin: tuple[int, int], size: Size, canvas: Size) -> tuple[tuple[int, int, int, int],
                                                                            tuple[int, int]] | None:
    """The part of a layer that falls on the canvas: (box in the layer, its top-left on the canvas), or ``None``
    when the layer lies wholly outside."""
    x, y = origin
    left, top = max(0, x), max(0, y)
    right, bottom = min(canvas[0], x + size[0]), min(canvas[1], y + size[1])
    if right <= left or bottom <= top:
        return None
    return (left - x, top - y, right - x, bottom - y), (left, top)


# --- format sniffing -------------------------------------------------------------------------------------

_MAGIC = (
    (b"\xff\xd8", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
)


def sniff(data: bytes) -> str | None:
    """The image format ``data`` claims by its first bytes, or ``None``.

    The service uses it to tell "not an image" (NotImageError) from "an image that is broken" (BadImageError)
    when Pillow cannot read the bytes.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None
