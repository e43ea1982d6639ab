"""The mail service's errors: App Engine's MailServiceError codes on kiln's error table.

Each class sits under the :mod:`kiln.errors` class that gives its gRPC status and carries ``error_code``, the
``MailErrorCode`` name, which the server sends in the ``kiln-error-code`` trailing metadata so that
``kiln.api.mail`` raises App Engine's exception class.
"""

from __future__ import annotations

from kiln import errors


class MailError(errors.KilnError):
    """Root of the mail service's errors; ``error_code`` names the ``MailErrorCode`` value."""

    error_code = "UNSPECIFIED"


class BadMessageError(MailError, errors.BadRequestError):
    """The message is malformed: a missing subject or body, a bad field (App Engine's BadRequestError)."""

    error_code = "BAD_REQUEST"


class MessageTooLargeError(MailError, errors.TooLargeError):
    """The rendered message is over the size limit (App Engine answers BAD_REQUEST)."""

    error_code = "BAD_REQUEST"


class UnauthorizedSenderError(MailError, errors.PermissionDeniedError):
    """The sender is not an administrator, the signed-in user or an address of the app (InvalidSenderError)."""

    error_code = "UNAUTHORIZED_SENDER"


class InvalidAttachmentTypeError(MailError, errors.BadRequestError):
    """An attachment's extension is blocked, or a ZIP attachment holds such a file."""

    error_code = "INVALID_ATTACHMENT_TYPE"


class InvalidHeaderNameError(MailError, errors.BadRequestError):
    """An extra header is not on App Engine's allow-list (or is not a header name at all)."""

    error_code = "INVALID_HEADER_NAME"


class InvalidContentIdError(MailError, errors.BadRequestError):
    """An attachment's Content-ID is malformed."""

    error_code = "INVALID_CONTENT_ID"


class MissingRecipientsError(MailError, errors.BadRequestError):
    """The message has no recipient in to, cc or bcc."""

    error_code = "MISSING_RECIPIENTS"


class InvalidEmailError(MailError, errors.BadRequestError):
    """An address is malformed (or a field smuggles a header through a line break)."""

    error_code = "INVALID_EMAIL"
