"""kiln's error hierarchy and the one table that maps errors to wire codes.

Every error a kiln component raises on purpose is a :class:`KilnError`. The table
``ERROR_CODES`` gives each class its gRPC status code, HTTP status and a stable
string code; lookups walk the MRO so a subclass inherits its parent's entry
unless it has its own. Anything that is not a ``KilnError`` is an internal
error: servers log its traceback and answer ``INTERNAL`` without details.
"""

from __future__ import annotations

import dataclasses

import grpc


class KilnError(Exception):
    """Root of every error kiln raises on purpose."""


class BadRequestError(KilnError):
    """The caller sent something invalid; the message names what."""


class NotFoundError(KilnError):
    """The named thing does not exist."""


class AlreadyExistsError(KilnError):
    """The thing to create exists already."""


class PermissionDeniedError(KilnError):
    """The caller is known but not allowed to do this."""


class UnauthenticatedError(KilnError):
    """The caller sent no credentials, or credentials that are not valid."""


class ConflictError(KilnError):
    """A concurrent change won; retrying may succeed."""


class TooLargeError(BadRequestError):
    """A request or value is larger than the limit allows."""


class FailedPreconditionError(KilnError):
    """The request is valid but the system is not in a state to serve it."""


class NeedIndexError(FailedPreconditionError):
    """A datastore query needs a composite index that ``index.yaml`` does not declare.

    The message carries the ``index.yaml`` entry to add, as App Engine's did.
    """


class NoOutboxError(FailedPreconditionError):
    """mail_svc delivers through a relay, so it keeps no development outbox to list."""


class ConcurrentTransactionError(ConflictError):
    """A datastore transaction lost to a concurrent commit on one of its entity groups."""


class DeadlineExceededError(KilnError):
    """The operation ran past its deadline."""


class UnavailableError(KilnError):
    """A dependency (storage, NATS, another service) cannot be reached now."""


class UnimplementedError(KilnError):
    """The operation is part of the contract but not served by this build."""


class ConfigError(KilnError):
    """A configuration value or file is invalid; the message names the key."""


# The gRPC trailing-metadata key that carries an error's stable code (servers set it, clients read it).
ERROR_CODE_KEY = "kiln-error-code"


@dataclasses.dataclass(frozen=True)
class ErrorCode:
    """How one error class travels: gRPC status, HTTP status, stable code."""

    grpc: grpc.StatusCode
    http: int
    code: str


ERROR_CODES: dict[type[BaseException], ErrorCode] = {
    KilnError: ErrorCode(grpc.StatusCode.UNKNOWN, 500, "UNKNOWN"),
    BadRequestError: ErrorCode(grpc.StatusCode.INVALID_ARGUMENT, 400, "BAD_REQUEST"),
    TooLargeError: ErrorCode(grpc.StatusCode.INVALID_ARGUMENT, 413, "TOO_LARGE"),
    ConfigError: ErrorCode(grpc.StatusCode.INVALID_ARGUMENT, 400, "CONFIG"),
    NotFoundError: ErrorCode(grpc.StatusCode.NOT_FOUND, 404, "NOT_FOUND"),
    AlreadyExistsError: ErrorCode(grpc.StatusCode.ALREADY_EXISTS, 409, "ALREADY_EXISTS"),
    PermissionDeniedError: ErrorCode(grpc.StatusCode.PERMISSION_DENIED, 403, "PERMISSION_DENIED"),
    UnauthenticatedError: ErrorCode(grpc.StatusCode.UNAUTHENTICATED, 401, "UNAUTHENTICATED"),
    ConflictError: ErrorCode(grpc.StatusCode.ABORTED, 409, "CONFLICT"),
    FailedPreconditionError: ErrorCode(grpc.StatusCode.FAILED_PRECONDITION, 412, "FAILED_PRECONDITION"),
    NeedIndexError: ErrorCode(grpc.StatusCode.FAILED_PRECONDITION, 412, "NEED_INDEX"),
    NoOutboxError: ErrorCode(grpc.StatusCode.FAILED_PRECONDITION, 412, "NO_OUTBOX"),
    ConcurrentTransactionError: ErrorCode(grpc.StatusCode.ABORTED, 409, "CONCURRENT_TRANSACTION"),
    DeadlineExceededError: ErrorCode(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "DEADLINE_EXCEEDED"),
    UnavailableError: ErrorCode(grpc.StatusCode.UNAVAILABLE, 503, "UNAVAILABLE"),
    UnimplementedError: ErrorCode(grpc.StatusCode.UNIMPLEMENTED, 501, "UNIMPLEMENTED"),
}

INTERNAL = ErrorCode(grpc.StatusCode.INTERNAL, 500, "INTERNAL")


def code_for(exc: BaseException) -> ErrorCode:
    """Return the wire codes for ``exc``, walking its MRO; unknown errors are INTERNAL."""
    for cls in type(exc).__mro__:
        found = ERROR_CODES.get(cls)
        if found is not None:
            return found
    return INTERNAL


_BY_GRPC: dict[grpc.StatusCode, type[KilnError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def from_grpc(code: grpc.StatusCode, details: str | None, error_code: str | None = None) -> KilnError:
    """Turn a gRPC status back into the matching kiln error (clients use this).

    ``error_code`` is the stable code from the ``kiln-error-code`` trailing
    metadata; when it names a class with the same status, that class is used
    (e.g. ``NEED_INDEX`` gives :class:`NeedIndexError`), else the status decides.
    """
    for cls, wire in ERROR_CODES.items():
        if error_code and wire.code == error_code and wire.grpc == code and issubclass(cls, KilnError):
            return cls(details or code.name)
    return _BY_GRPC.get(code, KilnError)(details or code.name)
