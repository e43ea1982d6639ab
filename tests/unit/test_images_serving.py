"""Image serving URLs without sockets: the options and their limits, what each option makes of an image, the ETag
rule, the bounded result cache, and the router's reading of a serving URL's path."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from images_svc import ops, serving
from images_svc.errors import BadTransformDataError
from router import imageserve


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (0, 128, 0)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("size", [-1, 1601, 5000])
def test_a_size_outside_0_to_1600_is_bad_transform_data(size):
    with pytest.raises(BadTransformDataError, match="0 to 1600"):
        serving.Options(size, False)


def test_crop_without_a_size_is_bad_transform_data():
    with pytest.raises(BadTransformDataError, match="needs a size"):
        serving.Options(None, True)


@pytest.mark.parametrize("width, height, options, steps", [
    (300, 200, serving.Options(None, False), []),                           # small: as it is
    (1000, 500, serving.Options(None, False), [ops.Resize(512, 512)]),      # no option: at most 512
    (1000, 500, serving.Options(0, False), []),                             # =s0: original size
    (100, 50, serving.Options(200, False), [ops.Resize(200, 200)]),         # =s200: longest side 200
    (100, 50, serving.Options(32, True), [ops.Resize(32, 32, crop_to_fit=True)]),
    (40, 40, serving.Options(0, True), []),                                 # =s0-c of a square: as it is
])
def test_each_option_makes_its_transforms(width, height, options, steps):
    assert serving.steps_for(width, height, options) == steps


def test_s0_c_keeps_the_centred_square_at_the_original_scale():
    (crop,) = serving.steps_for(200, 100, serving.Options(0, True))
    assert crop == ops.Crop(0.25, 0.0, 0.75, 1.0)


def test_an_image_served_as_it_is_is_the_blobs_own_bytes():
    data = png(30, 20)
    assert serving.render(data, serving.Options(None, False), max_pixels=10**6, draft=True) == serving.Served(
        data, "image/png")


def test_a_resized_png_is_served_as_png_of_the_asked_size():
    result = serving.render(png(300, 100), serving.Options(30, False), max_pixels=10**6, draft=True)
    assert result.content_type == "image/png"
    assert PILImage.open(io.BytesIO(result.content)).size == (30, 10)


def test_the_etag_is_strong_and_differs_by_content_and_options():
    tag = serving.etag("abc", serving.Options(32, False))
    assert tag.startswith('"') and tag.endswith('"')
    assert tag == serving.etag("abc", serving.Options(32, False))
    assert tag != serving.etag("abd", serving.Options(32, False))
    assert tag != serving.etag("abc", serving.Options(32, True))
    assert tag != serving.etag("abc", serving.Options(None, False))


@pytest.mark.parametrize("header, found", [('"x"', True), ('"y", "x"', True), ('W/"x"', True), ("*", True),
                                           ('"y"', False), ("", False)])
def test_if_none_match_names_the_tag(header, found):
    assert serving.matches(header, '"x"') is found


def test_the_result_cache_drops_the_least_recently_used_past_its_bound():
    cache = serving.ResultCache(800)
    a, b = (("app", k, serving.Options(1, False)) for k in "ab")
    cache.put(a, serving.Served(b"1" * 100, "image/png"))
    cache.put(b, serving.Served(b"2" * 100, "image/png"))
    assert cache.get(a) is not None  # a is now the most recently used
    for k in range(7):  # 900 bytes offered: one entry must go
        cache.put(("app", f"k{k}", serving.Options(1, False)), serving.Served(b"3" * 100, "image/png"))
    assert cache.held_bytes == 800
    assert cache.get(b) is None
    assert cache.get(a) is not None


def test_the_result_cache_keeps_no_image_over_an_eighth_of_its_bound():
    cache = serving.ResultCache(800)
    key = ("app", "big", serving.Options(1, False))
    cache.put(key, serving.Served(b"x" * 101, "image/png"))
    assert cache.get(key) is None and cache.held_bytes == 0


@pytest.mark.parametrize("path, size, crop", [("/_ah/img/KEY", None, False), ("/_ah/img/KEY=s32", 32, False),
                                              ("/_ah/img/KEY=s32-c", 32, True), ("/_ah/img/KEY=s0", 0, False)])
def test_the_router_reads_the_serving_id_and_options(path, size, crop):
    request = imageserve.parse(path)
    assert request.serving_id == "KEY"
    assert (request.size if request.HasField("size") else None, request.crop) == (size, crop)


@pytest.mark.parametrize("path", ["/_ah/img/", "/_ah/img/KEY=", "/_ah/img/KEY=x32", "/_ah/img/KEY=s",
                                  "/_ah/img/KEY=s32-x", "/_ah/img/KEY=s99999", "/_ah/img/a/b"])
def test_the_router_refuses_other_options(path):
    with pytest.raises(imageserve.BadImageUrlError):
        imageserve.parse(path)
