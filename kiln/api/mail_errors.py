"""App Engine's Mail API exceptions (``google.appengine.api.mail_errors``), re-exported by :mod:`kiln.api.mail`."""

from __future__ import annotations


class Error(Exception):
    """Base class of the Mail API's errors."""


class BadRequestError(Error):
    """The mail service refused the message as malformed (or too large)."""


class InvalidSenderError(Error):
    """The sender may not send for this app: not an administrator, not the signed-in user, and not an
    address at the app's mail domain."""


class InvalidEmailError(Error):
    """An address is not a valid email address."""


class InvalidAttachmentTypeError(Error):
    """An attachment's file extension is blocked (or a ZIP attachment holds such a file)."""


class InvalidHeaderNameError(Error):
    """An extra header is not one App Engine allows."""


class InvalidContentIdError(Error):
    """An attachment's Content-ID is not of the form ``<name>``."""


class MissingRecipientsError(Error):
    """The message has no recipient (to, cc and bcc are all empty)."""


class MissingSenderError(Error):
    """The message has no sender."""


class MissingSubjectError(Error):
    """The message has no subject."""


class MissingBodyError(Error):
    """The message has neither a body nor an HTML body."""


class PayloadEncodingError(Error):
    """A payload could not be decoded with its transfer encoding."""


class UnknownEncodingError(PayloadEncodingError):
    """A payload names a transfer encoding nobody knows."""


class UnknownCharsetError(Error):
    """A payload names a character set nobody knows."""
