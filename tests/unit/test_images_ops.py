"""images_svc.ops: the validation and geometry of transforms and composites, and the service's reading of the
proto, without Pillow or sockets."""

from __future__ import annotations

import pytest

from images_svc import errors as svc_errors
from images_svc import ops
from images_svc.errors import BadTransformDataError
from images_svc.service import layer_from_proto, op_from_proto, output_from_proto, transforms_from_proto
from kiln import errors
from kiln.pb.images.v1 import images_pb2 as pb


# --- resize geometry ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, width, height, size", [
    ((400, 300), 200, 0, (200, 150)),     # width only: height follows
    ((400, 300), 0, 150, (200, 150)),     # height only: width follows
    ((400, 300), 200, 200, (200, 150)),   # both: the width is more restricting
    ((400, 300), 400, 100, (133, 100)),   # both: the height is more restricting (rounded down)
    ((1600, 1250), 200, 0, (200, 156)),   # 156.25 rounds down, as App Engine did
    ((100, 50), 400, 0, (400, 200)),      # enlarging is allowed
    ((10000, 1), 100, 0, (100, 1)),       # never below one pixel
])
def test_resize_keeps_the_aspect_ratio(source, width, height, size):
    plan = ops.plan_resize(source, ops.Resize(width, height))
    assert plan.size == size and plan.box == (0.0, 0.0, *map(float, source))


def test_allow_stretch_takes_the_exact_size_from_the_whole_image():
    plan = ops.plan_resize((400, 300), ops.Resize(100, 100, allow_stretch=True))
    assert plan.size == (100, 100) and plan.box == (0.0, 0.0, 400.0, 300.0)


@pytest.mark.parametrize("offset_x, box", [(0.0, (0.0, 0.0, 300.0, 300.0)), (0.5, (50.0, 0.0, 350.0, 300.0)),
                                           (1.0, (100.0, 0.0, 400.0, 300.0))])
def test_crop_to_fit_takes_a_window_the_offset_slides_across(offset_x, box):
    plan = ops.plan_resize((400, 300), ops.Resize(100, 100, crop_to_fit=True, offset_x=offset_x))
    assert plan.size == (100, 100) and plan.box == box


@pytest.mark.parametrize("offset_y, top", [(0.0, 0.0), (0.5, 50.0), (1.0, 100.0)])
def test_crop_to_fit_on_a_tall_image_slides_down(offset_y, top):
    plan = ops.plan_resize((300, 400), ops.Resize(100, 100, crop_to_fit=True, offset_y=offset_y))
    assert plan.box == (0.0, top, 300.0, top + 300.0)


def test_crop_to_fit_window_keeps_the_target_aspect():
    plan = ops.plan_resize((1000, 100), ops.Resize(200, 50, crop_to_fit=True))
    x0, y0, x1, y1 = plan.box
    assert (x1 - x0) / (y1 - y0) == pytest.approx(200 / 50) and (y0, y1) == (0.0, 100.0)


def test_a_follow_side_over_4000_is_refused_before_any_pixel_exists():
    with pytest.raises(BadTransformDataError, match="100x10000"):
        ops.plan_resize((10, 1000), ops.Resize(100, 0))


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 0, "height": 0}, "width or a height"),
    ({"width": 4001, "height": 0}, "between 0 and 4000"),
    ({"width": -1, "height": 10}, "between 0 and 4000"),
    ({"width": 10, "height": 0, "crop_to_fit": True}, "both width and height"),
    ({"width": 0, "height": 10, "allow_stretch": True}, "both width and height"),
    ({"width": 10, "height": 10, "offset_x": 1.5}, "crop_offset_x"),
    ({"width": 10, "height": 10, "offset_y": -0.1}, "crop_offset_y"),
    ({"width": 10, "height": 10, "offset_y": float("nan")}, "crop_offset_y"),
])
def test_invalid_resizes_are_bad_transform_data(kwargs, message):
    with pytest.raises(BadTransformDataError, match=message):
        ops.Resize(**kwargs)


# --- crop, rotate ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fractions, box", [
    ((0.0, 0.0, 1.0, 1.0), (0, 0, 40, 20)),
    ((0.5, 0.0, 1.0, 0.5), (20, 0, 40, 10)),
    ((0.25, 0.25, 0.75, 0.75), (10, 5, 30, 15)),
    ((0.1, 0.1, 0.3, 0.3), (4, 2, 12, 6)),         # 0.1 * 20 = 2 exactly; 0.3 * 40 = 12
    ((0.0, 0.0, 0.01, 0.01), (0, 0, 1, 1)),        # thinner than a pixel still keeps one
    ((0.99, 0.99, 1.0, 1.0), (39, 19, 40, 20)),
])
def test_crop_box_is_the_fractions_of_the_size(fractions, box):
    assert ops.crop_box((40, 20), ops.Crop(*fractions)) == box


@pytest.mark.parametrize("fractions, message", [
    ((0.5, 0.0, 0.5, 1.0), "left_x must be less than right_x"),
    ((0.0, 0.6, 1.0, 0.5), "top_y must be less than bottom_y"),
    ((-0.1, 0.0, 1.0, 1.0), "between 0.0 and 1.0"),
    ((0.0, 0.0, 1.2, 1.0), "between 0.0 and 1.0"),
])
def test_invalid_crops_are_bad_transform_data(fractions, message):
    with pytest.raises(BadTransformDataError, match=message):
        ops.Crop(*fractions)


@pytest.mark.parametrize("degrees, stored", [(0, 0), (90, 90), (450, 90), (-90, 270), (-180, 180), (720, 0)])
def test_rotation_is_normalised_to_a_quarter_turn(degrees, stored):
    assert ops.Rotate(degrees).degrees == stored


@pytest.mark.parametrize("degrees", [45, 1, -30, 91])
def test_rotation_must_be_a_multiple_of_90(degrees):
    with pytest.raises(BadTransformDataError, match="multiple of 90"):
        ops.Rotate(degrees)


def test_transform_count_is_one_to_ten():
    ops.check_transforms([ops.AutoLevels()] * ops.MAX_TRANSFORMS)
    with pytest.raises(BadTransformDataError, match="at most 10"):
        ops.check_transforms([ops.AutoLevels()] * (ops.MAX_TRANSFORMS + 1))
    with pytest.raises(BadTransformDataError, match="at least one"):
        ops.check_transforms([])


# --- EXIF orientation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation, steps", [
    (1, []),
    (2, [ops.Flip(horizontal=True)]),
    (3, [ops.Rotate(180)]),
    (4, [ops.Flip(horizontal=False)]),
    (5, [ops.Rotate(90), ops.Flip(horizontal=True)]),
    (6, [ops.Rotate(90)]),
    (7, [ops.Rotate(270), ops.Flip(horizontal=True)]),
    (8, [ops.Rotate(270)]),
    (9, []),
])
def test_orientation_becomes_the_transforms_that_set_the_image_upright(orientation, steps):
    assert ops.orientation_ops(orientation, (40, 20)) == steps


def test_an_image_taller_than_wide_is_not_reoriented():
    assert ops.orientation_ops(6, (20, 40)) == []


# --- JPEG draft planning -------------------------------------------------------------------------------------

def test_a_downscale_decodes_at_twice_the_output_size():
    assert ops.draft_request((1600, 1250), [ops.Resize(200, 0)], 2.0) == (400, 312)


def test_a_crop_to_fit_asks_for_enough_of_the_window():
    assert ops.draft_request((1600, 1000), [ops.Resize(100, 100, crop_to_fit=True)], 2.0) == (320, 200)


def test_a_quarter_turn_before_the_resize_swaps_the_request():
    assert ops.draft_request((1600, 1250), [ops.Rotate(90), ops.Resize(0, 200)], 2.0) == (400, 312)


@pytest.mark.parametrize("steps", [[ops.Resize(800, 0)], [ops.Crop(0.0, 0.0, 0.5, 0.5), ops.Resize(100, 0)],
                                   [ops.AutoLevels(), ops.Resize(100, 0)], [ops.Rotate(90)]])
def test_no_draft_when_nothing_is_gained_or_a_crop_comes_first(steps):
    assert ops.draft_request((1600, 1250), steps, 2.0) is None


# --- composite geometry ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("anchor, origin", [
    (0, (0, 0)), (1, (40, 0)), (2, (80, 0)),
    (3, (0, 30)), (4, (40, 30)), (5, (80, 30)),
    (6, (0, 60)), (7, (40, 60)), (8, (80, 60)),
])
def test_anchor_points_meet_on_the_canvas(anchor, origin):
    assert ops.anchor_origin(anchor, (100, 80), (20, 20), (0, 0)) == origin


def test_offsets_move_from_the_anchor_and_odd_gaps_round_down():
    assert ops.anchor_origin(4, (100, 80), (21, 21), (5, -7)) == (5 + 39, -7 + 29)


def test_a_layer_larger_than_the_canvas_centres_with_negative_origin():
    assert ops.anchor_origin(4, (10, 10), (30, 20), (0, 0)) == (-10, -5)


@pytest.mark.parametrize("origin, expected", [
    ((0, 0), ((0, 0, 10, 10), (0, 0))),
    ((-5, -3), ((5, 3, 10, 10), (0, 0))),
    ((95, 75), ((0, 0, 5, 5), (95, 75))),
    ((100, 0), None),
    ((0, -10), None),
])
def test_layers_are_clipped_to_the_canvas(origin, expected):
    assert ops.clip_layer(origin, (10, 10), (100, 80)) == expected


@pytest.mark.parametrize("argb, rgba", [(0, (0, 0, 0, 0)), (0xFF00FF00, (0, 255, 0, 255)),
                                        (0x80112233, (0x11, 0x22, 0x33, 0x80)), (-1, (255, 255, 255, 255))])
def test_canvas_colour_is_argb(argb, rgba):
    assert ops.argb_to_rgba(argb) == rgba


@pytest.mark.parametrize("kwargs, message", [
    ({"x_offset": 4001}, "offsets"), ({"y_offset": -4001}, "offsets"), ({"opacity": 1.01}, "opacity"),
    ({"anchor": 9}, "anchor"), ({"anchor": -1}, "anchor"),
])
def test_invalid_layers_are_bad_transform_data(kwargs, message):
    with pytest.raises(BadTransformDataError, match=message):
        ops.Layer(**{"source": 0, "x_offset": 0, "y_offset": 0, "opacity": 1.0, "anchor": 0, **kwargs})


@pytest.mark.parametrize("width, height, layers, sources, message", [
    (0, 10, 1, 1, "canvas"), (10, 4001, 1, 1, "canvas"), (10, 10, 0, 1, "at least one layer"),
    (10, 10, 17, 1, "at most 16"), (10, 10, 1, 0, "names no image"),
])
def test_invalid_canvases_are_bad_transform_data(width, height, layers, sources, message):
    layer = ops.Layer(0, 0, 0, 1.0, 0)
    with pytest.raises(BadTransformDataError, match=message):
        ops.check_canvas(width, height, [layer] * layers, sources)


# --- format sniffing -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head, name", [
    (b"\xff\xd8\xff\xe0", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF89a", "GIF"), (b"GIF87a", "GIF"),
    (b"BM\x00\x00", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x01\x00", "ICO"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"), (b"<html>", None), (b"", None), (b"RIFF\x00\x00\x00\x00WAVE", None),
])
def test_sniff_names_the_format_the_bytes_claim(head, name):
    assert ops.sniff(head) == name


# --- the service's reading of the proto -------------------------------------------------------------------------

def test_each_proto_transform_becomes_one_operation():
    assert op_from_proto(pb.Transform(width=10)) == ops.Resize(10, 0)
    assert op_from_proto(pb.Transform(rotate=-90)) == ops.Rotate(270)
    assert op_from_proto(pb.Transform(horizontal_flip=True)) == ops.Flip(horizontal=True)
    assert op_from_proto(pb.Transform(vertical_flip=True)) == ops.Flip(horizontal=False)
    assert op_from_proto(pb.Transform(autolevels=True)) == ops.AutoLevels()
    assert op_from_proto(pb.Transform(crop_right_x=0.5)) == ops.Crop(0.0, 0.0, 0.5, 1.0)


def test_unset_crop_offsets_centre_the_window():
    op = op_from_proto(pb.Transform(width=10, height=10, crop_to_fit=True))
    assert (op.offset_x, op.offset_y) == (0.5, 0.5)


@pytest.mark.parametrize("transform", [pb.Transform(), pb.Transform(rotate=90, vertical_flip=True),
                                       pb.Transform(width=10, autolevels=True)])
def test_a_proto_transform_must_set_exactly_one_operation(transform):
    with pytest.raises(BadTransformDataError, match="exactly one operation"):
        op_from_proto(transform)


def test_more_than_ten_proto_transforms_are_refused_before_parsing():
    with pytest.raises(BadTransformDataError, match="at most 10"):
        transforms_from_proto([pb.Transform()] * 11)   # empty transforms would fail parsing: never reached


@pytest.mark.parametrize("fmt, name", [(pb.FORMAT_UNSPECIFIED, "PNG"), (pb.FORMAT_PNG, "PNG"),
                                       (pb.FORMAT_JPEG, "JPEG"), (pb.FORMAT_WEBP, "WEBP")])
def test_output_formats(fmt, name):
    assert output_from_proto(pb.OutputSettings(format=fmt), None).format == name


@pytest.mark.parametrize("fmt", [pb.FORMAT_GIF, pb.FORMAT_BMP, pb.FORMAT_TIFF, pb.FORMAT_ICO])
def test_input_formats_are_not_outputs(fmt):
    with pytest.raises(BadTransformDataError, match="not an output encoding"):
        output_from_proto(pb.OutputSettings(format=fmt), None)


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_quality_is_1_to_100(quality):
    with pytest.raises(BadTransformDataError, match="quality"):
        output_from_proto(pb.OutputSettings(format=pb.FORMAT_JPEG, quality=quality), None)


def test_proto_anchors_count_from_one_and_opacity_defaults_to_opaque():
    layer = layer_from_proto(pb.CompositeLayer(anchor=pb.ANCHOR_BOTTOM_RIGHT))
    assert (layer.anchor, layer.opacity) == (8, 1.0)
    assert layer_from_proto(pb.CompositeLayer()).anchor == 0


# --- the error table ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, status, code", [
    (svc_errors.BadTransformDataError, "INVALID_ARGUMENT", "BAD_TRANSFORM_DATA"),
    (svc_errors.NotImageError, "INVALID_ARGUMENT", "NOT_IMAGE"),
    (svc_errors.BadImageDataError, "INVALID_ARGUMENT", "BAD_IMAGE_DATA"),
    (svc_errors.ImageTooLargeError, "INVALID_ARGUMENT", "IMAGE_TOO_LARGE"),
    (svc_errors.InvalidBlobKeyError, "INVALID_ARGUMENT", "INVALID_BLOB_KEY"),
    (svc_errors.ObjectNotFoundError, "NOT_FOUND", "OBJECT_NOT_FOUND"),
    (svc_errors.AccessDeniedError, "PERMISSION_DENIED", "ACCESS_DENIED"),
    (svc_errors.TransformationFailedError, "UNKNOWN", "UNSPECIFIED"),
])
def test_each_error_has_a_status_and_app_engines_code(cls, status, code):
    assert errors.code_for(cls("x")).grpc.name == status and cls.error_code == code
    assert f"IMAGES_ERROR_CODE_{code}" in pb.ImagesErrorCode.keys()
