"""Google's SDK blobstore (``google.appengine.api.blobstore``, ``google.appengine.ext.blobstore``) in this process,
through kiln's API proxy (kiln.sdk) to a real ``python -m blobstore_svc``: each call is the SDK's own, translated by
kiln.sdk, and each error is the SDK's own exception."""

from __future__ import annotations

import hashlib
import uuid

import grpc
import pytest

from kiln.api import _rpc
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import auth
from tests.integration.conftest import SECRET, app_metadata
from tests.unit.conftest import gae_sdk  # noqa: F401 - the fixture: the SDK importable in this process

pytestmark = pytest.mark.nats

APP = "sdkblobs"
TICKET = "HTTP_X_APPENGINE_API_TICKET"


@pytest.fixture(scope="module")
def proxy(gae_sdk):  # noqa: F811
    from kiln.sdk import proxy

    return proxy.install(APP)


@pytest.fixture
def request_env(grpc_services, proxy, monkeypatch):
    """This thread is a request of the app: the service's address, the app's token and an open API ticket."""
    from kiln.sdk import tickets

    monkeypatch.setenv("KILN_BLOBSTORE_ADDR", grpc_services["blobstore"])
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, APP))
    monkeypatch.setenv("GAE_APPLICATION", f"s~{APP}")
    monkeypatch.setenv("GAE_ENV", "standard")
    monkeypatch.delenv("APPLICATION_ID", raising=False)
    _rpc.reset()
    environ = {"HTTP_HOST": "sdkblobs.apps.example.test:8080", "wsgi.url_scheme": "https"}
    ticket = tickets.open_ticket(APP, environ)
    monkeypatch.setenv(TICKET, ticket)
    yield environ
    tickets.close(ticket)
    _rpc.reset()


@pytest.fixture
def put(grpc_services):
    channel = grpc.insecure_channel(grpc_services["blobstore"])
    stub = blobstore_pb2_grpc.BlobstoreServiceStub(channel)

    def store(data: bytes, filename: str = "f.bin", app: str = APP) -> str:
        request = pb.CreateBlobRequest(content_type="application/x-test", filename=filename, data=data)
        return stub.CreateBlob(iter([request]), metadata=app_metadata(app), timeout=30).info.blob_key
    yield store
    channel.close()


def test_sdk_fetch_data_reads_an_inclusive_range(request_env, put):
    from google.appengine.api import blobstore

    key = put(b"0123456789")
    assert blobstore.fetch_data(blobstore.BlobKey(key), 3, 5) == b"345"
    assert blobstore.fetch_data(key, 8, 50) == b"89"


def test_sdk_fetch_data_errors_are_the_sdks_exceptions(request_env, put):
    from google.appengine.api import blobstore

    with pytest.raises(blobstore.BlobNotFoundError):
        blobstore.fetch_data("A" * 43, 0, 5)
    with pytest.raises(blobstore.BlobNotFoundError):
        blobstore.fetch_data("not a key at all", 0, 5)
    with pytest.raises(blobstore.BlobFetchSizeTooLargeError):
        blobstore.fetch_data(put(b"x"), 0, blobstore.MAX_BLOB_FETCH_SIZE)


def test_sdk_cannot_read_another_apps_blob(request_env, put):
    from google.appengine.api import blobstore

    with pytest.raises(blobstore.BlobNotFoundError):
        blobstore.fetch_data(put(b"theirs", app="someone-else"), 0, 3)


def test_sdk_delete_frees_the_blob_and_ignores_unknown_keys(request_env, put):
    from google.appengine.api import blobstore

    keys = [put(b"a"), put(b"b")]
    blobstore.delete(keys[0])
    blobstore.delete_async([blobstore.BlobKey(keys[1]), "nonsense key"]).get_result()
    for key in keys:
        with pytest.raises(blobstore.BlobNotFoundError):
            blobstore.fetch_data(key, 0, 0)


def test_sdk_create_upload_url_is_on_the_requests_host(request_env):
    from google.appengine.api import blobstore

    url = blobstore.create_upload_url("/done", max_bytes_per_blob=100, max_bytes_total=1000)
    assert url.startswith("https://sdkblobs.apps.example.test:8080/_ah/upload/")


def test_sdk_create_upload_url_into_cloud_storage_is_permission_denied(request_env):
    from google.appengine.api import blobstore

    with pytest.raises(blobstore.PermissionDeniedError):
        blobstore.create_upload_url("/done", gs_bucket_name="bucket")


# --- BlobInfo: the __BlobInfo__ kind, read through the datastore calls of the SDK -------------------------------

def test_sdk_blob_info_get_reads_the_blobs_properties(request_env, put):
    from google.appengine.ext import blobstore

    key = put(b"hello", filename="hello.txt")
    info = blobstore.BlobInfo.get(key)
    assert (str(info.key()), info.filename, info.size, info.content_type, info.md5_hash) == (
        key, "hello.txt", 5, "application/x-test", hashlib.md5(b"hello").hexdigest())
    assert info.creation.year >= 2024
    assert blobstore.BlobInfo.get("A" * 43) is None
    assert [i and i.filename for i in blobstore.BlobInfo.get([key, "A" * 43])] == ["hello.txt", None]


def test_sdk_blob_info_all_filters_orders_and_counts(request_env, proxy, put, monkeypatch):
    from google.appengine.ext import blobstore

    from kiln.sdk import tickets

    # A fresh app, so that its blobs are exactly these.
    app = f"sdkblobs-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(proxy, "app_id", app)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app))
    monkeypatch.setenv("GAE_APPLICATION", f"s~{app}")
    _rpc.reset()
    with tickets.opened(app, {}) as ticket:
        monkeypatch.setenv(TICKET, ticket)
        for n in (3, 1, 2):
            put(b"x" * n, filename=f"f{n}", app=app)
        assert sorted(i.size for i in blobstore.BlobInfo.all()) == [1, 2, 3]
        assert [i.filename for i in blobstore.BlobInfo.all().order("-size")] == ["f3", "f2", "f1"]
        assert [i.size for i in blobstore.BlobInfo.all().filter("size >", 1).order("size")] == [2, 3]
        assert [i.size for i in blobstore.BlobInfo.gql("WHERE filename = :1", "f2")] == [2]
        assert blobstore.BlobInfo.all().count() == 3
        assert [i.size for i in blobstore.BlobInfo.all().order("size").fetch(1, offset=1)] == [2]


def test_sdk_blob_info_open_reads_with_a_blob_reader(request_env, put):
    from google.appengine.ext import blobstore

    data = b"".join(f"line {n}\n".encode() for n in range(3000))
    reader = blobstore.BlobInfo.get(put(data)).open()
    assert reader.readline() == b"line 0\n"
    reader.seek(0)
    assert reader.read() == data
