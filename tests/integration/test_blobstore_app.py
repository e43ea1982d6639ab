"""An app using kiln.api.blobstore end to end under ``kiln dev``: through the router, NATS, the runtime's sandbox
and blobstore_svc, which kiln dev starts and whose address the instance manager gives the instance. Blobs are put
in with the service's CreateBlob as the app (as an upload through the router will)."""

from __future__ import annotations

import hashlib
import json
import textwrap
import urllib.parse

import grpc
import pytest

from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import auth
from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import json
    from urllib.parse import parse_qs
    from kiln.api import blobstore

    def run(action, key):
        if action == "info":
            info = blobstore.BlobInfo.get(key)
            return {"filename": info.filename, "size": info.size, "type": info.content_type,
                    "md5": info.md5_hash}
        if action == "read":
            reader = blobstore.BlobReader(key, buffer_size=4)
            first = reader.readline().decode()
            reader.seek(-3, 2)
            return {"first": first, "last": reader.read().decode(),
                    "fetched": blobstore.fetch_data(key, 0, 2).decode()}
        if action == "delete":
            blobstore.delete(key)
            return {"after": blobstore.get(key)}
        if action == "missing":
            try:
                blobstore.fetch_data("A" * 43, 0, 1)
            except blobstore.BlobNotFoundError as exc:
                return {"error": type(exc).__name__}
        if action == "upload_url":
            return {"url": blobstore.create_upload_url("/done")}
        if action == "all":
            return {"keys": sorted(str(i.key()) for i in blobstore.BlobInfo.all())}
        raise ValueError(action)

    def app(environ, start_response):
        key = parse_qs(environ.get("QUERY_STRING", "")).get("key", [""])[0]
        body = json.dumps(run(environ["PATH_INFO"].strip("/"), key)).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("blobapp"), {"main.py": MAIN}) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.addresses["blobstore_svc"])
    yield blobstore_pb2_grpc.BlobstoreServiceStub(channel)
    channel.close()


def put(server, stub, data: bytes, filename: str = "notes.txt") -> str:
    token = auth.mint_app_token(server.secrets["service"], server.app_id)
    request = pb.CreateBlobRequest(content_type="text/plain", filename=filename, data=data)
    return stub.CreateBlob(iter([request]), metadata=(("authorization", f"Bearer {token}"),), timeout=30).info.blob_key


def ask(server, action: str, key: str = "") -> dict:
    status, _, body = fetch(server, f"/{action}?key={urllib.parse.quote(key)}")
    assert status == 200, body
    return json.loads(body)


def test_an_app_reads_the_info_of_its_blob(server, stub):
    key = put(server, stub, b"first line\nsecond line\n")
    assert ask(server, "info", key) == {"filename": "notes.txt", "size": 23, "type": "text/plain",
                                        "md5": hashlib.md5(b"first line\nsecond line\n").hexdigest()}


def test_an_app_reads_its_blob_with_a_reader_and_fetch_data(server, stub):
    key = put(server, stub, b"first line\nsecond line\nend")
    assert ask(server, "read", key) == {"first": "first line\n", "last": "end", "fetched": "fir"}


def test_an_app_deletes_its_blob(server, stub):
    key = put(server, stub, b"short-lived")
    assert ask(server, "delete", key) == {"after": None}
    assert key not in ask(server, "all")["keys"]


def test_an_app_gets_blob_not_found_for_a_missing_key(server):
    assert ask(server, "missing") == {"error": "BlobNotFoundError"}


def test_an_app_makes_an_upload_url_on_its_own_host(server):
    url = ask(server, "upload_url")["url"]
    assert url.startswith(server.url.rstrip("/") + "/_ah/upload/")  # the host the request came to
