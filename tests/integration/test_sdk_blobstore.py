"""Google's SDK blobstore (``google.appengine.api.blobstore``, ``google.appengine.ext.blobstore``) in this process,
through kiln's API proxy (kiln.sdk) to a real ``python -m blobstore_svc``: each call is the SDK's own, translated by
kiln.sdk, and each error is the SDK's own exception."""

from __future__ import annotations

import hashlib

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
