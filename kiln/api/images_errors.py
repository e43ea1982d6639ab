"""App Engine's Images API exceptions (``google.appengine.api.images``), re-exported by :mod:`kiln.api.images`."""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Base class of the Images API's errors."""


class TransformationError(Error):
    """The transformation failed for a reason no other class names."""


class BadRequestError(Error):
    """The arguments were invalid: a transform's parameters, the output encoding, too many transforms…"""


class NotImageError(Error):
    """The data is not an image (empty, or in no format the service reads)."""


class BadImageError(Error):
    """The data starts like an image but is corrupt or truncated."""


class LargeImageError(Error):
    """The image is too large to process: over 32 MB, over the pixel limit, or a result over 32 MB."""


class InvalidBlobKeyError(Error):
    """The blob key names no blob (kiln has no Blobstore, so none does)."""

    def __init__(self, blob_key: Any = None) -> None:
        super().__init__(blob_key)
        self._blob_key = blob_key

    def __str__(self) -> str:
        return f"InvalidBlobKeyError: {self._blob_key!r}" if self._blob_key else "InvalidBlobKeyError"


class BlobKeyRequiredError(Error):
    """A blob key is required for this operation."""


class UnsupportedSizeError(Error):
    """The size asked for is not supported by the operation."""


class AccessDeniedError(Error):
    """The app may not read the image's object."""


class ObjectNotFoundError(Error):
    """The Cloud Storage object named does not exist (kiln has no Cloud Storage)."""
