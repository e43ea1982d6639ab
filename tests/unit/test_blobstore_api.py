"""kiln.api.blobstore's own checks, made before any call (no service is reachable here: a call would fail)."""

from __future__ import annotations

import pytest

from kiln.api import blobstore


@pytest.mark.parametrize(("start", "end", "error"), [
    (-1, 5, blobstore.DataIndexOutOfRangeError),
    (5, 4, blobstore.DataIndexOutOfRangeError),
    (0, blobstore.MAX_BLOB_FETCH_SIZE, blobstore.BlobFetchSizeTooLargeError),
    ("0", 5, TypeError),
    (0, 5.0, TypeError),
])
def test_fetch_data_checks_its_indexes_as_app_engine_does(start, end, error):
    with pytest.raises(error):
        blobstore.fetch_data("key", start, end)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"max_bytes_per_blob": 0}, ValueError),
    ({"max_bytes_total": -1}, ValueError),
    ({"max_bytes_total": "10"}, TypeError),
    ({"gs_bucket_name": "bucket"}, blobstore.Error),
    ({"max_bytes_per_blob": 10, "max_bytes_total": 5}, ValueError),
])
def test_create_upload_url_checks_its_limits(kwargs, error):
    with pytest.raises(error):
        blobstore.create_upload_url("/done", **kwargs)


def test_blob_keys_compare_and_hash_as_their_text():
    assert blobstore.BlobKey("abc") == blobstore.BlobKey(blobstore.BlobKey("abc"))
    assert len({blobstore.BlobKey("abc"), blobstore.BlobKey("abc"), blobstore.BlobKey("abd")}) == 2
    assert blobstore.BlobKey("abc") != "abc"


def test_a_blob_key_is_not_made_from_a_number():
    with pytest.raises(TypeError):
        blobstore.BlobKey(12)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["size ~", "colour =", "size LIKE"])
def test_query_refuses_unknown_properties_and_operators(bad):
    with pytest.raises(ValueError):
        blobstore.BlobInfo.all().filter(bad, 1)


def test_blob_reader_refuses_a_buffer_over_the_fetch_limit():
    with pytest.raises(ValueError):
        blobstore.BlobReader("key", buffer_size=blobstore.MAX_BLOB_FETCH_SIZE + 1)
