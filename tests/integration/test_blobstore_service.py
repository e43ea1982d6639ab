"""Blobstore: a real ``python -m blobstore_svc`` on each storage engine, called over gRPC with apps' tokens.

Every test that feeds bad input is followed by a check that the same process still stores and reads a blob
(``still_serving``); storage is inspected directly (the embedded engine's files, Cassandra's chunk rows) to prove
that what is deleted or abandoned is really gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import random
import time
import uuid

import grpc
import pytest

from kiln.errors import ERROR_CODE_KEY
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration.conftest import app_metadata, service_env

MB = 1024 * 1024
# Apps of their own per run: a Cassandra keyspace outlives a test session.
RUN = uuid.uuid4().hex[:8]
APP, OTHER = f"blobber-{RUN}", f"stranger-{RUN}"
KEYSPACE = "kiln_blobstore_test"


@dataclasses.dataclass
class Engine:
    name: str
    address: str
    data_dir: pathlib.Path | None = None
    hosts: str = ""

    def stored_data(self, app: str, key: str) -> int:
        """How much of the blob's data is stored: bytes on disk, or chunk rows in Cassandra."""
        if self.data_dir is not None:
            return sum(p.stat().st_size for p in (self.data_dir / "blobs" / app).glob(f"*/{key}"))
        from cassandra.cluster import Cluster
        host, _, port = self.hosts.partition(":")
        cluster = Cluster([(host, int(port or 9042))], protocol_version=5)
        try:
            rows = cluster.connect().execute(f"SELECT idx FROM {KEYSPACE}.blobstore_chunks "
                                             "WHERE app_id = %s AND blob_key = %s", (app, key))
            return len(list(rows))
        finally:
            cluster.shutdown()

    def abandoned(self) -> int:
        """Data of blobs being written: files in incoming/, or pending rows in Cassandra."""
        if self.data_dir is not None:
            return len(list((self.data_dir / "incoming").iterdir()))
        from cassandra.cluster import Cluster
        host, _, port = self.hosts.partition(":")
        cluster = Cluster([(host, int(port or 9042))], protocol_version=5)
        try:
            return len(list(cluster.connect().execute(f"SELECT blob_key FROM {KEYSPACE}.blobstore_pending")))
        finally:
            cluster.shutdown()


@pytest.fixture(scope="module", params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def engine(request, supervisor, tmp_path_factory):
    name = f"blobstore-{request.param}"
    ready = supervisor.run_dir / f"{name}.addr"
    args = ["--listen", "127.0.0.1:0", "--ready-file", str(ready), "--upload-url-seconds", "2"]
    if request.param == "embedded":
        data = tmp_path_factory.mktemp("blobstore")
        child = supervisor.start(name, python_module("blobstore_svc", *args, "--data-dir", str(data)),
                                 env=service_env(), ready_file=ready)
        yield Engine("embedded", child.address, data_dir=data)
    else:
        hosts = request.getfixturevalue("cassandra_hosts")
        child = supervisor.start(name, python_module(
            "blobstore_svc", *args, "--storage", "cassandra", "--cassandra-hosts", hosts,
            "--cassandra-keyspace", KEYSPACE), env=service_env(), ready_file=ready, timeout=180)
        yield Engine("cassandra", child.address, hosts=hosts)


@pytest.fixture
def stub(engine):
    channel = grpc.insecure_channel(engine.address)
    yield blobstore_pb2_grpc.BlobstoreServiceStub(channel)
    channel.close()


def as_app(app: str = APP):
    return {"metadata": app_metadata(app), "timeout": 60}


def store(stub, data: bytes, *, piece: int = 300_000, app: str = APP, content_type: str = "",
          filename: str = "", max_bytes: int = 0) -> pb.BlobInfo:
    def messages():
        yield pb.CreateBlobRequest(content_type=content_type, filename=filename, max_bytes=max_bytes,
                                   data=data[:piece])
        for start in range(piece, len(data), piece):
            yield pb.CreateBlobRequest(data=data[start:start + piece])
    return stub.CreateBlob(messages(), **as_app(app)).info


def error_code(exc: grpc.RpcError) -> str:
    return dict(exc.trailing_metadata() or ()).get(ERROR_CODE_KEY, "")


def fetch(stub, key: str, start: int, end: int, app: str = APP) -> bytes:
    return stub.FetchData(pb.FetchDataRequest(blob_key=key, start_index=start, end_index=end), **as_app(app)).data


@pytest.fixture
def still_serving(stub):
    """After the test: the service still stores a blob and reads it back."""
    yield
    info = store(stub, b"still here")
    assert fetch(stub, info.blob_key, 0, 100) == b"still here"


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


# --- storing and reading ---------------------------------------------------------------------------------

def test_streamed_blob_gets_its_size_md5_type_name_and_creation(stub):
    data = payload(2 * MB + 12345)
    before = time.time()
    info = store(stub, data, content_type="image/png", filename="cat.png")
    assert (info.size, info.md5_hash) == (len(data), hashlib.md5(data).hexdigest())
    assert (info.content_type, info.filename) == ("image/png", "cat.png")
    assert before - 5 <= info.creation.ToMicroseconds() / 1e6 <= time.time() + 5
    found = stub.GetBlobInfo(pb.GetBlobInfoRequest(blob_keys=[info.blob_key]), **as_app()).infos
    assert list(found) == [info]


def test_blob_without_a_content_type_is_application_octet_stream(stub):
    assert store(stub, b"x").content_type == "application/octet-stream"


def test_fetch_data_returns_inclusive_ranges_across_chunk_boundaries(stub):
    data = payload(3 * MB, seed=2)
    key = store(stub, data).blob_key
    for start, end in ((0, 0), (MB - 10, MB + 10), (2 * MB - 1, 2 * MB), (3 * MB - 5, 3 * MB - 1)):
        assert fetch(stub, key, start, end) == data[start:end + 1]


def test_fetch_data_past_the_end_is_cut_at_the_end(stub):
    key = store(stub, b"0123456789").blob_key
    assert fetch(stub, key, 5, 1000) == b"56789"
    assert fetch(stub, key, 10, 20) == b""


def test_read_blob_streams_a_range_after_the_info(stub):
    data = payload(2 * MB + 7, seed=3)
    key = store(stub, data).blob_key
    messages = list(stub.ReadBlob(pb.ReadBlobRequest(blob_key=key, start=100, end=2 * MB), **as_app()))
    assert messages[0].info.size == len(data)
    assert b"".join(m.data for m in messages[1:]) == data[100:2 * MB]
    whole = list(stub.ReadBlob(pb.ReadBlobRequest(blob_key=key), **as_app()))
    assert b"".join(m.data for m in whole[1:]) == data


def test_empty_blob_is_stored_and_reads_empty(stub):
    info = store(stub, b"")
    assert (info.size, info.md5_hash) == (0, hashlib.md5(b"").hexdigest())
    assert fetch(stub, info.blob_key, 0, 10) == b""


def test_query_lists_the_apps_blobs_in_key_order_a_page_at_a_time(stub):
    mine = {store(stub, b"a", app=f"lister-{RUN}").blob_key for _ in range(5)}
    store(stub, b"b", app=f"other-lister-{RUN}")
    first = stub.QueryBlobInfo(pb.QueryBlobInfoRequest(limit=3), **as_app(f"lister-{RUN}"))
    rest = stub.QueryBlobInfo(pb.QueryBlobInfoRequest(limit=3, start_after=first.infos[-1].blob_key),
                              **as_app(f"lister-{RUN}"))
    keys = [i.blob_key for i in [*first.infos, *rest.infos]]
    assert (first.more, rest.more) == (True, False)
    assert keys == sorted(mine)


# --- App Engine's errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "end", "status", "code"), [
    (-1, 10, grpc.StatusCode.INVALID_ARGUMENT, "DATA_INDEX_OUT_OF_RANGE"),
    (10, 9, grpc.StatusCode.INVALID_ARGUMENT, "DATA_INDEX_OUT_OF_RANGE"),
    (0, (1 << 20) - (1 << 15), grpc.StatusCode.INVALID_ARGUMENT, "BLOB_FETCH_SIZE_TOO_LARGE"),
])
def test_bad_fetch_ranges_get_app_engines_errors(stub, still_serving, start, end, status, code):
    key = store(stub, b"data").blob_key
    with pytest.raises(grpc.RpcError) as caught:
        fetch(stub, key, start, end)
    assert (caught.value.code(), error_code(caught.value)) == (status, code)


def test_fetch_of_the_largest_allowed_size_succeeds(stub):
    data = payload(2 * MB, seed=4)
    key = store(stub, data).blob_key
    assert fetch(stub, key, 0, (1 << 20) - (1 << 15) - 1) == data[:(1 << 20) - (1 << 15)]


def test_unknown_key_is_blob_not_found(stub, still_serving):
    with pytest.raises(grpc.RpcError) as caught:
        fetch(stub, "A" * 43, 0, 10)
    assert (caught.value.code(), error_code(caught.value)) == (grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")


@pytest.mark.parametrize("key", ["", "../../etc/passwd", "..", "x" * 201, "a b"])
def test_malformed_key_is_invalid_blob_key(stub, still_serving, key):
    with pytest.raises(grpc.RpcError) as caught:
        fetch(stub, key, 0, 10)
    assert (caught.value.code(), error_code(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BLOB_KEY")


def test_another_apps_blob_is_invisible_and_undeletable(stub, engine):
    info = store(stub, b"private", app=APP)
    assert list(stub.GetBlobInfo(pb.GetBlobInfoRequest(blob_keys=[info.blob_key]), **as_app(OTHER)).infos) == []
    with pytest.raises(grpc.RpcError) as caught:
        fetch(stub, info.blob_key, 0, 10, app=OTHER)
    assert error_code(caught.value) == "BLOB_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ReadBlob(pb.ReadBlobRequest(blob_key=info.blob_key), **as_app(OTHER)))
    assert error_code(caught.value) == "BLOB_NOT_FOUND"
    stub.DeleteBlobs(pb.DeleteBlobsRequest(blob_keys=[info.blob_key]), **as_app(OTHER))
    assert fetch(stub, info.blob_key, 0, 10) == b"private"


def test_call_without_a_token_is_unauthenticated(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetBlobInfo(pb.GetBlobInfoRequest(blob_keys=["A"]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_blob_over_its_max_bytes_is_refused_and_nothing_is_kept(stub, engine, still_serving):
    before = [i.blob_key for i in stub.QueryBlobInfo(pb.QueryBlobInfoRequest(), **as_app(f"limited-{RUN}")).infos]
    with pytest.raises(grpc.RpcError) as caught:
        store(stub, payload(3 * MB), max_bytes=2 * MB, app=f"limited-{RUN}")
    assert (caught.value.code(), error_code(caught.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "BLOB_TOO_LARGE")
    after = [i.blob_key for i in stub.QueryBlobInfo(pb.QueryBlobInfoRequest(), **as_app(f"limited-{RUN}")).infos]
    assert after == before
    assert engine.abandoned() == 0


def test_stream_cancelled_midway_leaves_nothing(stub, engine, still_serving):
    sent = []

    def messages():
        yield pb.CreateBlobRequest(filename="half.bin", data=payload(MB))
        yield pb.CreateBlobRequest(data=payload(MB, seed=9))
        sent.append(True)
        while True:  # the rest never comes: the client gives up below
            time.sleep(0.05)
            if call.done():
                return
            yield pb.CreateBlobRequest(data=b"")

    call = stub.CreateBlob.future(messages(), **as_app(f"quitter-{RUN}"))
    deadline = time.monotonic() + 30
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    call.cancel()
    assert call.cancelled()
    deadline = time.monotonic() + 30
    while engine.abandoned() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.abandoned() == 0
    assert list(stub.QueryBlobInfo(pb.QueryBlobInfoRequest(), **as_app(f"quitter-{RUN}")).infos) == []


def test_header_fields_after_the_first_message_are_refused(stub, still_serving):
    def messages():
        yield pb.CreateBlobRequest(data=b"a")
        yield pb.CreateBlobRequest(filename="late.txt", data=b"b")
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateBlob(messages(), **as_app(f"late-{RUN}"))
    assert error_code(caught.value) == "ARGUMENT_OUT_OF_RANGE"
    assert list(stub.QueryBlobInfo(pb.QueryBlobInfoRequest(), **as_app(f"late-{RUN}")).infos) == []


# --- deletion --------------------------------------------------------------------------------------------

def test_deleting_blobs_removes_their_info_and_frees_their_data(stub, engine):
    keys = [store(stub, payload(MB + 1, seed=s)).blob_key for s in (5, 6)]
    assert all(engine.stored_data(APP, k) > 0 for k in keys)
    stub.DeleteBlobs(pb.DeleteBlobsRequest(blob_keys=[*keys, "A" * 43]), **as_app())
    assert list(stub.GetBlobInfo(pb.GetBlobInfoRequest(blob_keys=keys), **as_app()).infos) == []
    assert [engine.stored_data(APP, k) for k in keys] == [0, 0]
    with pytest.raises(grpc.RpcError) as caught:
        fetch(stub, keys[0], 0, 10)
    assert error_code(caught.value) == "BLOB_NOT_FOUND"


# --- upload URLs -----------------------------------------------------------------------------------------

def create_upload(stub, path: str = "/done", app: str = APP, **limits) -> pb.UploadUrl:
    return stub.CreateUploadUrl(pb.CreateUploadUrlRequest(success_path=path, **limits), **as_app(app)).upload_url


def test_upload_url_is_taken_once_with_its_limits(stub, still_serving):
    url = create_upload(stub, "/uploaded?x=1", max_bytes_per_blob=10, max_bytes_total=20)
    taken = stub.ConsumeUploadUrl(pb.ConsumeUploadUrlRequest(id=url.id), **as_app()).upload_url
    assert (taken.success_path, taken.max_bytes_per_blob, taken.max_bytes_total) == ("/uploaded?x=1", 10, 20)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ConsumeUploadUrl(pb.ConsumeUploadUrlRequest(id=url.id), **as_app())
    assert (caught.value.code(), error_code(caught.value)) == (grpc.StatusCode.NOT_FOUND, "UPLOAD_URL_USED")


def test_upload_url_of_another_app_is_not_found(stub, still_serving):
    url = create_upload(stub)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ConsumeUploadUrl(pb.ConsumeUploadUrlRequest(id=url.id), **as_app(OTHER))
    assert error_code(caught.value) == "UPLOAD_URL_NOT_FOUND"


def test_expired_upload_url_is_refused(stub, still_serving):
    url = create_upload(stub)
    while time.time() <= url.expires.ToMicroseconds() / 1e6 + 0.01:  # the service was started with 2 s URLs
        time.sleep(0.05)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ConsumeUploadUrl(pb.ConsumeUploadUrlRequest(id=url.id), **as_app())
    assert (caught.value.code(), error_code(caught.value)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                               "UPLOAD_URL_EXPIRED")


@pytest.mark.parametrize(("path", "code"), [("done", "ARGUMENT_OUT_OF_RANGE"), ("/" + "x" * 2000, "URL_TOO_LONG")])
def test_bad_success_path_is_refused(stub, still_serving, path, code):
    with pytest.raises(grpc.RpcError) as caught:
        create_upload(stub, path)
    assert error_code(caught.value) == code


# --- a service killed mid-write --------------------------------------------------------------------------

def test_blob_half_written_when_the_service_was_killed_is_swept_at_restart(supervisor, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("blobstore-killed")

    def start(name: str):
        ready = supervisor.run_dir / f"{name}.addr"
        ready.unlink(missing_ok=True)
        return supervisor.start(name, python_module("blobstore_svc", "--listen", "127.0.0.1:0", "--ready-file",
                                                    str(ready), "--data-dir", str(data_dir)),
                                env=service_env(), ready_file=ready)

    first = start("blobstore-killed-1")
    channel = grpc.insecure_channel(first.address)
    stub = blobstore_pb2_grpc.BlobstoreServiceStub(channel)

    def messages():
        yield pb.CreateBlobRequest(data=payload(2 * MB))
        while True:  # never finishes: the service is killed under it
            time.sleep(0.05)
            yield pb.CreateBlobRequest(data=b"")

    call = stub.CreateBlob.future(messages(), **as_app(f"crashy-{RUN}"))
    deadline = time.monotonic() + 30
    while not list((data_dir / "incoming").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list((data_dir / "incoming").glob("*")), "the write never started"
    first.proc.kill()
    first.proc.wait(30)
    call.cancel()
    channel.close()
    second = start("blobstore-killed-2")
    try:
        assert list((data_dir / "incoming").iterdir()) == []
        assert list((data_dir / "blobs").rglob("*")) == []
        channel = grpc.insecure_channel(second.address)
        stub = blobstore_pb2_grpc.BlobstoreServiceStub(channel)
        assert list(stub.QueryBlobInfo(pb.QueryBlobInfoRequest(), **as_app(f"crashy-{RUN}")).infos) == []
        channel.close()
    finally:
        second.proc.terminate()
        second.proc.wait(30)
