"""images_svc.imaging: Pillow's side of the service called directly (no server): how unusual pixel modes are
brought to 8 bits, alpha in histograms and composites, metadata as JSON, and the output limits."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, TiffImagePlugin

from images_svc import imaging, ops
from images_svc.errors import BadImageDataError, ImageTooLargeError, NotImageError

LIMIT = ops.DEFAULT_MAX_PIXELS


def encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_sixteen_bit_grey_is_scaled_to_eight_bits():
    img = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        img.putpixel((x, 0), value)
    pixels = imaging.decode(imaging.open_image(encode(img), LIMIT))
    assert pixels.mode == "L" and [pixels.getpixel((x, 0)) for x in range(3)] == [0, 128, 255]


def test_a_palette_with_transparency_becomes_rgba():
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0])
    img.putpixel((1, 0), 1)
    pixels = imaging.decode(imaging.open_image(encode(img, transparency=1), LIMIT))
    assert pixels.mode == "RGBA" and pixels.getpixel((0, 0)) == (255, 0, 0, 255) and pixels.getpixel((1, 0))[3] == 0


def test_bilevel_and_cmyk_images_become_grey_and_rgb():
    assert imaging.decode(imaging.open_image(encode(Image.new("1", (4, 4), 1)), LIMIT)).mode == "L"
    cmyk = imaging.decode(imaging.open_image(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"), LIMIT))
    assert cmyk.mode == "RGB" and cmyk.getpixel((1, 1))[0] > 200


def test_histogram_weights_colour_by_alpha():
    half_red = encode(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))
    red, green, blue = imaging.histogram(half_red, LIMIT)
    assert red[128] == 16 and green[0] == 16 and blue[0] == 16


def test_histogram_of_grey_counts_the_same_value_in_every_channel():
    red, green, blue = imaging.histogram(encode(Image.new("L", (5, 2), 77)), LIMIT)
    assert red[77] == green[77] == blue[77] == 10


def test_a_layer_partly_off_the_canvas_is_clipped():
    red = encode(Image.new("RGB", (10, 10), (255, 0, 0)))
    result = imaging.composite([red], [ops.Layer(0, -5, -5, 1.0, 0)], (10, 10), 0xFFFFFFFF, ops.Output(),
                               max_pixels=LIMIT)
    img = opened(result.data).convert("RGB")
    assert img.getpixel((4, 4)) == (255, 0, 0) and img.getpixel((5, 5)) == (255, 255, 255)


def test_opacity_scales_a_layers_own_alpha():
    half = encode(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))
    result = imaging.composite([half], [ops.Layer(0, 0, 0, 0.5, 0)], (4, 4), 0, ops.Output(), max_pixels=LIMIT)
    assert opened(result.data).getpixel((1, 1))[3] == 64


def test_composite_sources_share_one_pixel_budget():
    small = encode(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageTooLargeError, match="together"):
        imaging.composite([small, small], [ops.Layer(0, 0, 0, 1.0, 0)], (10, 10), 0, ops.Output(),
                          max_pixels=15_000)


def test_autolevels_keeps_alpha():
    img = Image.linear_gradient("L").resize((16, 16)).point(lambda v: 100 + v // 8).convert("RGBA")
    img.putalpha(77)
    out = imaging.apply(img, [ops.AutoLevels()])
    assert out.mode == "RGBA" and out.getchannel("A").getextrema() == (77, 77)
    low, high = out.getchannel("R").getextrema()
    assert low <= 2 and high >= 250


def test_metadata_is_json_safe_and_dates_become_seconds():
    exif = Image.Exif()
    exif[0x011A] = TiffImagePlugin.IFDRational(72, 1)        # XResolution: a rational
    exif[0x0110] = "model\x00"                                # Model with a C terminator
    exif[0x927C] = b"\x00\x01binary"                          # MakerNote: bytes are dropped
    exif.get_ifd(0x8769)[0x9003] = "2001:02:03 04:05:06"
    img = opened(encode(Image.new("RGB", (6, 4)), "JPEG", exif=exif.tobytes()))
    meta = imaging.metadata(img, parse=True)
    json.dumps(meta)
    assert meta["XResolution"] == 72.0 and meta["Model"] == "model" and "MakerNote" not in meta
    assert meta["DateTimeOriginal"] == 981173106 and (meta["ImageWidth"], meta["ImageLength"]) == (6, 4)


def test_an_unparseable_date_is_left_out():
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "yesterday"
    meta = imaging.metadata(opened(encode(Image.new("RGB", (2, 2)), "JPEG", exif=exif.tobytes())), parse=True)
    assert "DateTimeOriginal" not in meta


@pytest.mark.parametrize("size, fmt", [((70_000, 1), "JPEG"), ((1, 17_000), "WEBP")])
def test_outputs_beyond_an_encoders_side_limit_are_too_large(size, fmt):
    with pytest.raises(ImageTooLargeError, match=fmt):
        imaging.encode(Image.new("RGB", size), ops.Output(fmt))


def test_a_result_over_32_mb_is_too_large(monkeypatch):
    monkeypatch.setattr(ops, "MAX_RESULT_BYTES", 10_000)   # the same check, on a result cheap to make
    noisy = Image.effect_noise((100, 100), 64).convert("RGB")
    with pytest.raises(ImageTooLargeError, match="limit is 10000"):
        imaging.encode(noisy, ops.Output("PNG"))


def test_the_header_check_refuses_before_decoding():
    with pytest.raises(ImageTooLargeError, match="1000x1000"):
        imaging.open_image(encode(Image.new("L", (1000, 1000))), 999_999)


@pytest.mark.parametrize("data, error", [(b"", NotImageError), (b"GIF89a\x00", BadImageDataError),
                                         (b"just text", NotImageError)])
def test_unreadable_bytes(data, error):
    with pytest.raises(error):
        imaging.open_image(data, LIMIT)
