"""The blob-info parts the router forwards to an upload's success path (router.blobupload) read back as App
Engine's uploads: by Google's SDK (``BlobstoreUploadHandler.get_uploads``, ``parse_blob_info``) and by
``kiln.api.blobstore.get_uploads``. No sockets: the parts are built and read in this process."""

from __future__ import annotations

import datetime
import hashlib
import io
import warnings

import pytest

from kiln.api import blobstore
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from router import blobupload

BOUNDARY = b"==boundary-for-the-test=="
CREATED = datetime.datetime(2026, 12, 7, 9, 30, 15, 123456)


def info(key: str, data: bytes, filename: str) -> pb.BlobInfo:
    out = pb.BlobInfo(blob_key=key, content_type="text/plain", filename=filename, size=len(data),
                      md5_hash=hashlib.md5(data).hexdigest())
    out.creation.FromDatetime(CREATED)
    return out


def forwarded() -> dict[str, object]:
    """The WSGI environ of a forwarded upload: two files in field ``file``, one in ``other``, and a text field."""
    body = b"".join([
        blobupload.blob_part(BOUNDARY, "file", "one.txt", "text/plain", info("key1", b"first", "one.txt")),
        blobupload.field_part(BOUNDARY, "title", "Grüße \"quoted\"".encode()),
        blobupload.blob_part(BOUNDARY, "other", 'we"ird name.txt', "text/plain", info("key2", b"2nd", 'we"ird name.txt')),
        blobupload.blob_part(BOUNDARY, "file", "three.txt", "text/plain", info("key3", b"third!", "three.txt")),
    ]) + b"--" + BOUNDARY + b"--\r\n"
    return {"REQUEST_METHOD": "POST", "CONTENT_TYPE": f'multipart/form-data; boundary="{BOUNDARY.decode()}"',
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}


def test_creation_header_is_app_engines_format_with_microseconds():
    assert blobupload.format_creation(info("k", b"", "f")) == "2026-12-07 09:30:15.123456"


def test_kiln_get_uploads_reads_each_blob_info_in_form_order():
    environ = forwarded()
    found = blobstore.get_uploads(environ)
    assert [(str(i.key()), i.filename, i.size, i.content_type, i.creation) for i in found] == [
        ("key1", "one.txt", 5, "text/plain", CREATED), ("key2", 'we"ird name.txt', 3, "text/plain", CREATED),
        ("key3", "three.txt", 6, "text/plain", CREATED)]
    assert found[0].md5_hash == hashlib.md5(b"first").hexdigest()


def test_kiln_get_uploads_selects_a_field_and_leaves_the_body_readable():
    environ = forwarded()
    assert [str(i.key()) for i in blobstore.get_uploads(environ, "file")] == ["key1", "key3"]
    assert [str(i.key()) for i in blobstore.get_uploads(environ, "other")] == ["key2"]
    assert b'name="title"' in environ["wsgi.input"].read()  # type: ignore[attr-defined]


def test_kiln_get_uploads_of_a_request_without_a_form_is_empty():
    assert blobstore.get_uploads({"CONTENT_TYPE": "text/plain", "wsgi.input": io.BytesIO(b"x")}) == []


def test_sdk_upload_handler_reads_the_same_uploads(gae_sdk):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from google.appengine.ext import blobstore as sdk_blobstore

        found = sdk_blobstore.BlobstoreUploadHandler().get_uploads(forwarded())
    assert sorted((str(i.key()), i.filename, i.size, i.md5_hash) for i in found) == [
        ("key1", "one.txt", 5, hashlib.md5(b"first").hexdigest().encode()),
        ("key2", 'we"ird name.txt', 3, hashlib.md5(b"2nd").hexdigest().encode()),
        ("key3", "three.txt", 6, hashlib.md5(b"third!").hexdigest().encode())]
    assert {i.creation for i in found} == {CREATED}


def test_sdk_sees_the_text_field_unchanged(gae_sdk):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import cgi

        environ = forwarded()
        form = cgi.FieldStorage(fp=environ["wsgi.input"], environ=environ)
    assert form.getfirst("title") == "Grüße \"quoted\""


def test_kiln_parse_blob_info_refuses_a_part_without_upload_headers():
    class Part:
        name = "file"
        type_options = {"blob-key": "k"}
        disposition_options = {"filename": "f.txt"}
        file = io.BytesIO(b"Content-Type: text/plain\r\n\r\n")

    with pytest.raises(blobstore.BlobInfoParseError):
        blobstore.parse_blob_info(Part())
