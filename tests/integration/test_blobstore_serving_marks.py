"""blobstore_svc's serving marks (what images.get_serving_url records), on each storage engine: a real
``python -m blobstore_svc`` called over gRPC with apps' tokens (the engine fixtures of test_blobstore_service)."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from tests.integration.test_blobstore_service import (APP, KEYSPACE, OTHER, as_app, engine, error_code,  # noqa: F401
                                                      store, stub)

pytestmark = pytest.mark.nats


def marked(stub, key: str, app: str = APP) -> pb.BlobInfo:  # noqa: F811
    return stub.GetServingUrl(pb.GetServingUrlRequest(blob_key=key), **as_app(app)).info


def mark_rows(engine, key: str) -> int:  # noqa: F811
    """The serving mark rows stored for ``key`` (the embedded engine's SQLite, or Cassandra)."""
    if engine.data_dir is not None:
        db = sqlite3.connect(engine.data_dir / "blobstore.sqlite3")
        try:
            return len(db.execute("SELECT 1 FROM serving_urls WHERE blob_key = ?", (key,)).fetchall())
        finally:
            db.close()
    from cassandra.cluster import Cluster
    host, _, port = engine.hosts.partition(":")
    cluster = Cluster([(host, int(port or 9042))], protocol_version=5)
    try:
        return len(list(cluster.connect().execute(f"SELECT blob_key FROM {KEYSPACE}.blobstore_serving "
                                                  "WHERE app_id = %s AND blob_key = %s", (APP, key))))
    finally:
        cluster.shutdown()


def test_a_marked_blob_answers_get_serving_url_with_its_info(stub):  # noqa: F811
    info = store(stub, b"picture bytes", content_type="image/png")
    assert stub.PutServingUrl(pb.PutServingUrlRequest(blob_key=info.blob_key), **as_app()).info == info
    assert marked(stub, info.blob_key) == info


def test_an_unmarked_blob_is_not_found(stub):  # noqa: F811
    info = store(stub, b"never marked")
    with pytest.raises(grpc.RpcError) as caught:
        marked(stub, info.blob_key)
    assert (caught.value.code(), error_code(caught.value)) == (grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")


def test_marking_a_missing_or_another_apps_blob_is_not_found(stub):  # noqa: F811
    theirs = store(stub, b"not yours", app=OTHER)
    for key in ("A" * 43, theirs.blob_key):
        with pytest.raises(grpc.RpcError) as caught:
            stub.PutServingUrl(pb.PutServingUrlRequest(blob_key=key), **as_app())
        assert error_code(caught.value) == "BLOB_NOT_FOUND"
    stub.PutServingUrl(pb.PutServingUrlRequest(blob_key=theirs.blob_key), **as_app(OTHER))
    with pytest.raises(grpc.RpcError):
        marked(stub, theirs.blob_key)  # marked by its own app, still nothing to this one


def test_delete_serving_url_removes_the_mark_and_repeats_harmlessly(stub):  # noqa: F811
    info = store(stub, b"short-lived URL")
    stub.PutServingUrl(pb.PutServingUrlRequest(blob_key=info.blob_key), **as_app())
    for _ in range(2):
        stub.DeleteServingUrl(pb.DeleteServingUrlRequest(blob_key=info.blob_key), **as_app())
    with pytest.raises(grpc.RpcError):
        marked(stub, info.blob_key)


def test_deleting_the_blob_removes_its_mark(engine, stub):  # noqa: F811
    info = store(stub, b"deleted with its URL")
    stub.PutServingUrl(pb.PutServingUrlRequest(blob_key=info.blob_key), **as_app())
    assert mark_rows(engine, info.blob_key) == 1
    stub.DeleteBlobs(pb.DeleteBlobsRequest(blob_keys=[info.blob_key]), **as_app())
    with pytest.raises(grpc.RpcError) as caught:
        marked(stub, info.blob_key)
    assert error_code(caught.value) == "BLOB_NOT_FOUND"
    assert mark_rows(engine, info.blob_key) == 0  # the row is gone, not just hidden


def test_a_malformed_key_is_invalid_blob_key(stub):  # noqa: F811
    with pytest.raises(grpc.RpcError) as caught:
        stub.DeleteServingUrl(pb.DeleteServingUrlRequest(blob_key="no spaces allowed"), **as_app())
    assert error_code(caught.value) == "INVALID_BLOB_KEY"
