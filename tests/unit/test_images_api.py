"""kiln.api.images without a service: App Engine's names and values, and every check App Engine's SDK made before
calling. No service address is set, so a check that let a call through would fail with UnavailableError instead
of the error the test expects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kiln.api import _rpc, images
from kiln.pb.images.v1 import images_pb2 as pb

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32   # never decoded here


@pytest.fixture(autouse=True)
def no_service(monkeypatch):
    monkeypatch.delenv("KILN_IMAGES_ADDR", raising=False)
    _rpc.reset()
    yield
    _rpc.reset()


def queued(image: images.Image) -> list[pb.Transform]:
    return list(image._transforms)


# --- names and values --------------------------------------------------------------------------------------

def test_constants_have_app_engines_values():
    assert (images.JPEG, images.PNG, images.WEBP) == (0, 1, 2)
    assert (images.BMP, images.GIF, images.ICO, images.TIFF) == (-1, -2, -3, -4)
    assert (images.UNCHANGED_ORIENTATION, images.CORRECT_ORIENTATION) == (0, 1)
    assert [images.TOP_LEFT, images.TOP_CENTER, images.TOP_RIGHT, images.CENTER_LEFT, images.CENTER_CENTER,
            images.CENTER_RIGHT, images.BOTTOM_LEFT, images.BOTTOM_CENTER, images.BOTTOM_RIGHT] == list(range(9))
    assert (images.MAX_TRANSFORMS_PER_REQUEST, images.MAX_COMPOSITES_PER_REQUEST) == (10, 16)
    assert images.OUTPUT_ENCODING_TYPES == {images.JPEG, images.PNG, images.WEBP}


def test_every_exported_name_exists_and_errors_share_one_base():
    for name in images.__all__:
        assert hasattr(images, name), name
    for cls in (images.TransformationError, images.BadRequestError, images.NotImageError, images.BadImageError,
                images.LargeImageError, images.InvalidBlobKeyError, images.AccessDeniedError,
                images.ObjectNotFoundError, images.BlobKeyRequiredError, images.UnsupportedSizeError):
        assert issubclass(cls, images.Error)


def test_the_api_does_not_need_pillow_in_the_apps_process():
    code = "import sys, kiln.api.images; print('PIL' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_invalid_blob_key_error_names_the_key():
    assert str(images.InvalidBlobKeyError("abc")) == "InvalidBlobKeyError: 'abc'"
    assert str(images.InvalidBlobKeyError()) == "InvalidBlobKeyError"


# --- Image construction ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error", [
    ({}, images.NotImageError),
    ({"image_data": b""}, images.NotImageError),
    ({"image_data": PNG_BYTES, "blob_key": "k"}, images.NotImageError),
    ({"blob_key": "k", "filename": "/gs/b/o"}, images.NotImageError),
    ({"filename": "bucket/object"}, images.BadRequestError),
    ({"image_data": "text, not bytes"}, TypeError),
])
def test_an_image_needs_exactly_one_source(kwargs, error):
    with pytest.raises(error):
        images.Image(**kwargs)


def test_image_data_over_32_mb_is_too_large():
    with pytest.raises(images.LargeImageError, match="33554433 bytes"):
        images.Image(b"\0" * (images.MAX_REQUEST_SIZE + 1))


def test_a_blob_info_like_object_gives_its_key():
    class Info:
        def key(self):
            return "the-key"
    target = pb.ImageData()
    images.Image(blob_key=Info())._set_image(target)
    assert target == pb.ImageData(blob_key="the-key")


# --- transforms queue as App Engine's did -----------------------------------------------------------------------

def test_resize_queues_its_arguments():
    image = images.Image(PNG_BYTES)
    image.resize(100, 50, crop_to_fit=True, crop_offset_x=0.0, crop_offset_y=1.0)
    assert queued(image) == [pb.Transform(width=100, height=50, crop_to_fit=True, crop_offset_x=0.0,
                                          crop_offset_y=1.0, allow_stretch=False)]


def test_rotate_is_stored_as_a_quarter_turn_clockwise():
    image = images.Image(PNG_BYTES)
    image.rotate(-90)
    image.rotate(450)
    assert [t.rotate for t in queued(image)] == [270, 90]


def test_each_transform_queues_one_operation():
    image = images.Image(PNG_BYTES)
    image.horizontal_flip()
    image.vertical_flip()
    image.im_feeling_lucky()
    image.crop(0.25, 0.0, 0.75, 1.0)
    assert queued(image) == [pb.Transform(horizontal_flip=True), pb.Transform(vertical_flip=True),
                             pb.Transform(autolevels=True),
                             pb.Transform(crop_left_x=0.25, crop_top_y=0.0, crop_right_x=0.75, crop_bottom_y=1.0)]


def test_the_eleventh_transform_is_refused_and_the_ten_stay():
    image = images.Image(PNG_BYTES)
    for _ in range(10):
        image.horizontal_flip()
    with pytest.raises(images.BadRequestError, match="10 transforms have already been requested"):
        image.rotate(90)
    assert len(queued(image)) == 10


@pytest.mark.parametrize("args, kwargs, error", [
    (("10",), {}, TypeError),
    ((1.5,), {}, TypeError),
    ((-1, 10), {}, images.BadRequestError),
    ((0, 0), {}, images.BadRequestError),
    ((4001,), {}, images.BadRequestError),
    ((10, 4001), {}, images.BadRequestError),
    ((10,), {"crop_to_fit": True}, images.BadRequestError),
    ((10, 10), {"crop_to_fit": "yes"}, TypeError),
    ((0, 10), {"allow_stretch": True}, images.BadRequestError),
    ((10, 10), {"allow_stretch": 1}, TypeError),
    ((10, 10), {"crop_offset_x": 0}, TypeError),     # App Engine wanted exactly a float
    ((10, 10), {"crop_offset_y": 1.5}, images.BadRequestError),
])
def test_invalid_resize_arguments(args, kwargs, error):
    with pytest.raises(error):
        images.Image(PNG_BYTES).resize(*args, **kwargs)


@pytest.mark.parametrize("box, error", [
    ((0, 0, 1, 1), TypeError),
    ((0.5, 0.0, 0.5, 1.0), images.BadRequestError),
    ((0.0, 0.7, 1.0, 0.2), images.BadRequestError),
    ((-0.1, 0.0, 1.0, 1.0), images.BadRequestError),
    ((0.0, 0.0, 1.0, 1.1), images.BadRequestError),
])
def test_invalid_crop_arguments(box, error):
    with pytest.raises(error):
        images.Image(PNG_BYTES).crop(*box)


@pytest.mark.parametrize("degrees, error", [(45, images.BadRequestError), (90.0, TypeError), ("90", TypeError)])
def test_invalid_rotations(degrees, error):
    with pytest.raises(error):
        images.Image(PNG_BYTES).rotate(degrees)


def test_invalid_orientation_correction():
    with pytest.raises(images.BadRequestError):
        images.Image(PNG_BYTES).set_correct_orientation(5)
    with pytest.raises(images.BadRequestError):
        images.resize(PNG_BYTES, 10, correct_orientation=7)


# --- execute_transforms checks --------------------------------------------------------------------------------

def flipped() -> images.Image:
    image = images.Image(PNG_BYTES)
    image.horizontal_flip()
    return image


def test_nothing_queued_is_a_bad_request():
    with pytest.raises(images.BadRequestError, match="at least one transformation"):
        images.Image(PNG_BYTES).execute_transforms()


@pytest.mark.parametrize("kwargs, error", [
    ({"output_encoding": images.GIF}, images.BadRequestError),
    ({"output_encoding": 7}, images.BadRequestError),
    ({"output_encoding": images.JPEG, "quality": 0}, images.BadRequestError),
    ({"output_encoding": images.JPEG, "quality": 101}, images.BadRequestError),
    ({"output_encoding": images.JPEG, "quality": "high"}, TypeError),
    ({"transparent_substitution_rgb": "red"}, ValueError),
    ({"transparent_substitution_rgb": 1 << 32}, images.BadRequestError),
])
def test_invalid_output_settings(kwargs, error):
    with pytest.raises(error):
        flipped().execute_transforms(**kwargs)


def test_without_a_service_a_valid_call_is_unavailable():
    """The control for the checks above: a valid request does reach for the service."""
    from kiln import errors
    with pytest.raises(errors.UnavailableError, match="KILN_IMAGES_ADDR"):
        flipped().execute_transforms()


@pytest.mark.parametrize("call", [
    lambda: images.rotate(PNG_BYTES, 30),
    lambda: images.crop(PNG_BYTES, 0.5, 0.0, 0.2, 1.0),
    lambda: images.resize(PNG_BYTES),
    lambda: images.horizontal_flip(PNG_BYTES, output_encoding=images.BMP),
    lambda: images.im_feeling_lucky(PNG_BYTES, quality=500, output_encoding=images.WEBP),
])
def test_module_functions_check_before_calling(call):
    with pytest.raises(images.BadRequestError):
        call()


# --- composite -------------------------------------------------------------------------------------------------

def layer(**changes):
    base = {"image": PNG_BYTES, "x": 0, "y": 0, "opacity": 1.0, "anchor": images.TOP_LEFT}
    base.update(changes)
    return (base["image"], base["x"], base["y"], base["opacity"], base["anchor"])


@pytest.mark.parametrize("inputs, kwargs, error", [
    ([], {}, images.BadRequestError),
    ([layer()] * 17, {}, images.BadRequestError),
    ([layer()], {"width": 0}, images.BadRequestError),
    ([layer()], {"height": 4001}, images.BadRequestError),
    ([layer()], {"width": "10"}, TypeError),
    ([layer()], {"color": -1}, images.BadRequestError),
    ([layer()], {"color": 1 << 32}, images.BadRequestError),
    ([layer()], {"output_encoding": images.TIFF}, images.BadRequestError),
    ([layer(opacity=1)], {}, TypeError),
    ([layer(opacity=1.5)], {}, images.BadRequestError),
    ([layer(x=4001)], {}, images.BadRequestError),
    ([layer(y=-4001)], {}, images.BadRequestError),
    ([layer(x=1.0)], {}, TypeError),
    ([layer(anchor=9)], {}, images.BadRequestError),
    ([layer(image=b"")], {}, images.BadRequestError),
])
def test_invalid_composites(inputs, kwargs, error):
    args = {"width": 10, "height": 10, **kwargs}
    with pytest.raises(error):
        images.composite(inputs, **args)


def test_a_composite_sends_each_image_once_and_anchors_in_the_contracts_numbering():
    other = PNG_BYTES + b"\x01"
    request = images.composite_request([layer(anchor=images.BOTTOM_RIGHT, x=-3, opacity=0.25), layer(image=other),
                                        layer()], 20, 30, color=0xFF112233, output_encoding=images.JPEG,
                                       quality=70)
    assert [i.content for i in request.images] == [PNG_BYTES, other]
    assert [(l.source_index, l.anchor, l.x_offset, l.opacity) for l in request.layers] == [
        (0, pb.ANCHOR_BOTTOM_RIGHT, -3, 0.25), (1, pb.ANCHOR_TOP_LEFT, 0, 1.0), (0, pb.ANCHOR_TOP_LEFT, 0, 1.0)]
    assert (request.width, request.height, request.color) == (20, 30, 0xFF112233)
    assert request.output == pb.OutputSettings(format=pb.FORMAT_JPEG, quality=70)


def test_quality_is_sent_only_for_lossy_encodings():
    request = images.composite_request([layer()], 10, 10, output_encoding=images.PNG, quality=70)
    assert not request.output.HasField("quality")
