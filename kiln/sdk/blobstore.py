"""App Engine's ``blobstore`` service for Google's SDK (``google.appengine.api.blobstore``, and through it
``google.appengine.ext.blobstore``): ``CreateUploadURL``, ``DeleteBlob`` and ``FetchData`` through kiln's blobstore
service.

- ``CreateUploadURL``: a one-time upload URL on the request's host, with the SDK's per-blob and total limits;
  ``gs_bucket_name`` is refused (kiln has no Cloud Storage: ``PERMISSION_DENIED``, the SDK's
  ``PermissionDeniedError``).
- ``DeleteBlob``: deletes the blobs and frees their space; keys that name nothing are ignored.
- ``FetchData``: bytes ``start_index`` to ``end_index`` inclusive, at most ``MAX_BLOB_FETCH_SIZE``.
- ``CreateEncodedGoogleStorageKey`` is not served (no Cloud Storage): the SDK's ``CallNotFoundError``.

BlobInfo reads (``BlobInfo.get``, ``BlobInfo.all()``, ``gql``) are datastore calls on the ``__BlobInfo__`` kind,
answered from the blobstore service by kiln's ``datastore_v3`` (:mod:`kiln.sdk.datastore_v3`).

Errors carry the service's App Engine codes, so the SDK raises its own exceptions: ``BLOB_NOT_FOUND`` (and a key
that cannot be a blob key) → ``BlobNotFoundError``, ``DATA_INDEX_OUT_OF_RANGE`` → ``DataIndexOutOfRangeError``,
``BLOB_FETCH_SIZE_TOO_LARGE`` → ``BlobFetchSizeTooLargeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.appengine.api.blobstore import blobstore_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.api import blobstore as kiln_blobstore
from kiln.pb.blobstore.v1 import blobstore_pb2 as pb
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln.sdk import _errors
from kiln.sdk.service import CallContext

__all__ = ["Blobstore"]

_ERR = gae.BlobstoreServiceError
ERRORS = _errors.table({
    "BLOB_NOT_FOUND": _ERR.BLOB_NOT_FOUND, "INVALID_BLOB_KEY": _ERR.BLOB_NOT_FOUND,
    "DATA_INDEX_OUT_OF_RANGE": _ERR.DATA_INDEX_OUT_OF_RANGE, "BLOB_FETCH_SIZE_TOO_LARGE": _ERR.BLOB_FETCH_SIZE_TOO_LARGE,
    "PERMISSION_DENIED": _ERR.PERMISSION_DENIED, "ARGUMENT_OUT_OF_RANGE": _ERR.ARGUMENT_OUT_OF_RANGE,
    "URL_TOO_LONG": _ERR.URL_TOO_LONG, "UNSPECIFIED": _ERR.INTERNAL_ERROR,
})


def stub() -> blobstore_pb2_grpc.BlobstoreServiceStub:
    return _rpc.stub("BLOBSTORE", blobstore_pb2_grpc.BlobstoreServiceStub)


class Blobstore:
    """The ``blobstore`` service (module docstring)."""

    name = "blobstore"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        serve = _METHODS.get(method)
        if serve is None:
            raise apiproxy_errors.CallNotFoundError(
                f"blobstore.{method}() is not served by kiln" + (
                    " (it has no Cloud Storage)" if method == "CreateEncodedGoogleStorageKey" else ""))
        serve(request, response, ctx, ctx.deadline if ctx.deadline is not None else kiln_blobstore.DEFAULT_DEADLINE)


def _create_upload_url(request: gae.CreateUploadURLRequest, response: gae.CreateUploadURLResponse,
                       ctx: CallContext, timeout: float) -> None:
    if request.gs_bucket_name:
        raise apiproxy_errors.ApplicationError(_ERR.PERMISSION_DENIED,
                                               "kiln has no Cloud Storage: gs_bucket_name is not supported")
    ask = pb.CreateUploadUrlRequest(success_path=request.success_path,
                                    max_bytes_per_blob=request.max_upload_size_per_blob_bytes,
                                    max_bytes_total=request.max_upload_size_bytes)
    reply = _rpc.call(stub().CreateUploadUrl, ask, timeout=timeout, table=ERRORS)
    response.url = kiln_blobstore.upload_url(ctx.environ, reply.upload_url.id)


def _delete_blob(request: gae.DeleteBlobRequest, response: Any, ctx: CallContext, timeout: float) -> None:
    # Keys that cannot be blob keys name nothing, and deleting nothing is not an error (App Engine's rule).
    keys = [k for k in request.blob_key if kiln_blobstore.could_be_key(k)]
    if keys:
        _rpc.call(stub().DeleteBlobs, pb.DeleteBlobsRequest(blob_keys=keys), timeout=timeout, table=ERRORS)


def _fetch_data(request: gae.FetchDataRequest, response: gae.FetchDataResponse, ctx: CallContext,
                timeout: float) -> None:
    ask = pb.FetchDataRequest(blob_key=request.blob_key, start_index=request.start_index,
                              end_index=request.end_index)
    response.data = _rpc.call(stub().FetchData, ask, timeout=timeout, table=ERRORS).data


_METHODS: dict[str, Callable[[Any, Any, CallContext, float], None]] = {
    "CreateUploadURL": _create_upload_url, "DeleteBlob": _delete_blob, "FetchData": _fetch_data,
}
