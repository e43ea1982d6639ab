"""Datastore errors under App Engine's names, mirroring ``google.appengine.api.datastore_errors``.

App Engine apps catch these names; kiln's services raise the errors of
:mod:`kiln.errors`. Each App Engine name is therefore either an alias of the
kiln error the service raises (``BadRequestError``, ``NeedIndexError``) or a
subclass of it, so that ``except datastore_errors.X`` catches what arrives off
the wire. ``Error`` is :class:`kiln.errors.KilnError` itself: every error a
datastore call raises on purpose is a ``datastore_errors.Error``.
"""

from __future__ import annotations

import grpc

from kiln import errors
from kiln.api import _rpc
from kiln.api.datastore_types import BadKeyError, BadValueError

__all__ = [
    "BadArgumentError", "BadFilterError", "BadKeyError", "BadPropertyError", "BadQueryError",
    "BadRequestError", "BadValueError", "CommittedButStillApplying", "ConcurrentTransactionError",
    "EntityNotFoundError", "Error", "InternalError", "NeedIndexError", "QueryNotFoundError",
    "ReferencePropertyResolveError", "Rollback", "Timeout", "TransactionFailedError",
    "TransactionNotFoundError",
]

#: The root: every datastore error kiln raises on purpose.
Error = errors.KilnError
#: The service refused the request as invalid (gRPC INVALID_ARGUMENT).
BadRequestError = errors.BadRequestError
#: A query needs a composite index; the message is the ``index.yaml`` entry to add.
NeedIndexError = errors.NeedIndexError
#: One transaction attempt lost to a concurrent commit (``RunInTransaction`` retries it).
ConcurrentTransactionError = errors.ConcurrentTransactionError


class BadPropertyError(errors.BadRequestError):
    """A property name is invalid (empty, reserved or too long)."""


class BadArgumentError(errors.BadRequestError):
    """An argument to a datastore function has the wrong type or value."""


class BadFilterError(errors.BadRequestError):
    """A query filter string or its value is invalid."""


class BadQueryError(errors.BadRequestError):
    """A query is invalid as a whole (a bad GQL string, an impossible combination)."""


class EntityNotFoundError(errors.NotFoundError):
    """``Get`` of a single key found no entity."""


class QueryNotFoundError(errors.NotFoundError):
    """A query that was expected to be running is not."""


class TransactionNotFoundError(errors.NotFoundError):
    """The transaction handle is unknown or already finished."""


class Rollback(errors.KilnError):  # noqa: N818 - App Engine's name
    """Raised by a transaction function to roll back silently.

    ``RunInTransaction`` catches it, rolls the transaction back and returns
    ``None``; it never propagates to the caller.
    """


class TransactionFailedError(errors.ConflictError):
    """A transaction could not be committed after all its retries (too much contention).

    Nothing the transaction wrote was applied; trying again later may succeed.
    """


class InternalError(errors.KilnError):
    """The datastore failed in a way it did not classify."""


class Timeout(errors.DeadlineExceededError):  # noqa: N818 - App Engine's name
    """A datastore call ran past its deadline; it may or may not have been applied."""


class CommittedButStillApplying(Timeout):  # noqa: N818 - App Engine's name
    """A commit succeeded but is not yet visible to every query."""


class ReferencePropertyResolveError(errors.NotFoundError):
    """A ``ReferenceProperty`` points at an entity that does not exist (any more)."""


# What the transport raises for the service's statuses, as App Engine apps catch them: Timeout for a
# deadline, InternalError for what kiln's classes leave unclassified (both still subclass the generic
# kiln classes, except for the unclassified root).
ERRORS = _rpc.ErrorTable(statuses={grpc.StatusCode.DEADLINE_EXCEEDED: Timeout}, unclassified=InternalError)
