"""The Blobstore service's errors: App Engine's BlobstoreServiceError codes on kiln's error table.

Each class sits under the :mod:`kiln.errors` class that gives its gRPC status (looked up along the MRO by the
server's interceptor) and carries ``error_code``, the ``BlobstoreErrorCode`` name, which the interceptor sends in
the ``kiln-error-code`` trailing metadata so that ``kiln.api.blobstore`` raises App Engine's exception class.
"""

from __future__ import annotations

from kiln import errors


class BlobstoreError(errors.KilnError):
    """Root of the Blobstore service's errors; ``error_code`` names the ``BlobstoreErrorCode`` value."""

    error_code = "UNSPECIFIED"


class BlobNotFoundError(BlobstoreError, errors.NotFoundError):
    """No blob of the calling app has the key (another app's key included)."""

    error_code = "BLOB_NOT_FOUND"


class InvalidBlobKeyError(BlobstoreError, errors.BadRequestError):
    """The key is empty, too long, or has characters no blob key has."""

    error_code = "INVALID_BLOB_KEY"


class DataIndexOutOfRangeError(BlobstoreError, errors.BadRequestError):
    """A fetch's start is negative or its end is before its start."""

    error_code = "DATA_INDEX_OUT_OF_RANGE"


class BlobFetchSizeTooLargeError(BlobstoreError, errors.TooLargeError):
    """A fetch asks for more than MAX_BLOB_FETCH_SIZE bytes."""

    error_code = "BLOB_FETCH_SIZE_TOO_LARGE"


class ArgumentOutOfRangeError(BlobstoreError, errors.BadRequestError):
    """A limit, a page size or a count is out of its range."""

    error_code = "ARGUMENT_OUT_OF_RANGE"


class UrlTooLongError(BlobstoreError, errors.BadRequestError):
    """The success path is too long (App Engine's URL_TOO_LONG)."""

    error_code = "URL_TOO_LONG"


class BlobTooLargeError(BlobstoreError, errors.TooLargeError):
    """The blob grew past its limit (the stream's max_bytes or the service's max_blob_bytes)."""

    error_code = "BLOB_TOO_LARGE"


class UploadUrlNotFoundError(BlobstoreError, errors.NotFoundError):
    """The upload URL names no record of the app."""

    error_code = "UPLOAD_URL_NOT_FOUND"


class UploadUrlUsedError(BlobstoreError, errors.NotFoundError):
    """The upload URL was used already (each is good for one upload)."""

    error_code = "UPLOAD_URL_USED"


class UploadUrlExpiredError(BlobstoreError, errors.FailedPreconditionError):
    """The upload URL expired before it was used."""

    error_code = "UPLOAD_URL_EXPIRED"
