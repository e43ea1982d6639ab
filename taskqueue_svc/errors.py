"""App Engine's task queue errors as kiln errors: each carries App Engine's error name as its stable code
(``kiln-error-code``), so a client names the exception App Engine's SDK would raise."""

from __future__ import annotations

from kiln.errors import (BadRequestError, FailedPreconditionError, NotFoundError, TooLargeError,
                         UnavailableError)


class InvalidRequestError(BadRequestError):
    """A malformed task (method, headers, payload with a body-less method, retry options...)."""

    error_code = "INVALID_REQUEST"


class UnknownQueueError(NotFoundError):
    """The queue is not declared in the app's queue.yaml."""

    error_code = "UNKNOWN_QUEUE"


class InvalidQueueNameError(BadRequestError):
    """The queue name does not match ``^[a-zA-Z0-9-]{1,100}$``."""

    error_code = "INVALID_QUEUE_NAME"


class InvalidQueueModeError(FailedPreconditionError):
    """A push task or operation on a pull queue, or a pull one on a push queue."""

    error_code = "INVALID_QUEUE_MODE"


class TaskTooLargeError(TooLargeError):
    """The task (url, headers and payload) is over the queue's limit."""

    error_code = "TASK_TOO_LARGE"


class InvalidTaskNameError(BadRequestError):
    """The task name does not match ``^[a-zA-Z0-9_-]{1,500}$``."""

    error_code = "INVALID_TASK_NAME"


class InvalidUrlError(BadRequestError):
    """The url is not a relative path."""

    error_code = "INVALID_URL"


class InvalidEtaError(BadRequestError):
    """The ETA is more than 30 days ahead, or the countdown is negative."""

    error_code = "INVALID_ETA"


class DuplicateTaskNameError(BadRequestError):
    """Two tasks of one batch have the same name."""

    error_code = "DUPLICATE_TASK_NAME"


class TooManyTasksError(BadRequestError):
    """More than 100 tasks in one call."""

    error_code = "TOO_MANY_TASKS"


class TransientError(UnavailableError):
    """NATS JetStream could not be reached; nothing of the call was kept."""

    error_code = "TRANSIENT_ERROR"


class InvalidTagError(BadRequestError):
    """A pull task's tag is over 500 bytes."""

    error_code = "INVALID_TAG"


class UnknownTaskError(NotFoundError):
    """No task of that name (ModifyLease)."""

    error_code = "UNKNOWN_TASK"


class TombstonedTaskError(FailedPreconditionError):
    """The task was deleted (ModifyLease)."""

    error_code = "TOMBSTONED_TASK"


class TaskLeaseExpiredError(FailedPreconditionError):
    """ModifyLease: the lease has ended, or its ETA is not the current lease's."""

    error_code = "TASK_LEASE_EXPIRED"
