"""The images service's errors: App Engine's ImagesServiceError codes on kiln's error table.

Each class sits under the :mod:`kiln.errors` class that gives its gRPC status (looked up along the MRO by the
server's interceptor) and carries ``error_code``, App Engine's code name, which the interceptor sends in the
``kiln-error-code`` trailing metadata so that ``kiln.api.images`` raises App Engine's exception class.
"""

from __future__ import annotations

from kiln import errors


class ImagesError(errors.KilnError):
    """Root of the images service's errors; ``error_code`` names the ``ImagesErrorCode`` value."""

    error_code = "UNSPECIFIED"


class BadTransformDataError(ImagesError, errors.BadRequestError):
    """A transform, an output setting or a composite layer is invalid (App Engine's BadRequestError)."""

    error_code = "BAD_TRANSFORM_DATA"


class NotImageError(ImagesError, errors.BadRequestError):
    """The bytes are not in any image format the service reads (App Engine's NotImageError)."""

    error_code = "NOT_IMAGE"


class BadImageDataError(ImagesError, errors.BadRequestError):
    """The bytes start like an image but are truncated or corrupt (App Engine's BadImageError)."""

    error_code = "BAD_IMAGE_DATA"


class ImageTooLargeError(ImagesError, errors.TooLargeError):
    """The input, its pixel count or the encoded result is over a limit (App Engine's LargeImageError)."""

    error_code = "IMAGE_TOO_LARGE"


class InvalidBlobKeyError(ImagesError, errors.BadRequestError):
    """The image was named by a blob key that names nothing; kiln has no Blobstore."""

    error_code = "INVALID_BLOB_KEY"


class ObjectNotFoundError(ImagesError, errors.NotFoundError):
    """The image was named by a Cloud Storage object that does not exist; kiln has no Cloud Storage."""

    error_code = "OBJECT_NOT_FOUND"


class AccessDeniedError(ImagesError, errors.PermissionDeniedError):
    """The app may not read the named object (kept for the contract; kiln stores no objects to deny)."""

    error_code = "ACCESS_DENIED"


class TransformationFailedError(ImagesError):
    """Pillow failed on a decoded image for a reason no other code names (App Engine's TransformationError)."""

    error_code = "UNSPECIFIED"
