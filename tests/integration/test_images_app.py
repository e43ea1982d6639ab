"""An app using kiln.api.images end to end, as on App Engine: through the router, NATS, the runtime's sandbox and
images_svc, with Pillow only in the service — the app's process cannot import it."""

from __future__ import annotations

import io
import json
import textwrap

import pytest
from PIL import Image as PILImage

from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import json
    from kiln.api import images

    def thumbnail(data):
        image = images.Image(data)
        original = [image.width, image.height, image.format]
        image.resize(width=20)
        image.horizontal_flip()
        out = image.execute_transforms(output_encoding=images.PNG)
        return out, {"original": original, "result": [image.width, image.height, image.format]}

    def run(action, data):
        if action == "thumbnail":
            out, info = thumbnail(data)
            return "image/png", out, [("X-Info", json.dumps(info))]
        if action == "composite":
            out = images.composite([(data, 0, 0, 1.0, images.BOTTOM_RIGHT)], 60, 60, color=0xFFFFFFFF,
                                   output_encoding=images.JPEG, quality=90)
            return "image/jpeg", out, []
        if action == "histogram":
            red, green, blue = images.histogram(data)
            body = {"red255": red[255], "blue255": blue[255], "pixels": sum(red)}
        elif action == "broken":
            try:
                images.rotate(data, 90)
                body = {"error": None}
            except images.Error as exc:
                body = {"error": type(exc).__name__}
        elif action == "pillow":
            try:
                import PIL.Image
                body = {"importable": True}
            except ImportError:
                body = {"importable": False}
        else:
            raise ValueError(action)
        return "application/json", json.dumps(body).encode(), []

    def app(environ, start_response):
        size = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(size)
        kind, body, headers = run(environ["PATH_INFO"].strip("/"), data)
        start_response("200 OK", [("Content-Type", kind)] + headers)
        return [body]
''')


def quadrants() -> bytes:
    img = PILImage.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 255, 0), (20, 0, 40, 10))
    img.paste((0, 0, 255), (0, 10, 20, 20))
    img.paste((255, 255, 0), (20, 10, 40, 20))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def near(actual, expected, tolerance: int = 30) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("imagesapp"), {"main.py": MAIN}) as srv:
        yield srv


def post(server, action: str, data: bytes) -> tuple[dict[str, str], bytes]:
    status, headers, body = fetch(server, f"/{action}", data=data)
    assert status == 200, body
    return headers, body


def test_an_app_resizes_and_flips_an_uploaded_image(server):
    headers, body = post(server, "thumbnail", quadrants())
    img = PILImage.open(io.BytesIO(body)).convert("RGB")
    assert headers["Content-Type"] == "image/png" and img.size == (20, 10)
    assert near(img.getpixel((2, 2)), (0, 255, 0)) and near(img.getpixel((17, 7)), (0, 0, 255))
    assert json.loads(headers["X-Info"]) == {"original": [40, 20, 1], "result": [20, 10, 1]}


def test_an_app_composites_onto_a_canvas(server):
    _, body = post(server, "composite", quadrants())
    img = PILImage.open(io.BytesIO(body)).convert("RGB")
    assert img.size == (60, 60)
    assert near(img.getpixel((5, 5)), (255, 255, 255))     # the canvas
    assert near(img.getpixel((25, 45)), (255, 0, 0))       # the image's top-left quadrant, anchored bottom right
    assert near(img.getpixel((55, 55)), (255, 255, 0))


def test_an_app_reads_a_histogram(server):
    _, body = post(server, "histogram", quadrants())
    assert json.loads(body) == {"red255": 400, "blue255": 200, "pixels": 800}


def test_an_app_gets_app_engines_error_for_bad_data(server):
    _, body = post(server, "broken", b"this is not an image")
    assert json.loads(body) == {"error": "NotImageError"}


def test_pillow_stays_out_of_the_apps_process(server):
    _, body = post(server, "pillow", b"")
    assert json.loads(body) == {"importable": False}
