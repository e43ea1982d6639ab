"""Images: kiln.api.images in this process against a real ``python -m images_svc``, on images the tests draw with
Pillow. Pixels are checked where each transform puts them; every error is followed by a call that must still
succeed, so a service that died or wedged on bad input fails the test that fed it."""

from __future__ import annotations

import io
import random
import struct
import zlib

import grpc
import pytest
from PIL import Image as PILImage

from kiln import errors
from kiln_platform import auth
from kiln.api import _rpc, images
from kiln.pb.images.v1 import images_pb2 as pb
from kiln.pb.images.v1 import images_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration.conftest import SECRET, app_metadata, service_env

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


# --- images drawn for the tests --------------------------------------------------------------------------

def encode(img: PILImage.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def quadrants(width: int = 40, height: int = 20) -> PILImage.Image:
    """Red top-left, green top-right, blue bottom-left, yellow bottom-right."""
    img = PILImage.new("RGB", (width, height))
    w, h = width // 2, height // 2
    for x, y, colour in ((0, 0, RED), (w, 0, GREEN), (0, h, BLUE), (w, h, YELLOW)):
        img.paste(colour, (x, y, x + w, y + h))
    return img


def noise(width: int, height: int, seed: int = 7) -> PILImage.Image:
    return PILImage.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))


def solid(colour, size=(10, 10), mode="RGB") -> bytes:
    return encode(PILImage.new(mode, size, colour))


def decoded(data: bytes) -> PILImage.Image:
    return PILImage.open(io.BytesIO(data))


def rgb(data: bytes, x: int, y: int) -> tuple[int, int, int]:
    return decoded(data).convert("RGB").getpixel((x, y))


def near(actual, expected, tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


def looks(data: bytes, expected: list[tuple[int, int, int]], tolerance: int = 40) -> bool:
    """The quadrant centres are close to ``expected`` (resampling and JPEG blur edges, not centres)."""
    return all(near(c, e, tolerance) for c, e in zip(corners(data), expected, strict=True))


def corners(data: bytes) -> list[tuple[int, int, int]]:
    """The colours at the centres of the four quadrants: top-left, top-right, bottom-left, bottom-right."""
    img = decoded(data).convert("RGB")
    w, h = img.size
    return [img.getpixel((x, y)) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` over a compressed run of zeros (a classic bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (8 << 20), 9))
            + chunk(b"IEND", b""))


def jpeg_with_exif(img: PILImage.Image, orientation: int | None = None, make: str | None = None,
                   taken: str | None = None) -> bytes:
    exif = PILImage.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if make is not None:
        exif[0x010F] = make
    if taken is not None:
        exif.get_ifd(0x8769)[0x9003] = taken
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


QUADRANTS = encode(quadrants())


# --- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(supervisor):
    ready = supervisor.run_dir / "images-test.addr"
    return supervisor.start("images-test", python_module(
        "images_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--workers", "2"),
        env=service_env(), ready_file=ready)


@pytest.fixture
def as_app(service, monkeypatch):
    """Make this test process an app's SDK: the service's address and the app's token."""
    def use(token: str) -> None:
        monkeypatch.setenv("KILN_IMAGES_ADDR", service.address)
        monkeypatch.setenv("KILN_APP_TOKEN", token)
        _rpc.reset()
    use(auth.mint_app_token(SECRET, "imager"))
    yield use
    _rpc.reset()


@pytest.fixture
def still_serving(as_app, service):
    """After the test: the same process is alive and transforms a good image correctly."""
    yield
    as_app(auth.mint_app_token(SECRET, "imager"))
    assert service.proc.poll() is None, service.log_tail()
    assert corners(images.horizontal_flip(QUADRANTS)) == [GREEN, RED, YELLOW, BLUE]


@pytest.fixture
def stub(service):
    channel = grpc.insecure_channel(service.address)
    yield images_pb2_grpc.ImagesServiceStub(channel)
    channel.close()


# --- what an image is -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, expected", [("PNG", images.PNG), ("JPEG", images.JPEG), ("WEBP", images.WEBP),
                                           ("GIF", images.GIF), ("BMP", images.BMP), ("TIFF", images.TIFF),
                                           ("ICO", images.ICO)])
def test_width_height_and_format_are_read_from_the_image(as_app, fmt, expected):
    options = {"sizes": [(48, 32)]} if fmt == "ICO" else {}
    image = images.Image(encode(quadrants(48, 32), fmt, **options))
    assert (image.width, image.height, image.format) == (48, 32, expected)


# --- transforms, pixel by pixel -----------------------------------------------------------------------------

def test_horizontal_flip_mirrors_left_and_right(as_app):
    assert corners(images.horizontal_flip(QUADRANTS)) == [GREEN, RED, YELLOW, BLUE]


def test_vertical_flip_mirrors_top_and_bottom(as_app):
    assert corners(images.vertical_flip(QUADRANTS)) == [BLUE, YELLOW, RED, GREEN]


@pytest.mark.parametrize("degrees, size, expected", [
    (90, (20, 40), [BLUE, RED, YELLOW, GREEN]),
    (180, (40, 20), [YELLOW, BLUE, GREEN, RED]),
    (270, (20, 40), [GREEN, YELLOW, RED, BLUE]),
    (-90, (20, 40), [GREEN, YELLOW, RED, BLUE]),
    (360, (40, 20), [RED, GREEN, BLUE, YELLOW]),
])
def test_rotate_turns_clockwise_by_multiples_of_90(as_app, degrees, size, expected):
    out = images.rotate(QUADRANTS, degrees)
    assert decoded(out).size == size and corners(out) == expected


def test_resize_to_a_width_keeps_the_aspect_ratio(as_app):
    assert decoded(images.resize(QUADRANTS, width=20)).size == (20, 10)


def test_resize_to_a_height_keeps_the_aspect_ratio(as_app):
    assert decoded(images.resize(QUADRANTS, height=5)).size == (10, 5)


def test_resize_to_both_uses_the_more_restricting_side(as_app):
    assert decoded(images.resize(QUADRANTS, 20, 20)).size == (20, 10)
    assert decoded(images.resize(QUADRANTS, 30, 5)).size == (10, 5)


def test_resize_can_enlarge_and_keeps_the_picture(as_app):
    out = images.resize(QUADRANTS, width=80)
    assert decoded(out).size == (80, 40) and looks(out, [RED, GREEN, BLUE, YELLOW])


@pytest.mark.parametrize("offset_x, expected", [(0.0, [RED, RED, BLUE, BLUE]), (1.0, [GREEN, GREEN, YELLOW, YELLOW]),
                                                (0.5, [RED, GREEN, BLUE, YELLOW])])
def test_crop_to_fit_fills_the_size_and_the_offset_picks_the_window(as_app, offset_x, expected):
    out = images.resize(QUADRANTS, 10, 10, crop_to_fit=True, crop_offset_x=offset_x)
    assert decoded(out).size == (10, 10)
    img = decoded(out).convert("RGB")   # near the window's corners: away from the resampled seams
    assert all(near(img.getpixel((x, y)), e) for (x, y), e in zip([(1, 2), (8, 2), (1, 7), (8, 7)], expected))


def test_crop_to_fit_offset_y_picks_the_rows(as_app):
    tall = encode(quadrants(20, 40))
    out = images.resize(tall, 10, 10, crop_to_fit=True, crop_offset_y=1.0)
    assert near(rgb(out, 1, 5), BLUE) and near(rgb(out, 8, 5), YELLOW)


def test_allow_stretch_gives_exactly_the_size(as_app):
    out = images.resize(QUADRANTS, 10, 30, allow_stretch=True)
    assert decoded(out).size == (10, 30) and looks(out, [RED, GREEN, BLUE, YELLOW])


def test_crop_keeps_the_fractional_box(as_app):
    out = images.crop(QUADRANTS, 0.5, 0.0, 1.0, 0.5)
    assert decoded(out).size == (20, 10) and set(corners(out)) == {GREEN}


def test_crop_of_the_middle(as_app):
    out = images.crop(QUADRANTS, 0.25, 0.25, 0.75, 0.75)
    assert decoded(out).size == (20, 10) and corners(out) == [RED, GREEN, BLUE, YELLOW]


def test_several_transforms_run_in_the_order_given(as_app):
    first = images.Image(QUADRANTS)
    first.rotate(90)
    first.crop(0.0, 0.0, 0.5, 0.5)
    second = images.Image(QUADRANTS)
    second.crop(0.0, 0.0, 0.5, 0.5)
    second.rotate(90)
    assert set(corners(first.execute_transforms())) == {BLUE}
    assert set(corners(second.execute_transforms())) == {RED}


def test_ten_transforms_in_one_call(as_app):
    image = images.Image(QUADRANTS)
    for _ in range(5):
        image.horizontal_flip()
        image.rotate(180)
    out = image.execute_transforms()   # five (flip, half turn) pairs = one vertical flip
    assert corners(out) == [BLUE, YELLOW, RED, GREEN]


def test_execute_transforms_updates_the_image_and_clears_the_queue(as_app):
    image = images.Image(QUADRANTS)
    image.rotate(90)
    image.execute_transforms(output_encoding=images.JPEG)
    assert (image.width, image.height, image.format) == (20, 40, images.JPEG)
    with pytest.raises(images.BadRequestError, match="at least one transformation"):
        image.execute_transforms()
    image.resize(width=10)
    assert decoded(image.execute_transforms()).size == (10, 20)


def test_im_feeling_lucky_stretches_a_dull_image_to_full_range(as_app):
    dull = PILImage.linear_gradient("L").resize((64, 64)).point(lambda v: 100 + v * 50 // 255).convert("RGB")
    out = decoded(images.im_feeling_lucky(encode(dull))).convert("L")
    low, high = out.getextrema()
    assert low <= 10 and high >= 245


def test_im_feeling_lucky_balances_a_colour_cast(as_app):
    cast = PILImage.merge("RGB", [PILImage.linear_gradient("L").resize((64, 64)).point(lambda v: 60 + v // 2)] * 2
                          + [PILImage.new("L", (64, 64), 30)])
    red, green, blue = decoded(images.im_feeling_lucky(encode(cast))).convert("RGB").getpixel((32, 63))
    assert red >= 240 and green >= 240   # the brightest row reaches white in the channels that vary


# --- output encodings ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, name", [(images.PNG, "PNG"), (images.JPEG, "JPEG"), (images.WEBP, "WEBP")])
def test_output_encoding_chooses_the_format(as_app, encoding, name):
    out = images.horizontal_flip(QUADRANTS, output_encoding=encoding)
    assert decoded(out).format == name and near(rgb(out, 5, 5), GREEN)


def test_png_is_the_default_output(as_app):
    assert decoded(images.rotate(encode(quadrants(), "JPEG"), 90)).format == "PNG"


@pytest.mark.parametrize("encoding", [images.JPEG, images.WEBP])
def test_quality_changes_the_size_of_lossy_output(as_app, encoding):
    photo = encode(noise(200, 200), "PNG")
    low = images.horizontal_flip(photo, output_encoding=encoding, quality=10)
    high = images.horizontal_flip(photo, output_encoding=encoding, quality=95)
    assert len(low) < len(high) / 2


def test_transparent_pixels_take_the_substitution_colour_in_jpeg(as_app):
    clear = solid((255, 0, 0, 0), mode="RGBA")
    out = images.horizontal_flip(clear, output_encoding=images.JPEG, transparent_substitution_rgb=0x00FF00)
    assert near(rgb(out, 5, 5), GREEN, 10)


def test_png_output_keeps_transparency(as_app):
    out = images.rotate(solid((0, 0, 255, 0), mode="RGBA"), 90)
    assert decoded(out).mode == "RGBA" and decoded(out).getpixel((5, 5))[3] == 0


# --- composite ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("anchor, cell", [
    (images.TOP_LEFT, (0, 0)), (images.TOP_CENTER, (1, 0)), (images.TOP_RIGHT, (2, 0)),
    (images.CENTER_LEFT, (0, 1)), (images.CENTER_CENTER, (1, 1)), (images.CENTER_RIGHT, (2, 1)),
    (images.BOTTOM_LEFT, (0, 2)), (images.BOTTOM_CENTER, (1, 2)), (images.BOTTOM_RIGHT, (2, 2)),
])
def test_composite_anchor_places_the_image_at_the_canvas_point(as_app, anchor, cell):
    out = images.composite([(solid(RED), 0, 0, 1.0, anchor)], 30, 30, color=0xFFFFFFFF)
    img = decoded(out).convert("RGB")
    assert img.size == (30, 30)
    red_cells = {(cx, cy) for cx in range(3) for cy in range(3) if img.getpixel((cx * 10 + 5, cy * 10 + 5)) == RED}
    assert red_cells == {cell}


def test_composite_offsets_move_the_image_from_its_anchor(as_app):
    out = images.composite([(solid(RED), 5, 7, 1.0, images.TOP_LEFT)], 30, 30, color=0xFFFFFFFF)
    assert rgb(out, 5, 7) == RED and rgb(out, 4, 7) == WHITE and rgb(out, 14, 16) == RED and rgb(out, 15, 16) == WHITE


def test_composite_offsets_from_the_bottom_right_anchor(as_app):
    out = images.composite([(solid(RED), -5, -5, 1.0, images.BOTTOM_RIGHT)], 30, 30, color=0xFFFFFFFF)
    assert rgb(out, 15, 15) == RED and rgb(out, 24, 24) == RED and rgb(out, 25, 25) == WHITE


def test_composite_opacity_blends_with_what_is_below(as_app):
    out = images.composite([(solid(BLUE), 0, 0, 1.0, images.TOP_LEFT), (solid(RED), 0, 0, 0.5, images.TOP_LEFT)],
                           10, 10)
    assert near(rgb(out, 5, 5), (128, 0, 127), 2)


def test_composite_draws_layers_in_order(as_app):
    out = images.composite([(solid(BLUE), 0, 0, 1.0, images.TOP_LEFT), (solid(RED, (5, 5)), 0, 0, 1.0,
                                                                         images.TOP_LEFT)], 10, 10)
    assert rgb(out, 2, 2) == RED and rgb(out, 7, 7) == BLUE


def test_composite_canvas_colour_is_argb(as_app):
    out = images.composite([(solid(RED, (1, 1)), 0, 0, 1.0, images.TOP_LEFT)], 10, 10, color=0xFF00FF00)
    assert decoded(out).convert("RGBA").getpixel((5, 5)) == (0, 255, 0, 255)


def test_composite_default_canvas_is_transparent(as_app):
    out = images.composite([(solid(RED, (1, 1)), 0, 0, 1.0, images.TOP_LEFT)], 10, 10)
    assert decoded(out).convert("RGBA").getpixel((5, 5))[3] == 0


def test_composite_accepts_image_objects_and_jpeg_output(as_app):
    source = images.Image(QUADRANTS)
    out = images.composite([(source, 0, 0, 1.0, images.CENTER_CENTER)], 40, 20, output_encoding=images.JPEG,
                           quality=90)
    assert decoded(out).format == "JPEG" and looks(out, [RED, GREEN, BLUE, YELLOW])


# --- histogram ---------------------------------------------------------------------------------------------

def test_histogram_counts_each_channel_value(as_app):
    red, green, blue = images.histogram(QUADRANTS)   # 200 pixels per quadrant
    assert (len(red), len(green), len(blue)) == (256, 256, 256)
    assert (red[255], red[0]) == (400, 400)        # red and yellow / green and blue
    assert (green[255], green[0]) == (400, 400)    # green and yellow / red and blue
    assert (blue[255], blue[0]) == (200, 600)      # blue / the rest
    assert sum(red) == sum(green) == sum(blue) == 800


def test_histogram_of_the_image_class(as_app):
    assert images.Image(solid((10, 20, 30))).histogram()[2][30] == 100


# --- EXIF orientation ---------------------------------------------------------------------------------------

def test_correct_orientation_applies_the_exif_rotation(as_app):
    data = jpeg_with_exif(quadrants(), orientation=6)   # stored on its side: turn 90 degrees clockwise to view
    image = images.Image(data)
    image.set_correct_orientation(images.CORRECT_ORIENTATION)
    image.resize(width=20)
    out = image.execute_transforms()
    assert decoded(out).size == (20, 40)
    assert looks(out, [BLUE, RED, YELLOW, GREEN])


def test_correct_orientation_reads_exif_from_a_png_too(as_app):
    exif = PILImage.Exif()
    exif[0x0112] = 6
    out = images.rotate(encode(quadrants(), exif=exif.tobytes()), 0, correct_orientation=images.CORRECT_ORIENTATION)
    assert decoded(out).size == (20, 40) and corners(out) == [BLUE, RED, YELLOW, GREEN]


def test_orientation_is_unchanged_by_default(as_app):
    out = images.resize(jpeg_with_exif(quadrants(), orientation=6), width=20)
    assert decoded(out).size == (20, 10)


def test_correct_orientation_in_the_module_functions(as_app):
    out = images.horizontal_flip(jpeg_with_exif(quadrants(), orientation=3),
                                 correct_orientation=images.CORRECT_ORIENTATION)
    assert looks(out, [BLUE, YELLOW, RED, GREEN])


def test_an_image_already_taller_than_wide_is_not_corrected(as_app):
    data = jpeg_with_exif(quadrants(20, 40), orientation=6)
    out = images.resize(data, height=40, correct_orientation=images.CORRECT_ORIENTATION)
    assert decoded(out).size == (20, 40) and near(corners(out)[0], RED)


def test_the_result_carries_no_exif_orientation(as_app):
    out = images.rotate(jpeg_with_exif(quadrants(), orientation=6), 0, output_encoding=images.JPEG,
                        correct_orientation=images.CORRECT_ORIENTATION)
    assert decoded(out).getexif().get(0x0112) is None


def test_source_metadata_is_parsed_on_request(as_app):
    image = images.Image(jpeg_with_exif(quadrants(), make="kiln-camera", taken="2020:01:02 03:04:05"))
    image.horizontal_flip()
    image.execute_transforms(parse_source_metadata=True)
    meta = image.get_original_metadata()
    assert meta["Make"] == "kiln-camera" and (meta["ImageWidth"], meta["ImageLength"]) == (40, 20)
    assert meta["DateTimeOriginal"] == 1577934245


def test_source_metadata_without_parsing_has_the_dimensions_only(as_app):
    image = images.Image(jpeg_with_exif(quadrants(), make="kiln-camera"))
    image.vertical_flip()
    image.execute_transforms()
    assert image.get_original_metadata() == {"ImageWidth": 40, "ImageLength": 20}


# --- asynchronous calls ------------------------------------------------------------------------------------------

def test_async_calls_run_together_and_each_returns_its_result(as_app):
    calls = []
    rpcs = [images.resize_async(QUADRANTS, width=w, rpc=images.create_rpc(callback=lambda w=w: calls.append(w)))
            for w in (4, 8, 12, 16)]
    assert [decoded(rpc.get_result()).size for rpc in rpcs] == [(4, 2), (8, 4), (12, 6), (16, 8)]
    assert sorted(calls) == [4, 8, 12, 16]


def test_an_async_error_is_raised_by_get_result(as_app, still_serving):
    rpc = images.rotate_async(b"not an image at all", 90)
    with pytest.raises(images.NotImageError):
        rpc.get_result()


# --- bad input: precise errors, and the service keeps serving ---------------------------------------------

def test_non_image_bytes_are_not_an_image(as_app, still_serving):
    with pytest.raises(images.NotImageError):
        images.rotate(b"<html>this is not an image</html>", 90)


def test_a_truncated_jpeg_is_a_bad_image(as_app, still_serving):
    data = encode(noise(200, 200), "JPEG", quality=90)
    with pytest.raises(images.BadImageError, match="truncated"):
        images.rotate(data[:len(data) // 2], 90)


def test_a_png_with_corrupt_data_is_a_bad_image(as_app, still_serving):
    data = bytearray(encode(noise(64, 64)))
    at = data.index(b"IDAT") + 100
    data[at:at + 16] = bytes(16)
    with pytest.raises(images.BadImageError):
        images.rotate(bytes(data), 90)


def test_bytes_starting_like_a_png_are_a_bad_image(as_app, still_serving):
    with pytest.raises(images.BadImageError, match="PNG"):
        images.rotate(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 90)


def test_a_decompression_bomb_is_refused_from_its_header(as_app, still_serving):
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 100_000
    with pytest.raises(images.LargeImageError):
        images.resize(bomb, width=100)


def test_an_image_just_over_the_pixel_limit_is_too_large(as_app, still_serving):
    with pytest.raises(images.LargeImageError, match="50000000 pixels"):
        images.horizontal_flip(png_declaring(8000, 6300))   # 50.4 megapixels: below Pillow's own error level


def test_a_bomb_hidden_inside_an_icon_is_refused(as_app, still_serving):
    png = png_declaring(9000, 9000)   # an ICO's directory says 16x16; Pillow decodes its PNG while opening it
    icon = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png
    with pytest.raises(images.LargeImageError):
        images.rotate(icon, 90)


def test_the_size_of_a_bomb_is_refused_too(as_app, still_serving):
    with pytest.raises(images.LargeImageError):
        images.Image(png_declaring(100_000, 100_000)).width


def test_a_histogram_of_non_image_bytes_is_not_an_image(as_app, still_serving):
    with pytest.raises(images.NotImageError):
        images.histogram(b"plain text")


def test_a_composite_with_a_corrupt_source_is_a_bad_image(as_app, still_serving):
    with pytest.raises(images.BadImageError):
        images.composite([(b"\xff\xd8\xff\xe0 broken jpeg", 0, 0, 1.0, images.TOP_LEFT)], 10, 10)


def test_more_than_ten_transforms_are_refused_before_any_call(as_app):
    image = images.Image(QUADRANTS)
    for _ in range(images.MAX_TRANSFORMS_PER_REQUEST):
        image.horizontal_flip()
    with pytest.raises(images.BadRequestError, match="10 transforms"):
        image.vertical_flip()


def test_a_resize_whose_free_side_would_pass_4000_is_a_bad_request(as_app, still_serving):
    with pytest.raises(images.BadRequestError, match="4000"):
        images.resize(solid(RED, (10, 1000)), width=100)


def test_webp_output_wider_than_webp_allows_is_too_large(as_app, still_serving):
    with pytest.raises(images.LargeImageError, match="WEBP"):
        images.horizontal_flip(solid(RED, (20_000, 1)), output_encoding=images.WEBP)


def test_a_blob_key_names_nothing(as_app, still_serving):
    with pytest.raises(images.InvalidBlobKeyError, match="some-key"):
        images.Image(blob_key="some-key").width


def test_a_cloud_storage_file_does_not_exist(as_app, still_serving):
    image = images.Image(filename="/gs/bucket/photo.jpg")
    image.rotate(90)
    with pytest.raises(images.ObjectNotFoundError):
        image.execute_transforms()


def test_a_forged_app_token_is_unauthenticated(as_app, still_serving):
    as_app("imager." + "0" * 64)
    with pytest.raises(errors.UnauthenticatedError):
        images.rotate(QUADRANTS, 90)


# --- the contract as other languages' clients see it ------------------------------------------------------

def _status(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    trailing = dict(caught.value.trailing_metadata() or ())
    return caught.value.code(), trailing.get(errors.ERROR_CODE_KEY)


def test_the_service_refuses_more_than_ten_transforms_itself(stub):
    request = pb.TransformRequest(image=pb.ImageData(content=QUADRANTS),
                                  transforms=[pb.Transform(horizontal_flip=True)] * 11)
    code = _status(lambda: stub.Transform(request, metadata=app_metadata("imager")))
    assert code == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_TRANSFORM_DATA")


def test_a_transform_setting_two_operations_is_bad_transform_data(stub):
    request = pb.TransformRequest(image=pb.ImageData(content=QUADRANTS),
                                  transforms=[pb.Transform(rotate=90, horizontal_flip=True)])
    code = _status(lambda: stub.Transform(request, metadata=app_metadata("imager")))
    assert code == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_TRANSFORM_DATA")


def test_input_only_formats_are_not_outputs(stub):
    request = pb.TransformRequest(image=pb.ImageData(content=QUADRANTS), transforms=[pb.Transform(rotate=90)],
                                  output=pb.OutputSettings(format=pb.FORMAT_GIF))
    code = _status(lambda: stub.Transform(request, metadata=app_metadata("imager")))
    assert code == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_TRANSFORM_DATA")


def test_unset_offsets_and_opacity_take_app_engines_defaults(stub):
    request = pb.CompositeRequest(images=[pb.ImageData(content=solid(RED))], width=30, height=30,
                                  layers=[pb.CompositeLayer(source_index=0, anchor=pb.ANCHOR_CENTER_CENTER)])
    out = stub.Composite(request, metadata=app_metadata("imager")).image.content
    assert rgb(out, 15, 15) == RED
    resize = pb.TransformRequest(image=pb.ImageData(content=QUADRANTS),
                                 transforms=[pb.Transform(width=10, height=10, crop_to_fit=True)])
    assert looks(stub.Transform(resize, metadata=app_metadata("imager")).image.content, [RED, GREEN, BLUE, YELLOW])


def test_a_call_without_a_token_is_refused(stub):
    request = pb.GetInfoRequest(image=pb.ImageData(content=QUADRANTS))
    assert _status(lambda: stub.GetInfo(request))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_no_bad_input_reached_an_unhandled_error(service):
    """Every failure above was answered with a precise code: the service logged no traceback (it runs last)."""
    log = service.log_path.read_text(errors="replace")
    assert "unhandled error" not in log and "Traceback" not in log
