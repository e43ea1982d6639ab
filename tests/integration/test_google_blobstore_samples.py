"""Google's own Blobstore samples for the Python 3 runtime run unmodified on kiln (issue 19), end to end: upload a
photo, then view it.

The apps under ``tests/fixtures/google_samples/blobstore/`` are Google's samples
(``appengine/standard_python3/bundled-services/blobstore/``), byte for byte. Each runs under real ``kiln dev``:
its form page holds an upload URL on the app's host, a file posted to it is stored by the router in blobstore_svc
and forwarded to the sample's ``/upload_photo``, whose ``BlobstoreUploadHandler.get_uploads`` finds the blob,
stores its key with ndb and redirects to ``/view_photo/<key>``, whose answer carries ``X-AppEngine-BlobKey``: the
router replaces it with the blob.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import urllib.parse

import grpc
import pytest

from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import auth
from tests.integration.apps import post_to_upload_form, request, running

pytestmark = pytest.mark.nats

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "google_samples" / "blobstore"


@pytest.fixture(scope="module", params=["flask", "wsgi", "django"])
def sample(request, tmp_path_factory):
    app_dir = tmp_path_factory.mktemp(f"blobsample{request.param}")
    shutil.copytree(SAMPLES / request.param, app_dir, dirs_exist_ok=True)
    with running(app_dir, {}, app_yaml=(app_dir / "app.yaml").read_text()) as srv:
        yield srv


def stored(server, key: str) -> tuple[pb.BlobInfo, bytes]:
    """The blob's info and content, read from blobstore_svc as the app."""
    metadata = (("authorization", f"Bearer {auth.mint_app_token(server.secrets['service'], server.app_id)}"),)
    channel = grpc.insecure_channel(server.addresses["blobstore_svc"])
    try:
        stub = blobstore_pb2_grpc.BlobstoreServiceStub(channel)
        info = stub.GetBlobInfo(pb.GetBlobInfoRequest(blob_keys=[key]), metadata=metadata, timeout=30).infos[0]
        data = stub.FetchData(pb.FetchDataRequest(blob_key=key, start_index=0, end_index=info.size - 1),
                              metadata=metadata, timeout=30).data
        return info, data
    finally:
        channel.close()


def test_the_samples_form_posts_to_an_upload_url_on_the_apps_host(sample):
    status, _, page = request(sample, "/")
    assert status == 200, page
    action = re.search(rb'<form action="([^"]+)"', page)
    assert action is not None, page
    url = urllib.parse.urlsplit(action.group(1).decode())
    assert (url.netloc, url.path.startswith("/_ah/upload/")) == (f"localhost:{sample.url.rstrip('/').rpartition(':')[2]}",
                                                                 True)


def test_a_photo_posted_to_the_sample_is_stored_and_the_sample_redirects_to_it(sample):
    _, _, page = request(sample, "/")
    photo = os.urandom(70_000)
    status, headers, answer = post_to_upload_form(sample, page, photo, "photo.png", "image/png",
                                                  fields={"submit": "Submit"})
    assert status == 302, answer
    location = urllib.parse.urlsplit(headers["location"]).path
    assert location.startswith("/view_photo/")
    info, data = stored(sample, location.removeprefix("/view_photo/"))
    assert (info.filename, info.content_type, info.size, data) == ("photo.png", "image/png", len(photo), photo)


def test_the_photo_posted_to_the_sample_is_then_shown_by_it(sample):
    _, _, page = request(sample, "/")
    photo = os.urandom(300_000)
    status, headers, answer = post_to_upload_form(sample, page, photo, "cat.jpg", "image/jpeg")
    assert status == 302, answer
    status, headers, shown = request(sample, urllib.parse.urlsplit(headers["location"]).path)
    assert (status, headers["content-type"], shown) == (200, "image/jpeg", photo)
    assert "x-appengine-blobkey" not in headers
