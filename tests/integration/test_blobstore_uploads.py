"""Blobstore uploads through the whole stack under ``kiln dev``, on both storage engines: an app makes an upload
URL (kiln.api and Google's SDK), a client posts a multipart form to it, the router stores each file in
blobstore_svc (as the app its host routes to) and forwards the form to the success path with App Engine's
blob-info parts, which ``kiln.api.blobstore.get_uploads`` and the SDK's ``BlobstoreUploadHandler.get_uploads``
(from a webapp2 handler) read. Bad uploads get App Engine's status codes and leave nothing stored."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import socket
import textwrap
import urllib.parse

import grpc
import pytest

from deploy.dev import DevOptions, DevServer
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import auth
from tests.integration.apps import request, wait_for

pytestmark = pytest.mark.nats

APP_YAML = textwrap.dedent("""
    runtime: python27
    api_version: 1
    threadsafe: true
    libraries:
    - name: webapp2
      version: "2.5.2"
    handlers:
    - url: /sdk/.*
      script: sdkmain.app
    - url: /.*
      script: main.app
""")

# kiln.api: /url makes an upload URL (limits from the query), /done is its success path, /count and /read look at
# what is stored.
MAIN = textwrap.dedent(r'''
    import email.parser
    import email.policy
    import json
    from urllib.parse import parse_qs
    from kiln.api import blobstore

    def text_fields(environ):
        body = environ["wsgi.input"].read()
        form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + environ["CONTENT_TYPE"].encode() + b"\r\n\r\n" + body)
        return [[p.get_param("name", header="content-disposition"), p.get_content()]
                for p in form.iter_parts() if p.get_content_type() == "text/plain"]

    def answer(environ):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        path = environ["PATH_INFO"]
        if path == "/url":
            limits = {k: int(v[0]) for k, v in query.items() if k.startswith("max_")}
            return blobstore.create_upload_url(query.get("success", ["/done"])[0], **limits)
        if path == "/done":
            uploads = blobstore.get_uploads(environ)
            return {"method": environ["REQUEST_METHOD"], "query": environ.get("QUERY_STRING", ""),
                    "uploads": [{"key": str(u.key()), "field": name, "filename": u.filename, "size": u.size,
                                 "type": u.content_type, "md5": u.md5_hash}
                                for name in ("file", "other", "")
                                for u in (blobstore.get_uploads(environ, name) if name else [])],
                    "count": len(uploads), "fields": text_fields(environ)}
        if path == "/count":
            return len(list(blobstore.BlobInfo.all()))
        if path == "/read":
            reader = blobstore.BlobReader(query["key"][0], buffer_size=blobstore.MAX_BLOB_FETCH_SIZE)
            return hashlib_md5(reader.read())
        raise ValueError(path)

    def hashlib_md5(data):
        import hashlib
        return hashlib.md5(data).hexdigest()

    def app(environ, start_response):
        found = answer(environ)
        body = found.encode() if isinstance(found, str) else json.dumps(found).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
''')

# Google's SDK from webapp2, as a python27 app written for App Engine does it.
SDKMAIN = textwrap.dedent(r'''
    import json
    import webapp2
    from google.appengine.ext import blobstore

    class Url(webapp2.RequestHandler):
        def get(self):
            self.response.write(blobstore.create_upload_url("/sdk/done?from=sdk"))

    class Done(webapp2.RequestHandler):
        def post(self):
            uploads = blobstore.BlobstoreUploadHandler().get_uploads(self.request.environ)
            stored = blobstore.BlobInfo.get([u.key() for u in uploads])
            self.response.headers["Content-Type"] = "application/json"
            self.response.write(json.dumps({
                "query": self.request.query_string,
                "uploads": [[str(u.key()), u.filename, u.size, u.content_type, u.md5_hash.decode()] for u in uploads],
                "stored_sizes": [s.size for s in stored]}))

    app = webapp2.WSGIApplication([("/sdk/url", Url), ("/sdk/done", Done)])
''')


@pytest.fixture(scope="module", params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def server(request, tmp_path_factory):
    app_dir = tmp_path_factory.mktemp(f"uploads{request.param}")
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(MAIN)
    (app_dir / "sdkmain.py").write_text(SDKMAIN)
    hosts = request.getfixturevalue("cassandra_hosts") if request.param == "cassandra" else ""
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data", storage=request.param,
                               cassandra_hosts=hosts))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def get(server: DevServer, path: str) -> bytes:
    status, _, body = request(server, path)
    assert status == 200, body
    return body


def upload_url(server: DevServer, **query: object) -> str:
    """The path of a new upload URL made by the kiln.api app (its host is the one the request came to)."""
    url = get(server, "/url?" + urllib.parse.urlencode(query)).decode()
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc == f"localhost:{server.addresses['router'].rpartition(':')[2]}"
    assert parts.path.startswith("/_ah/upload/")
    return parts.path


def form(files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]] = (),
         boundary: str = "kilntestboundary") -> tuple[bytes, str]:
    """A multipart/form-data body of ``files`` (field, filename, data) then ``fields``; and its Content-Type."""
    out = []
    for name, filename, data in files:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f"Content-Type: text/plain\r\n\r\n".encode() + data + b"\r\n")
    for name, value in fields:
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def post(server: DevServer, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    status, _, answer = request(server, path, method="POST", body=body, headers={"Content-Type": content_type})
    return status, answer


def stored_count(server: DevServer) -> int:
    return int(get(server, "/count"))


def read_md5(server: DevServer, key: str) -> str:
    return get(server, f"/read?key={key}").decode()


def test_one_file_is_stored_and_forwarded_as_its_blob_info(server):
    data = os.urandom(300_000)
    body, ctype = form([("file", "photo.bin", data)])
    status, answer = post(server, upload_url(server, success="/done?x=1"), body, ctype)
    assert status == 200, answer
    done = json.loads(answer)
    assert (done["method"], done["query"], done["count"]) == ("POST", "x=1", 1)
    upload = done["uploads"][0]
    assert (upload["field"], upload["filename"], upload["size"], upload["type"]) == ("file", "photo.bin", 300_000,
                                                                                     "text/plain")
    assert upload["md5"] == hashlib.md5(data).hexdigest() == read_md5(server, upload["key"])


def test_several_files_and_fields_keep_their_fields_and_order(server):
    body, ctype = form([("file", "a.txt", b"alpha"), ("other", "b.txt", b"beta"), ("file", "c.txt", b"gamma")],
                       [("title", "Holiday"), ("note", "two words")])
    status, answer = post(server, upload_url(server), body, ctype)
    assert status == 200, answer
    done = json.loads(answer)
    assert [(u["field"], u["filename"], u["size"]) for u in done["uploads"]] == [
        ("file", "a.txt", 5), ("file", "c.txt", 5), ("other", "b.txt", 4)]
    assert done["fields"] == [["title", "Holiday"], ["note", "two words"]]


def test_a_form_without_files_is_forwarded_with_no_uploads(server):
    before = stored_count(server)
    body, ctype = form([], [("title", "only text")])
    status, answer = post(server, upload_url(server), body, ctype)
    assert status == 200, answer
    assert (json.loads(answer)["count"], json.loads(answer)["fields"]) == (0, [["title", "only text"]])
    assert stored_count(server) == before


def test_an_empty_file_input_is_dropped(server):
    body, ctype = form([("file", "", b""), ("other", "x.txt", b"x")])
    status, answer = post(server, upload_url(server), body, ctype)
    assert status == 200, answer
    assert [u["filename"] for u in json.loads(answer)["uploads"]] == ["x.txt"]


def test_sdk_get_uploads_in_webapp2_reads_the_stored_blobs(server):
    url = urllib.parse.urlsplit(get(server, "/sdk/url").decode())
    assert url.path.startswith("/_ah/upload/")
    body, ctype = form([("file", "one.txt", b"one!"), ("file", "two.txt", b"second")])
    status, answer = post(server, url.path, body, ctype)
    assert status == 200, answer
    done = json.loads(answer)
    assert done["query"] == "from=sdk"
    assert sorted((u[1], u[2], u[3], u[4]) for u in done["uploads"]) == [
        ("one.txt", 4, "text/plain", hashlib.md5(b"one!").hexdigest()),
        ("two.txt", 6, "text/plain", hashlib.md5(b"second").hexdigest())]
    assert sorted(done["stored_sizes"]) == [4, 6]


def test_a_used_url_is_not_found(server):
    path = upload_url(server)
    body, ctype = form([("file", "a.txt", b"a")])
    assert post(server, path, body, ctype)[0] == 200
    before = stored_count(server)
    assert post(server, path, body, ctype)[0] == 404
    assert stored_count(server) == before


def test_an_unknown_url_is_not_found(server):
    body, ctype = form([("file", "a.txt", b"a")])
    assert post(server, "/_ah/upload/" + "A" * 43, body, ctype)[0] == 404
    assert post(server, "/_ah/upload/not%20an%20id/x", body, ctype)[0] == 404


def test_another_apps_url_is_not_usable_on_this_apps_host(server):
    channel = grpc.insecure_channel(server.addresses["blobstore_svc"])
    try:
        token = auth.mint_app_token(server.secrets["service"], "someone-else")
        theirs = blobstore_pb2_grpc.BlobstoreServiceStub(channel).CreateUploadUrl(
            pb.CreateUploadUrlRequest(success_path="/done"), metadata=(("authorization", f"Bearer {token}"),),
            timeout=30).upload_url
    finally:
        channel.close()
    body, ctype = form([("file", "a.txt", b"a")])
    before = stored_count(server)
    assert post(server, f"/_ah/upload/{theirs.id}", body, ctype)[0] == 404
    assert stored_count(server) == before


def test_uploads_are_posts(server):
    status, _, _ = request(server, upload_url(server))
    assert status == 405


def test_a_file_over_the_per_blob_limit_is_413_and_nothing_is_stored(server):
    before = stored_count(server)
    body, ctype = form([("file", "small.txt", b"0123456789"), ("file", "big.txt", b"0123456789X")])
    status, _ = post(server, upload_url(server, max_bytes_per_blob=10), body, ctype)
    assert status == 413
    assert stored_count(server) == before  # the first file, stored, was deleted again


def test_files_over_the_total_limit_are_413_and_nothing_is_stored(server):
    before = stored_count(server)
    body, ctype = form([("file", "a.txt", b"x" * 600_000), ("file", "b.txt", b"y" * 600_000)])
    status, _ = post(server, upload_url(server, max_bytes_total=1_000_000), body, ctype)
    assert status == 413
    assert stored_count(server) == before


def test_a_truncated_body_is_400_and_nothing_is_stored(server):
    before = stored_count(server)
    body, ctype = form([("file", "a.txt", b"complete"), ("file", "b.txt", b"z" * 400_000)])
    cut = body[:-200_000]  # the second file's data ends early; no closing boundary
    status, _ = post(server, upload_url(server), cut, ctype)
    assert status == 400
    assert stored_count(server) == before


def test_a_body_that_is_not_a_form_is_400(server):
    assert post(server, upload_url(server), b"just text", "text/plain")[0] == 400


def test_a_client_that_goes_away_midway_leaves_nothing_stored(server):
    before = stored_count(server)
    body, ctype = form([("file", "a.txt", b"complete"), ("file", "b.txt", b"z" * 2_000_000)])
    path = upload_url(server)
    address, _, port = server.addresses["router"].rpartition(":")
    with socket.create_connection((address, int(port)), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1_000_000])
        wait_for(lambda: stored_count(server) == before + 1, 30)  # the first file is stored, the second under way
    wait_for(lambda: stored_count(server) == before, 30)  # the client left: the first is deleted too


def test_twenty_concurrent_uploads_are_all_stored(server):
    datas = [os.urandom(50_000 + i) for i in range(20)]
    paths = [upload_url(server) for _ in datas]

    def one(index: int) -> dict:
        body, ctype = form([("file", f"f{index}.bin", datas[index])])
        status, answer = post(server, paths[index], body, ctype)
        assert status == 200, answer
        return json.loads(answer)["uploads"][0]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        uploads = list(pool.map(one, range(20)))
    for index, upload in enumerate(uploads):
        assert (upload["filename"], upload["size"]) == (f"f{index}.bin", len(datas[index]))
        assert read_md5(server, upload["key"]) == hashlib.md5(datas[index]).hexdigest()


def test_two_posts_racing_for_one_url_store_one_upload(server):
    before = stored_count(server)
    path = upload_url(server)
    body, ctype = form([("file", "race.txt", b"r" * 200_000)])
    for _ in range(3):  # several races, each on a fresh URL after the first
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(lambda _: post(server, path, body, ctype)[0], range(2)))
        assert statuses == [200, 404]
        path = upload_url(server)
    assert stored_count(server) == before + 3
