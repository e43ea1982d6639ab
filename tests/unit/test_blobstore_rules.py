"""blobstore_svc's rules without a server: App Engine's fetch range, what a blob key may be, and the settings."""

from __future__ import annotations

import pytest

from blobstore_svc.config import BlobstoreConfig
from blobstore_svc.errors import (
    BlobFetchSizeTooLargeError,
    DataIndexOutOfRangeError,
    InvalidBlobKeyError,
)
from blobstore_svc.service import MAX_BLOB_FETCH_SIZE, check_key, fetch_range
from blobstore_svc.store import KEY_PATTERN, new_key
from kiln.errors import ConfigError
from kiln_platform import config

SECRET = {"KILN_BLOBSTORE_SERVICE_SECRET": "s"}


def test_fetch_range_is_inclusive_and_becomes_half_open():
    assert fetch_range(0, 0) == (0, 1)
    assert fetch_range(10, 10 + MAX_BLOB_FETCH_SIZE - 1) == (10, 10 + MAX_BLOB_FETCH_SIZE)


@pytest.mark.parametrize(("start", "end", "error"), [
    (-1, 0, DataIndexOutOfRangeError), (5, 4, DataIndexOutOfRangeError),
    (0, MAX_BLOB_FETCH_SIZE, BlobFetchSizeTooLargeError)])
def test_fetch_range_refuses_what_app_engine_refuses(start, end, error):
    with pytest.raises(error):
        fetch_range(start, end)


def test_new_keys_are_valid_and_distinct():
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100 and all(KEY_PATTERN.fullmatch(k) for k in keys)


@pytest.mark.parametrize("key", ["", "..", "a/b", "a.b", "x" * 201, "é"])
def test_keys_that_could_name_a_path_or_nothing_are_invalid(key):
    with pytest.raises(InvalidBlobKeyError):
        check_key(key)


def test_settings_default_to_the_embedded_engine_and_ten_minute_upload_urls():
    cfg = config.load(BlobstoreConfig, prefix="BLOBSTORE", env=SECRET)
    assert (cfg.storage, cfg.upload_url_seconds, cfg.listen.port) == ("embedded", 600, 50062)


@pytest.mark.parametrize(("argv", "message"), [(["--max-blob-bytes", "0"], "max_blob_bytes"),
                                               (["--upload-url-seconds", "0"], "upload_url_seconds"),
                                               (["--storage", "tape"], "storage")])
def test_bad_settings_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        config.load(BlobstoreConfig, prefix="BLOBSTORE", env=SECRET, argv=argv)
