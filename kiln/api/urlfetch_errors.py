"""App Engine's URL Fetch exceptions (``google.appengine.api.urlfetch_errors``)."""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Base class of URL Fetch errors."""


class DownloadError(Error):
    """The URL could not be fetched (connection, DNS, a malformed reply, a forbidden destination…)."""


class DNSLookupError(DownloadError):
    """The host name could not be resolved."""


class InvalidURLError(Error):
    """The URL is not valid: scheme, host or port (App Engine allows 80-90, 440-450, 1024-65535)."""


class InvalidMethodError(Error):
    """The method is not GET, POST, HEAD, PUT, DELETE or PATCH."""


class PayloadTooLargeError(InvalidURLError):
    """The request payload is over 10 MB."""


class ResponseTooLargeError(Error):
    """The response is over 32 MB and ``allow_truncated`` was not set; ``response`` holds the first part."""

    def __init__(self, response: Any = None) -> None:
        super().__init__("the response was too large")
        self.response = response


class DeadlineExceededError(DownloadError):
    """The fetch did not finish within its deadline."""


class SSLCertificateError(Error):
    """The server's certificate is not valid, and ``validate_certificate`` asked for it to be."""


class TooManyRedirectsError(DownloadError):
    """More than 5 redirects were followed."""


class ConnectionClosedError(DownloadError):
    """The server closed the connection before answering."""


class MalformedReplyError(DownloadError):
    """The server's reply was not valid HTTP."""


class InternalTransientError(Error):
    """A temporary failure of the URL Fetch service; retrying may succeed."""


class ForbiddenDestinationError(DownloadError):
    """kiln: the destination is a loopback, private, link-local or cluster-internal address not allowed for the
    app (App Engine's production service could not reach such addresses either)."""
