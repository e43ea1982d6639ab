"""Responses carrying ``X-AppEngine-BlobKey`` served through the whole stack under ``kiln dev``, on both storage
engines: the app's response names a blob, the router replaces the body with it from blobstore_svc (calling as the
app it routed to), with App Engine's content type, range, ETag and error rules (router/blobserve.py).

Blobs are put in with the service's CreateBlob as the app (as an upload through the router does). The apps are a
plain WSGI app writing the headers itself, the SDK's ``BlobstoreDownloadHandler.send_blob`` in Google's plain WSGI
sample form and under webapp2, and Google's Flask sample form (``headers["Content-Type"] = None``).
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import hashlib
import http.client
import os
import textwrap
import urllib.parse
from collections.abc import Iterator

import grpc
import pytest

from deploy.dev import DevOptions, DevServer
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln_platform import auth
from tests.integration.apps import request, wait_for

pytestmark = pytest.mark.nats

MB = 1024 * 1024

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: true

libraries:
- name: webapp2
  version: "3.0"
- name: flask
  version: "3.1"

handlers:
- url: /flask/.*
  script: flask_main.app
- url: /webapp2/.*
  script: webapp2_main.app
- url: /sdk/.*
  script: sdk_main.app
- url: /.*
  script: main.app
"""

# Writes the blob headers itself: ?key=, and optionally type=, range=, status=, etag=, cookie=.
MAIN = textwrap.dedent(r'''
    from urllib.parse import parse_qs

    def app(environ, start_response):
        q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}
        headers = [("X-AppEngine-BlobKey", q["key"])]
        if "type" in q:
            headers.append(("Content-Type", q["type"]))
        if "range" in q:
            headers.append(("X-AppEngine-BlobRange", q["range"]))
        if "etag" in q:
            headers.append(("ETag", q["etag"]))
        if "cookie" in q:
            headers.append(("Set-Cookie", "seen=1"))
        headers.append(("X-App-Header", "kept"))
        start_response(q.get("status", "200 OK"), headers)
        return [b"the app's own body, never sent"]
''')

# Google's plain WSGI blobstore sample's download handler (appengine/standard_python3/bundled-services/blobstore/
# wsgi), dispatching on the path instead of its router.
SDK_MAIN = textwrap.dedent(r'''
    import http
    from google.appengine.ext import blobstore

    class ViewPhotoHandler(blobstore.BlobstoreDownloadHandler):
        def get_photo(self, environ, photo_key):
            if not blobstore.get(photo_key):
                return "Photo key not found", http.HTTPStatus.NOT_FOUND, []
            return ("", http.HTTPStatus.OK, list(self.send_blob(environ, photo_key).items()))

        def get(self, environ):
            return self.get_photo(environ, environ["PATH_INFO"].rsplit("/", 1)[1])

    app = ViewPhotoHandler()
''')

# Google's Flask blobstore sample's download handler.
FLASK_MAIN = textwrap.dedent(r'''
    from flask import Flask, request
    from google.appengine.api import wrap_wsgi_app
    from google.appengine.ext import blobstore

    app = Flask(__name__)
    app.wsgi_app = wrap_wsgi_app(app.wsgi_app)

    class ViewPhotoHandler(blobstore.BlobstoreDownloadHandler):
        def get(self, photo_key):
            if not blobstore.get(photo_key):
                return "Photo key not found", 404
            else:
                headers = self.send_blob(request.environ, photo_key)

                # Prevent Flask from setting a default content-type.
                # GAE sets it to a guessed type if the header is not set.
                headers["Content-Type"] = None
                return "", headers

    @app.route("/flask/view_photo/<photo_key>")
    def view_photo(photo_key):
        return ViewPhotoHandler().get(photo_key)
''')

# A webapp2 handler using the SDK's send_blob, with a download name (save_as); wrapped for the bundled services,
# as Google's Python 3 runtime asks.
WEBAPP2_MAIN = textwrap.dedent(r'''
    import webapp2
    from google.appengine.api import wrap_wsgi_app
    from google.appengine.ext import blobstore

    class Download(webapp2.RequestHandler, blobstore.BlobstoreDownloadHandler):
        def get(self, key):
            info = blobstore.BlobInfo.get(key)
            headers = self.send_blob(self.request.environ, info, save_as=True)
            del self.response.headers["Content-Type"]
            self.response.headers.update(headers)

    app = wrap_wsgi_app(webapp2.WSGIApplication([(r"/webapp2/(.+)", Download)]))
''')

FILES = {"main.py": MAIN, "sdk_main.py": SDK_MAIN, "flask_main.py": FLASK_MAIN, "webapp2_main.py": WEBAPP2_MAIN}


def _serve(tmp_path_factory, storage: str, cassandra_hosts: str = "") -> Iterator[DevServer]:
    app_dir = tmp_path_factory.mktemp(f"blobserve-{storage}")
    (app_dir / "app.yaml").write_text(APP_YAML)
    for name, text in FILES.items():
        (app_dir / name).write_text(text)
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data", storage=storage,
                                  cassandra_hosts=cassandra_hosts, clear_datastore=bool(cassandra_hosts)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def server(request, tmp_path_factory):
    if request.param == "cassandra":
        yield from _serve(tmp_path_factory, "cassandra", request.getfixturevalue("cassandra_hosts"))
    else:
        yield from _serve(tmp_path_factory, "embedded")


@pytest.fixture(scope="module")
def put(server):
    channel = grpc.insecure_channel(server.addresses["blobstore_svc"])
    stub = blobstore_pb2_grpc.BlobstoreServiceStub(channel)

    def store(data: bytes, content_type: str = "text/plain", filename: str = "notes.txt", app: str = "") -> str:
        def messages():
            yield pb.CreateBlobRequest(content_type=content_type, filename=filename, data=data[:MB])
            for start in range(MB, len(data), MB):
                yield pb.CreateBlobRequest(data=data[start:start + MB])
        token = auth.mint_app_token(server.secrets["service"], app or server.app_id)
        return stub.CreateBlob(messages(), metadata=(("authorization", f"Bearer {token}"),),
                               timeout=120).info.blob_key
    yield store
    channel.close()


DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.fixture(scope="module")
def blob(put) -> str:
    return put(DATA, "application/x-kiln-test", "data.bin")


def get(server, key: str, *, method: str = "GET", headers: dict[str, str] | None = None,
        **params: str) -> tuple[int, dict[str, str], bytes]:
    return request(server, "/serve?" + urllib.parse.urlencode({"key": key, **params}), method=method,
                   headers=headers)


# --- the body and its content type ---------------------------------------------------------------------------

def test_the_body_is_the_blob_with_the_blobs_content_type(server, blob):
    status, headers, body = get(server, blob)
    assert (status, body, headers["content-type"], headers["content-length"]) == (
        200, DATA, "application/x-kiln-test", str(len(DATA)))


def test_both_blob_headers_are_removed_and_the_apps_others_kept(server, blob):
    _, headers, _ = get(server, blob, range="bytes=0-1")
    assert "x-appengine-blobkey" not in headers and "x-appengine-blobrange" not in headers
    assert headers["x-app-header"] == "kept"


def test_the_apps_content_type_wins(server, blob):
    status, headers, body = get(server, blob, type="image/png")
    assert (status, headers["content-type"], body) == (200, "image/png", DATA)


def test_app_engines_automatic_content_type_means_the_blobs(server, blob):
    _, headers, _ = get(server, blob, type="application/vnd.google.appengine.auto")
    assert headers["content-type"] == "application/x-kiln-test"


def test_head_gets_the_headers_without_the_body(server, blob):
    status, headers, body = get(server, blob, method="HEAD")
    assert (status, headers["content-length"], headers["content-type"], body) == (
        200, str(len(DATA)), "application/x-kiln-test", b"")


def test_a_cookie_setting_blob_response_stays_private(server, blob):
    _, headers, body = get(server, blob, cookie="1")
    assert body == DATA and "private" in headers["cache-control"] and headers["set-cookie"].startswith("seen=1")


# --- ranges --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "start", "end"), [
    ("bytes=10-19", 10, 20), ("bytes=1000-", 1000, 1024), ("bytes=-5", 1019, 1024), ("bytes=1020-5000", 1020, 1024),
    ("bytes=-5000", 0, 1024),
])
def test_the_apps_blob_range_gives_206_with_content_range(server, blob, value, start, end):
    status, headers, body = get(server, blob, range=value)
    assert (status, body, headers["content-range"], headers["content-length"]) == (
        206, DATA[start:end], f"bytes {start}-{end - 1}/{len(DATA)}", str(end - start))


@pytest.mark.parametrize("value", ["bytes=2-4", "bytes=1022-", "bytes=-2"])
def test_the_clients_range_gives_206(server, blob, value):
    start, end = {"bytes=2-4": (2, 5), "bytes=1022-": (1022, 1024), "bytes=-2": (1022, 1024)}[value]
    status, headers, body = get(server, blob, headers={"Range": value})
    assert (status, body, headers["content-range"]) == (206, DATA[start:end], f"bytes {start}-{end - 1}/1024")


def test_the_apps_blob_range_wins_over_the_clients(server, blob):
    status, _, body = get(server, blob, range="bytes=0-0", headers={"Range": "bytes=5-9"})
    assert (status, body) == (206, DATA[:1])


@pytest.mark.parametrize("value", ["bytes=1024-", "bytes=5000-6000", "bytes=0-1,5-6", "bytes=9-3", "bytes=-0",
                                   "items=0-5", "bytes=x-"])
def test_a_range_past_the_end_or_unreadable_gets_416_with_the_size(server, blob, value):
    status, headers, body = get(server, blob, headers={"Range": value})
    assert (status, headers["content-range"], body) == (416, "bytes */1024", b"")
    assert "content-type" not in headers


def test_if_range_with_another_etag_serves_the_whole_blob(server, blob):
    status, _, body = get(server, blob, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert (status, body) == (200, DATA)


# --- validators and conditional requests ---------------------------------------------------------------------

def test_the_etag_is_the_blobs_md5_and_last_modified_its_creation(server, blob):
    _, headers, _ = get(server, blob)
    assert headers["etag"] == f'"{hashlib.md5(DATA).hexdigest()}"'
    assert email.utils.parsedate_to_datetime(headers["last-modified"]).year >= 2026


def test_if_none_match_with_the_etag_gets_304(server, blob):
    etag = get(server, blob)[1]["etag"]
    status, headers, body = get(server, blob, headers={"If-None-Match": f'"other", {etag}'})
    assert (status, headers["etag"], body) == (304, etag, b"")


def test_if_none_match_with_another_etag_gets_the_blob(server, blob):
    status, _, body = get(server, blob, headers={"If-None-Match": '"other"'})
    assert (status, body) == (200, DATA)


def test_if_modified_since_after_its_creation_gets_304(server, blob):
    last_modified = get(server, blob)[1]["last-modified"]
    assert get(server, blob, headers={"If-Modified-Since": last_modified})[0] == 304
    assert get(server, blob, headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})[0] == 200


def test_the_apps_own_etag_is_kept_and_compared(server, blob):
    _, headers, _ = get(server, blob, etag='"v7"')
    assert headers["etag"] == '"v7"'
    assert get(server, blob, etag='"v7"', headers={"If-None-Match": '"v7"'})[0] == 304


# --- what cannot be served -----------------------------------------------------------------------------------

def test_another_apps_blob_gets_an_empty_500(server, put):
    theirs = put(b"another app's secret data", app="someone-else")
    status, headers, body = get(server, theirs)
    assert (status, body) == (500, b"")
    assert "x-app-header" not in headers


def test_a_missing_blob_gets_an_empty_500(server):
    assert get(server, "A" * 43)[0:3:2] == (500, b"")
    assert get(server, "not a key!")[0:3:2] == (500, b"")


def test_a_status_other_than_200_with_a_blob_key_gets_500(server, blob):
    status, _, body = get(server, blob, status="404 Not Found")
    assert (status, body) == (500, b"")


# --- size, concurrency and the request log -------------------------------------------------------------------

def test_a_40_mb_blob_is_served_whole_past_the_response_limit(server, put):
    data = os.urandom(40 * MB)
    key = put(data, "application/octet-stream")
    status, headers, body = get(server, key)
    assert (status, headers["content-length"], hashlib.sha256(body).digest()) == (
        200, str(len(data)), hashlib.sha256(data).digest())


def test_twenty_concurrent_range_downloads_each_get_their_range(server, put):
    data = os.urandom(3 * MB + 17)
    key = put(data)
    ranges = [(n * 150_001, n * 150_001 + 500_000) for n in range(20)]

    def one(span: tuple[int, int]) -> tuple[int, bytes]:
        status, _, body = get(server, key, headers={"Range": f"bytes={span[0]}-{span[1] - 1}"})
        return status, body

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, ranges))
    assert results == [(206, data[a:b]) for a, b in ranges]


def test_the_request_log_records_the_status_and_the_bytes_sent(server, blob):
    marker = os.urandom(6).hex()
    get(server, blob, range="bytes=0-99", marker=marker)
    channel = grpc.insecure_channel(server.addresses["logs_svc"])
    token = auth.mint_app_token(server.secrets["service"], server.app_id)
    stub = logs_pb2_grpc.LogsServiceStub(channel)

    def logged() -> list[logs_pb2.RequestLog]:
        found = stub.Query(logs_pb2.QueryRequest(page_size=1000), metadata=(("authorization", f"Bearer {token}"),),
                           timeout=30)
        return [r for r in found.logs if marker in r.resource]
    try:
        wait_for(logged, 30)
        record = logged()[0]
    finally:
        channel.close()
    assert (record.status, record.response_size) == (206, 100)


# --- Google's SDK --------------------------------------------------------------------------------------------

def test_the_sdks_send_blob_in_googles_wsgi_sample_serves_the_blob(server, put):
    key = put(b"\x89PNG fake photo", "image/png", "photo.png")
    status, headers, body = request(server, f"/sdk/view_photo/{key}")
    assert (status, headers["content-type"], body) == (200, "image/png", b"\x89PNG fake photo")


def test_the_sdks_send_blob_passes_the_clients_range(server, put):
    key = put(b"0123456789", "text/plain")
    status, headers, body = request(server, f"/sdk/view_photo/{key}", headers={"Range": "bytes=3-5"})
    assert (status, headers["content-range"], body) == (206, "bytes 3-5/10", b"345")


def test_googles_flask_sample_serves_the_blob_with_its_type(server, put):
    key = put(b"GIF89a fake", "image/gif", "photo.gif")
    status, headers, body = request(server, f"/flask/view_photo/{key}")
    assert (status, headers["content-type"], body) == (200, "image/gif", b"GIF89a fake")


def test_the_flask_samples_missing_photo_is_its_404(server):
    status, _, body = request(server, f"/flask/view_photo/{'A' * 43}")
    assert (status, body) == (404, b"Photo key not found")


def test_webapp2_send_blob_with_save_as_names_the_download(server, put):
    key = put(b"report body", "text/csv", "report.csv")
    status, headers, body = request(server, f"/webapp2/{key}")
    assert (status, headers["content-type"], body) == (200, "text/csv", b"report body"), body
    assert 'filename="report.csv"' in headers["content-disposition"]


def test_a_keep_alive_connection_serves_blobs_then_other_responses(server, blob):
    address, _, port = server.addresses["router"].rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=60)
    try:
        for path in (f"/serve?key={blob}", f"/serve?key={blob}&range=bytes%3D0-3", "/flask/view_photo/x"):
            conn.request("GET", path, headers={"Host": f"localhost:{port}"})
            resp = conn.getresponse()
            resp.read()
        assert resp.status == 404
    finally:
        conn.close()
