"""The app identity service's errors: App Engine's AppIdentityServiceError codes on kiln's error table.

Each class sits under the :mod:`kiln.errors` class that gives its gRPC status and carries ``error_code``, App
Engine's code name, which the server's interceptor sends in the ``kiln-error-code`` trailing metadata so that the
SDK's module raises its own exception (``BlobSizeTooLarge``, ``InvalidScope``…).
"""

from __future__ import annotations

from kiln import errors


class BlobTooLargeError(errors.TooLargeError):
    """The bytes to sign are over the limit (App Engine's BlobSizeTooLarge)."""

    error_code = "BLOB_TOO_LARGE"


class UnknownScopeError(errors.BadRequestError):
    """No scope, too many, or a malformed one (App Engine's InvalidScope)."""

    error_code = "UNKNOWN_SCOPE"


class NotAValidAppError(errors.BadRequestError):
    """The app id of a certificate lookup is not an app id."""

    error_code = "NOT_A_VALID_APP"


class KeySecretMismatchError(errors.FailedPreconditionError):
    """A stored private key cannot be decrypted: the service runs with another key_secret than made it."""

    error_code = "UNKNOWN_ERROR"
