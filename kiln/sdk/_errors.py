"""How a kiln service's error becomes the SDK's: an :class:`~kiln.api._rpc.ErrorTable` whose entries are
``apiproxy_errors.ApplicationError`` with the App Engine service's own error code.

kiln's services send App Engine's code names (``INVALID_URL``, ``NOT_IMAGE``…) in the ``kiln-error-code`` trailer,
which :func:`kiln.api._rpc.error_from` reads for every ``kiln.api`` module; a :mod:`kiln.sdk` service gives it a table
of the same names mapped to the SDK's enum, so the SDK's module raises its own exception (``InvalidURLError``,
``NotImageError``…). What a table does not name stays a :class:`kiln.errors.KilnError`, which the proxy reports as
the SDK's ``RPCFailedError`` (or ``DeadlineExceededError``).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc

__all__ = ["application_error", "table"]


def application_error(code: int) -> _rpc.ErrorFactory:
    """A factory of the SDK's ``ApplicationError`` with ``code``, carrying the service's message as its detail."""
    return lambda detail: apiproxy_errors.ApplicationError(code, detail)


def table(codes: Mapping[str, int], statuses: Mapping[grpc.StatusCode, int] | None = None) -> _rpc.ErrorTable:
    """An error table: kiln's code name (or, failing that, the gRPC status) → the App Engine service's error code."""
    return _rpc.ErrorTable(codes={name: application_error(code) for name, code in codes.items()},
                           statuses={status: application_error(code) for status, code in (statuses or {}).items()})
