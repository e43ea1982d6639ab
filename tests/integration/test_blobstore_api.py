"""kiln.api.blobstore in this process against a real ``python -m blobstore_svc`` (embedded engine; the service's
own tests cover both engines). Blobs are stored with the service's CreateBlob as the app, as an upload will."""

from __future__ import annotations

import datetime
import hashlib
import random

import grpc
import pytest

from kiln.api import _rpc, blobstore
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln_platform import auth
from tests.integration.conftest import SECRET, app_metadata

MB = 1024 * 1024


@pytest.fixture
def app(grpc_services, monkeypatch):
    """Make this test process an app's SDK (a fresh app per test: its blobs are its own); returns the app id."""
    def use(app_id: str) -> str:
        monkeypatch.setenv("KILN_BLOBSTORE_ADDR", grpc_services["blobstore"])
        monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app_id))
        _rpc.reset()
        return app_id
    app_id = use(f"api-{random.randrange(1 << 40):x}")
    yield app_id
    _rpc.reset()


@pytest.fixture
def put(grpc_services, app):
    channel = grpc.insecure_channel(grpc_services["blobstore"])
    stub = blobstore_pb2_grpc.BlobstoreServiceStub(channel)

    def store(data: bytes, content_type: str = "text/plain", filename: str = "f.txt") -> blobstore.BlobKey:
        def messages():
            yield pb.CreateBlobRequest(content_type=content_type, filename=filename, data=data[:MB])
            for start in range(MB, len(data), MB):
                yield pb.CreateBlobRequest(data=data[start:start + MB])
        info = stub.CreateBlob(messages(), metadata=app_metadata(app), timeout=60).info
        return blobstore.BlobKey(info.blob_key)
    yield store
    channel.close()


def test_blob_info_get_gives_the_stored_properties(put):
    data = b"hello blobstore"
    key = put(data, "text/plain", "hello.txt")
    info = blobstore.BlobInfo.get(key)
    assert (info.key(), info.content_type, info.filename, info.size, info.md5_hash) == (
        key, "text/plain", "hello.txt", len(data), hashlib.md5(data).hexdigest())
    assert abs(info.creation - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)) < datetime.timedelta(
        minutes=5)


def test_get_of_a_list_gives_none_for_missing_keys(put):
    key = put(b"x")
    assert [i and i.key() for i in blobstore.get([key, "A" * 43, str(key)])] == [key, None, key]


def test_fetch_data_takes_a_key_an_info_or_text(put):
    key = put(b"0123456789")
    info = blobstore.BlobInfo.get(key)
    assert [blobstore.fetch_data(k, 2, 4) for k in (key, info, str(key))] == [b"234"] * 3
    assert blobstore.fetch_data_async(key, 8, 100).get_result() == b"89"


def test_fetch_data_of_a_missing_blob_raises_blob_not_found(app):
    with pytest.raises(blobstore.BlobNotFoundError):
        blobstore.fetch_data("A" * 43, 0, 10)


def test_another_apps_blob_is_not_found(put, grpc_services, monkeypatch):
    key = put(b"mine")
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, "somebody-else"))
    _rpc.reset()
    assert blobstore.get(key) is None
    with pytest.raises(blobstore.BlobNotFoundError):
        blobstore.fetch_data(key, 0, 3)


def test_delete_and_delete_async_remove_blobs(put):
    keys = [put(b"a"), put(b"b"), put(b"c")]
    blobstore.delete(keys[0])
    blobstore.delete_async(keys[1:]).get_result()
    assert blobstore.get(keys) == [None, None, None]


def test_blob_info_delete_removes_it(put):
    info = blobstore.BlobInfo.get(put(b"gone"))
    info.delete()
    assert blobstore.BlobInfo.get(info.key()) is None


def test_all_lists_every_blob_and_filters_and_orders_on_properties(put):
    keys = [put(b"x" * n, filename=f"f{n}") for n in (5, 1, 3)]
    assert sorted(i.key() for i in blobstore.BlobInfo.all()) == sorted(keys)
    assert [i.size for i in blobstore.BlobInfo.all().order("-size")] == [5, 3, 1]
    assert [i.filename for i in blobstore.BlobInfo.all().filter("size >", 1).order("size")] == ["f3", "f5"]
    assert blobstore.BlobInfo.all().count() == 3
    assert [i.size for i in blobstore.BlobInfo.all().order("size").fetch(1, offset=1)] == [3]


def test_blob_reader_reads_seeks_and_reads_lines_across_buffers(put):
    lines = [f"line {n}: {'x' * (n % 50)}\n".encode() for n in range(5000)]
    data = b"".join(lines)
    key = put(data)
    with blobstore.BlobReader(key, buffer_size=1000) as reader:
        assert reader.readline() == lines[0]
        assert reader.read(10) == data[len(lines[0]):len(lines[0]) + 10]
        reader.seek(-20, 2)
        assert reader.read() == data[-20:]
        reader.seek(0)
        assert list(reader) == lines
        assert reader.tell() == len(data)
    assert reader.closed


def test_blob_reader_reads_a_multi_megabyte_blob_whole(put):
    data = random.Random(3).randbytes(2 * MB + 5)
    reader = blobstore.BlobInfo.get(put(data)).open(buffer_size=blobstore.MAX_BLOB_FETCH_SIZE)
    assert reader.read() == data
    assert reader.read(10) == b""


def test_create_upload_url_is_a_one_time_path_on_the_apps_host(app):
    url = blobstore.create_upload_url("/upload_done", max_bytes_per_blob=1000)
    other = blobstore.create_upload_url_async("/upload_done").get_result()
    assert url.startswith("http://") and "/_ah/upload/" in url
    assert url != other


# --- the read API at chunk and buffer boundaries, fetch_data's limits, BlobInfo.gql ---------------------------

def test_fetch_data_reads_across_the_services_chunk_boundary(put):
    data = random.Random(5).randbytes(2 * MB + 100)
    key = put(data)
    assert blobstore.fetch_data(key, MB - 7, MB + 6) == data[MB - 7:MB + 7]
    assert blobstore.fetch_data(key, 2 * MB - 1, 2 * MB + 500) == data[2 * MB - 1:]


def test_fetch_data_takes_at_most_max_blob_fetch_size_bytes(put):
    data = random.Random(6).randbytes(MB + 10)
    key = put(data)
    assert blobstore.fetch_data(key, 1, blobstore.MAX_BLOB_FETCH_SIZE) == data[1:blobstore.MAX_BLOB_FETCH_SIZE + 1]
    with pytest.raises(blobstore.BlobFetchSizeTooLargeError):
        blobstore.fetch_data(key, 0, blobstore.MAX_BLOB_FETCH_SIZE)


def test_fetch_data_refuses_negative_and_reversed_indexes(put):
    key = put(b"0123456789")
    with pytest.raises(blobstore.DataIndexOutOfRangeError):
        blobstore.fetch_data(key, -1, 5)
    with pytest.raises(blobstore.DataIndexOutOfRangeError):
        blobstore.fetch_data(key, 5, 4)
    with pytest.raises(TypeError):
        blobstore.fetch_data(key, 0.5, 4)


def test_fetch_data_past_the_end_is_empty(put):
    assert blobstore.fetch_data(put(b"0123456789"), 10, 20) == b""


def test_blob_reader_lines_and_reads_span_the_chunk_boundary(put):
    head = b"a" * (MB - 3)
    data = head + b"xyz\nline two\n" + b"b" * 10
    key = put(data)
    for buffer_size in (4, 1000, blobstore.MAX_BLOB_FETCH_SIZE):
        with blobstore.BlobReader(key, buffer_size=buffer_size, position=MB - 5) as reader:
            assert reader.readline() == b"aaxyz\n"
            assert reader.tell() == MB + 1
            assert reader.readline(4) == b"line"
            assert reader.read(6) == b" two\nb"
            reader.seek(-3, 1)
            assert reader.read() == b"o\n" + b"b" * 10
            assert reader.tell() == len(data)


def test_blob_reader_reads_nothing_past_the_end_and_refuses_a_position_before_the_start(put):
    key = put(b"0123456789")
    with blobstore.BlobReader(key) as reader:
        reader.seek(50)
        assert (reader.read(), reader.read(3), reader.readline(), reader.tell()) == (b"", b"", b"", 50)
        with pytest.raises(OSError):
            reader.seek(-1)
    with pytest.raises(ValueError):
        reader.read()  # closed


def test_blob_reader_refuses_a_buffer_over_the_fetch_limit(put):
    with pytest.raises(ValueError):
        blobstore.BlobReader(put(b"x"), buffer_size=blobstore.MAX_BLOB_FETCH_SIZE + 1)


def test_blob_info_gql_filters_orders_binds_and_limits(put):
    for n in (4, 1, 3, 2):
        put(b"x" * n, filename=f"f{n}")
    assert [i.size for i in blobstore.BlobInfo.gql("WHERE size > :1 ORDER BY size DESC", 1)] == [4, 3, 2]
    assert [i.filename for i in blobstore.BlobInfo.gql("WHERE filename = :name", name="f3")] == ["f3"]
    assert [i.size for i in blobstore.BlobInfo.gql("ORDER BY size LIMIT 2 OFFSET 1")] == [2, 3]
    assert [i.size for i in blobstore.BlobInfo.gql("WHERE size IN :1 ORDER BY size", [1, 4])] == [1, 4]


def test_blob_info_gql_refuses_other_properties_and_bad_gql(put):
    from kiln.gql import GqlError

    with pytest.raises(ValueError):
        blobstore.BlobInfo.gql("WHERE color = 'red'")
    with pytest.raises(GqlError):
        blobstore.BlobInfo.gql("WHERE size >")
