"""Image serving URLs end to end under ``kiln dev``, on both storage engines: an app makes them with kiln.api.images
and Google's SDK (through the router, NATS, the runtime and images_svc, which reads blobstore_svc as the app), and
the router serves ``/_ah/img/...`` itself through images_svc. Blobs are put in with blobstore_svc's CreateBlob as
the app (as an upload through the router does)."""

from __future__ import annotations

import concurrent.futures
import io
import json
import textwrap
import urllib.parse

import grpc
import pytest
from PIL import Image as PILImage

from deploy.dev import DevOptions, DevServer
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln.pb.images.v1 import images_pb2, images_pb2_grpc
from kiln_platform import auth
from tests.integration.apps import THREADSAFE_YAML, fetch, request

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import json
    from urllib.parse import parse_qs
    from kiln.api import images
    from google.appengine.api import images as gae_images

    def run(action, key):
        if action == "url":
            return {"url": images.get_serving_url(key)}
        if action == "url_crop":
            return {"url": images.get_serving_url(key, size=32, crop=True)}
        if action == "sdk_url":
            return {"url": gae_images.get_serving_url(key, size=32)}
        if action == "delete":
            images.delete_serving_url(key)
            return {}
        if action == "sdk_delete":
            gae_images.delete_serving_url(key)
            return {}
        if action in ("url_error", "sdk_url_error"):
            module = images if action == "url_error" else gae_images
            try:
                module.get_serving_url(key)
            except module.Error as exc:
                return {"error": type(exc).__name__}
            return {"error": None}
        if action in ("transform", "sdk_transform"):
            module = images if action == "transform" else gae_images
            image = module.Image(blob_key=key)
            image.resize(width=10)
            image.execute_transforms(output_encoding=module.PNG)
            return {"size": [image.width, image.height]}
        raise ValueError(action)

    def app(environ, start_response):
        key = parse_qs(environ.get("QUERY_STRING", "")).get("key", [""])[0]
        body = json.dumps(run(environ["PATH_INFO"].strip("/"), key)).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
''')


@pytest.fixture(scope="module", params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def server(request, tmp_path_factory):
    app_dir = tmp_path_factory.mktemp(f"imgserve-{request.param}")
    (app_dir / "app.yaml").write_text(THREADSAFE_YAML)
    (app_dir / "main.py").write_text(MAIN)
    options: dict[str, str] = {}
    if request.param == "cassandra":
        options = {"storage": "cassandra", "cassandra_hosts": request.getfixturevalue("cassandra_hosts")}
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data", **options))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def blobs(server):
    channel = grpc.insecure_channel(server.addresses["blobstore_svc"])
    yield blobstore_pb2_grpc.BlobstoreServiceStub(channel)
    channel.close()


def as_app(server, app: str | None = None) -> tuple[tuple[str, str], ...]:
    token = auth.mint_app_token(server.secrets["service"], app or server.app_id)
    return (("authorization", f"Bearer {token}"),)


def put(server, blobs, data: bytes, *, app: str | None = None) -> str:
    message = pb.CreateBlobRequest(content_type="image/png", filename="picture", data=data)
    return blobs.CreateBlob(iter([message]), metadata=as_app(server, app), timeout=30).info.blob_key


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    """Left half red, right half blue."""
    img = PILImage.new("RGB", (width, height), (255, 0, 0))
    img.paste((0, 0, 255), (width // 2, 0, width, height))
    out = io.BytesIO()
    img.save(out, fmt)
    return out.getvalue()


def ask(server, action: str, key: str = "") -> dict:
    status, _, body = fetch(server, f"/{action}?key={urllib.parse.quote(key)}")
    assert status == 200, body
    return json.loads(body)


def path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def served(server, path: str, **kw) -> tuple[int, dict[str, str], bytes]:
    return request(server, path, **kw)


def decoded(body: bytes) -> PILImage.Image:
    return PILImage.open(io.BytesIO(body))


def test_get_serving_url_is_on_the_apps_host_and_serves_the_image_at_original_size(server, blobs):
    data = picture(100, 60)
    key = put(server, blobs, data)
    url = ask(server, "url", key)["url"]
    assert url == f"{server.url.rstrip('/')}/_ah/img/{key}"
    status, headers, body = served(server, path_of(url))
    assert status == 200
    assert headers["content-type"] == "image/png"
    assert body == data  # at its original size, uncut: the blob's own bytes


def test_size_option_scales_the_longest_side(server, blobs):
    key = put(server, blobs, picture(100, 60))
    path = path_of(ask(server, "url", key)["url"])
    status, _, body = served(server, path + "=s32")
    assert status == 200
    image = decoded(body)
    assert image.size == (32, 19)
    assert image.convert("RGB").getpixel((2, 10)) == (255, 0, 0)
    assert image.convert("RGB").getpixel((29, 10)) == (0, 0, 255)


def test_crop_option_serves_a_centred_square(server, blobs):
    key = put(server, blobs, picture(120, 60))
    url = ask(server, "url_crop", key)["url"]
    assert url.endswith("=s32-c")
    status, _, body = served(server, path_of(url))
    assert status == 200
    image = decoded(body).convert("RGB")
    assert image.size == (32, 32)
    # The centre 60x60 of a half red, half blue 120x60 picture: still red on the left, blue on the right.
    assert image.getpixel((3, 16)) == (255, 0, 0)
    assert image.getpixel((28, 16)) == (0, 0, 255)


def test_no_option_serves_at_most_512_pixels(server, blobs):
    key = put(server, blobs, picture(1000, 500))
    path = path_of(ask(server, "url", key)["url"])
    assert decoded(served(server, path)[2]).size == (512, 256)
    assert decoded(served(server, path + "=s0")[2]).size == (1000, 500)


def test_jpeg_sources_are_served_as_jpeg(server, blobs):
    key = put(server, blobs, picture(800, 600, "JPEG"))
    status, headers, body = served(server, path_of(ask(server, "url", key)["url"]) + "=s100")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert decoded(body).format == "JPEG"


def test_the_sdks_get_serving_url_appends_the_size_and_is_served(server, blobs):
    key = put(server, blobs, picture(100, 60))
    url = ask(server, "sdk_url", key)["url"]
    assert url == f"{server.url.rstrip('/')}/_ah/img/{key}=s32"
    status, _, body = served(server, path_of(url))
    assert status == 200 and decoded(body).size == (32, 19)


def test_delete_serving_url_makes_the_url_answer_404(server, blobs):
    key = put(server, blobs, picture(50, 50))
    path = path_of(ask(server, "url", key)["url"])
    assert served(server, path + "=s20")[0] == 200  # cached now: the deletion must still stop it
    ask(server, "delete", key)
    assert served(server, path)[0] == 404
    assert served(server, path + "=s20")[0] == 404


def test_the_sdks_delete_serving_url_makes_the_url_answer_404(server, blobs):
    key = put(server, blobs, picture(50, 50))
    path = path_of(ask(server, "sdk_url", key)["url"])
    assert served(server, path)[0] == 200
    ask(server, "sdk_delete", key)
    assert served(server, path)[0] == 404


def test_a_blob_without_a_serving_url_is_not_served(server, blobs):
    key = put(server, blobs, picture(50, 50))
    assert served(server, f"/_ah/img/{key}")[0] == 404
    assert served(server, "/_ah/img/" + "A" * 43)[0] == 404


def test_deleting_the_blob_stops_its_serving_url(server, blobs):
    key = put(server, blobs, picture(50, 50))
    path = path_of(ask(server, "url", key)["url"])
    blobs.DeleteBlobs(pb.DeleteBlobsRequest(blob_keys=[key]), metadata=as_app(server), timeout=30)
    assert served(server, path)[0] == 404


def test_a_blob_that_is_not_an_image_raises_transformation_error(server, blobs):
    key = put(server, blobs, b"plain text, not a picture")
    assert ask(server, "url_error", key) == {"error": "TransformationError"}
    assert ask(server, "sdk_url_error", key) == {"error": "TransformationError"}
    assert served(server, f"/_ah/img/{key}")[0] == 404  # nothing was made


def test_another_apps_blob_key_is_refused_and_never_served(server, blobs):
    key = put(server, blobs, picture(50, 50), app="someone-else")
    assert ask(server, "url_error", key) == {"error": "InvalidBlobKeyError"}
    assert ask(server, "sdk_url_error", key) == {"error": "InvalidBlobKeyError"}
    # Even with a URL the other app made itself, this app's host does not serve that app's blob.
    channel = grpc.insecure_channel(server.addresses["images_svc"])
    try:
        images_pb2_grpc.ImagesServiceStub(channel).GetServingUrl(
            images_pb2.GetServingUrlRequest(blob_key=key), metadata=as_app(server, "someone-else"), timeout=30)
    finally:
        channel.close()
    assert served(server, f"/_ah/img/{key}")[0] == 404


def test_bad_options_get_400(server, blobs):
    key = put(server, blobs, picture(50, 50))
    path = path_of(ask(server, "url", key)["url"])
    assert served(server, path + "=x12")[0] == 400
    assert served(server, path + "=s1601")[0] == 400
    assert served(server, path + "=s1600")[0] == 200


def test_served_images_carry_cache_control_and_a_strong_etag_that_answers_304(server, blobs):
    key = put(server, blobs, picture(60, 40))
    path = path_of(ask(server, "url", key)["url"]) + "=s20"
    status, headers, _ = served(server, path)
    assert status == 200
    assert headers["cache-control"].startswith("public, max-age=86400")
    tag = headers["etag"]
    assert tag.startswith('"') and not tag.startswith("W/")
    again, again_headers, body = served(server, path, headers={"If-None-Match": tag})
    assert (again, body, again_headers["etag"]) == (304, b"", tag)
    other = served(server, path_of(ask(server, "url", key)["url"]) + "=s21")[1]["etag"]
    assert other != tag


def test_head_answers_the_headers_without_the_image(server, blobs):
    key = put(server, blobs, picture(60, 40))
    path = path_of(ask(server, "url", key)["url"])
    status, headers, body = served(server, path, method="HEAD")
    assert (status, body, headers["content-type"]) == (200, b"", "image/png")
    assert served(server, path, method="POST", body=b"")[0] == 405


def test_image_from_blob_key_transforms_with_kiln_api_and_the_sdk(server, blobs):
    key = put(server, blobs, picture(100, 60))
    assert ask(server, "transform", key) == {"size": [10, 6]}
    assert ask(server, "sdk_transform", key) == {"size": [10, 6]}


def test_twenty_requests_of_different_sizes_at_once_each_get_their_size(server, blobs):
    key = put(server, blobs, picture(400, 200))
    path = path_of(ask(server, "url", key)["url"])
    sizes = list(range(10, 210, 10))

    def one(size: int) -> tuple[int, tuple[int, int]]:
        status, _, body = served(server, f"{path}=s{size}")
        return status, decoded(body).size

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, sizes))
    assert results == [(200, (s, s // 2)) for s in sizes]
