"""App Engine's Task Queue API (``google.appengine.api.taskqueue``), push and pull queues, served by taskqueue_svc.

::

    from kiln.api import taskqueue

    taskqueue.add(url="/work", params={"key": "42"})
    taskqueue.Queue("mail").add([taskqueue.Task(payload=b"...", countdown=60), ...])
    task = taskqueue.add(name="nightly-2026-12-06", url="/nightly")   # at most once: a second add raises
    taskqueue.Queue("mail").delete_tasks_by_name("nightly-2026-12-06")

    pulled = taskqueue.Queue("work")                                   # mode: pull in queue.yaml
    pulled.add(taskqueue.Task(payload=b"job", method="PULL", tag="user-7"))
    for task in pulled.lease_tasks(lease_seconds=60, max_tasks=100):   # or lease_tasks_by_tag(60, 100, tag=...)
        ...                                                             # nobody else holds it for 60 s
        pulled.delete_tasks(task)                                       # done; or modify_task_lease(task, 120)

Tasks are checked on the service (App Engine's limits and errors); a batch that has a malformed task adds nothing.
A named task whose name is taken raises :class:`TaskAlreadyExistsError` (still queued) or
:class:`TombstonedTaskError` (it ran or was deleted, for about seven days after), and the batch's other tasks are
added, as App Engine did. A leased task is held by its leaser alone until its lease ends; its ``eta`` is the
lease's end, which :meth:`Queue.modify_task_lease` checks (:class:`TaskLeaseExpiredError` once it has passed or the
task was leased again).

``add(..., transactional=True)`` inside :func:`kiln.api.datastore.RunInTransaction` adds up to five unnamed tasks
that run if and only if the transaction commits: they are checked (and named) by the service at once, kept with
the transaction and stored by the datastore with its commit. Outside a transaction it raises
:class:`BadTransactionStateError`, a named one :class:`InvalidTaskNameError`, a sixth in one transaction
:class:`TransactionalBadRequestError` (a :class:`DatastoreError` and a datastore ``BadRequestError``, as App
Engine's "Too many messages, maximum allowed 5"). Not served yet: ``dispatch_deadline``.
"""

from __future__ import annotations

import datetime
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from kiln.api import _rpc, datastore_errors
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc

DEFAULT_QUEUE = "default"
MAX_TASKS_PER_ADD = 100
MAX_TASK_NAME_LENGTH = 500
MAX_QUEUE_NAME_LENGTH = 100
MAX_PUSH_TASK_SIZE_BYTES = 100 * 1024
MAX_PULL_TASK_SIZE_BYTES = 2 ** 20
MAX_TASKS_PER_LEASE = 1000
MAX_TAG_LENGTH = 500
MAX_LEASE_SECONDS = 3600 * 24 * 7
MAX_URL_LENGTH = 2083
_MAX_COUNTDOWN_SECONDS = 30 * 86400
_TASK_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,500}$")
_QUEUE_NAME_RE = re.compile(r"^[a-zA-Z0-9-]{1,100}$")
_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT"})


# --- App Engine's errors ------------------------------------------------------------------------------------------

class Error(Exception):
    """Base class of the Task Queue API's errors."""


class UnknownQueueError(Error):
    """The queue is not declared in queue.yaml."""


class TransientError(Error):
    """The service could not do it now; try again."""


class InternalError(Error):
    """A fault of the service."""


class InvalidTaskError(Error):
    """The task is not valid."""


class InvalidTaskNameError(InvalidTaskError):
    """The task name is not valid."""


class TaskTooLargeError(InvalidTaskError):
    """The task is too large (url, headers and payload over 100 KB for a push task)."""


class TaskAlreadyExistsError(InvalidTaskError):
    """A task of that name is queued."""


class TombstonedTaskError(InvalidTaskError):
    """A task of that name ran or was deleted not long ago (App Engine kept names about seven days)."""


class InvalidUrlError(InvalidTaskError):
    """The url is not a relative path."""


class InvalidEtaError(InvalidTaskError):
    """The ETA is more than 30 days ahead."""


class BadTaskStateError(Error):
    """The task is in a state that does not allow this (added twice, or transactional: not served yet)."""


class InvalidQueueError(Error):
    """The queue is not valid."""


class InvalidQueueNameError(InvalidQueueError):
    """The queue name is not valid."""


class PermissionDeniedError(Error):
    """Not allowed."""


class DuplicateTaskNameError(Error):
    """Two tasks of one add have the same name."""


class TooManyTasksError(Error):
    """More than 100 tasks in one add."""


class InvalidTaskRetryOptionsError(Error):
    """The retry options are not valid."""


class InvalidQueueModeError(Error):
    """A push task or operation on a pull queue, or a pull one on a push queue."""


class InvalidLeaseTimeError(Error):
    """lease_seconds is out of range (more than 0 to a week; 0 allowed to end a lease)."""


class InvalidMaxTasksError(Error):
    """max_tasks is out of range (1 to 1000)."""


class InvalidTagError(Error):
    """The tag is over 500 bytes."""


class TaskLeaseExpiredError(Error):
    """The task's lease ended, or the task was leased again since this lease."""


class QueuePausedError(Error):
    """The queue is paused."""


class BadTransactionStateError(Error):
    """A transactional add outside a transaction."""


class DatastoreError(Error):
    """The datastore refused a transactional add."""


class TransactionalBadRequestError(DatastoreError, datastore_errors.BadRequestError):
    """A transactional add the datastore refuses (more than five tasks in one transaction)."""


_CODES: dict[str, type[Error]] = {
    "UNKNOWN_QUEUE": UnknownQueueError, "TRANSIENT_ERROR": TransientError, "INTERNAL_ERROR": InternalError,
    "TASK_TOO_LARGE": TaskTooLargeError, "INVALID_TASK_NAME": InvalidTaskNameError,
    "INVALID_QUEUE_NAME": InvalidQueueNameError, "INVALID_URL": InvalidUrlError,
    "PERMISSION_DENIED": PermissionDeniedError, "TASK_ALREADY_EXISTS": TaskAlreadyExistsError,
    "TOMBSTONED_TASK": TombstonedTaskError, "INVALID_ETA": InvalidEtaError, "INVALID_REQUEST": InvalidTaskError,
    "UNKNOWN_TASK": Error, "DUPLICATE_TASK_NAME": DuplicateTaskNameError, "TOO_MANY_TASKS": TooManyTasksError,
    "INVALID_QUEUE_MODE": InvalidQueueModeError, "TASK_LEASE_EXPIRED": TaskLeaseExpiredError,
    "INVALID_TAG": InvalidTagError, "QUEUE_PAUSED": QueuePausedError,
}
_ERRORS = _rpc.ErrorTable(codes=_CODES, statuses={grpc.StatusCode.UNAVAILABLE: TransientError,
                                                  grpc.StatusCode.DEADLINE_EXCEEDED: TransientError,
                                                  grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError},
                          unclassified=InternalError)


def _stub() -> taskqueue_pb2_grpc.TaskQueueServiceStub:
    return _rpc.stub("TASKQUEUE", taskqueue_pb2_grpc.TaskQueueServiceStub)


# --- tasks ---------------------------------------------------------------------------------------------------------

class TaskRetryOptions:
    """A task's own retry parameters (unset ones keep the queue's)."""

    def __init__(self, *, min_backoff_seconds: float | None = None, max_backoff_seconds: float | None = None,
                 task_age_limit: int | None = None, max_doublings: int | None = None,
                 task_retry_limit: int | None = None) -> None:
        for name, value in (("min_backoff_seconds", min_backoff_seconds), ("max_backoff_seconds",
                            max_backoff_seconds), ("task_age_limit", task_age_limit),
                            ("max_doublings", max_doublings), ("task_retry_limit", task_retry_limit)):
            if value is not None and not value >= 0:
                raise InvalidTaskRetryOptionsError(f"{name} must be 0 or more, got {value!r}")
        if (min_backoff_seconds is not None and max_backoff_seconds is not None
                and min_backoff_seconds > max_backoff_seconds):
            raise InvalidTaskRetryOptionsError("min_backoff_seconds must not be above max_backoff_seconds")
        self.min_backoff_seconds = min_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.task_age_limit = task_age_limit
        self.max_doublings = max_doublings
        self.task_retry_limit = task_retry_limit

    def _to_pb(self) -> pb.RetryOptions:
        out = pb.RetryOptions()
        if self.task_retry_limit is not None:
            out.task_retry_limit = int(self.task_retry_limit)
        if self.task_age_limit is not None:
            out.task_age_limit_seconds = int(self.task_age_limit)
        if self.min_backoff_seconds is not None:
            out.min_backoff_seconds = float(self.min_backoff_seconds)
        if self.max_backoff_seconds is not None:
            out.max_backoff_seconds = float(self.max_backoff_seconds)
        if self.max_doublings is not None:
            out.max_doublings = int(self.max_doublings)
        return out


class Task:
    """One task (App Engine's ``Task``): a push task, or with ``method="PULL"`` a pull task (a payload of up to 1 MiB
    and an optional ``tag``, no url, headers or target)."""

    def __init__(self, payload: bytes | str | None = None, *, name: str = "", method: str = "POST",
                 url: str | None = None, headers: Mapping[str, str] | None = None,
                 params: Mapping[str, Any] | None = None, countdown: float | None = None,
                 eta: datetime.datetime | None = None, target: str | None = None,
                 retry_options: TaskRetryOptions | None = None, tag: str | bytes | None = None) -> None:
        method = method.upper()
        self.tag = tag.encode("utf-8") if isinstance(tag, str) else tag
        self.retry_count = 0
        if method == "PULL":
            if url is not None or headers or target:
                raise InvalidTaskError("a pull task has no url, headers or target")
            if params is not None:
                if payload is not None:
                    raise InvalidTaskError("give params or payload, not both")
                payload = urllib.parse.urlencode(params, doseq=True)
                params = None
            if payload is None:
                raise InvalidTaskError("a pull task needs a payload (or params)")
            if self.tag is not None and len(self.tag) > MAX_TAG_LENGTH:
                raise InvalidTagError(f"the tag is {len(self.tag)} bytes; at most {MAX_TAG_LENGTH}")
        elif tag is not None:
            raise InvalidTaskError("only pull tasks (method='PULL') have a tag")
        elif method not in _METHODS:
            raise InvalidTaskError(f"method must be one of {', '.join(sorted(_METHODS))}, got {method!r}")
        if name and not _TASK_NAME_RE.match(name):
            raise InvalidTaskNameError(f"the task name does not match {_TASK_NAME_RE.pattern}: {name[:120]!r}")
        if countdown is not None and eta is not None:
            raise InvalidTaskError("give countdown or eta, not both")
        if params is not None and payload is not None:
            raise InvalidTaskError("give params or payload, not both")
        if payload is not None and method not in _BODY_METHODS and method != "PULL":
            raise InvalidTaskError(f"a payload may only be sent with POST or PUT, not {method}")
        self._headers = dict(headers or {})
        body = payload.encode("utf-8") if isinstance(payload, str) else payload
        query = ""
        if params is not None:
            encoded = urllib.parse.urlencode(params, doseq=True)
            if method in _BODY_METHODS:
                body = encoded.encode("ascii")
                self._headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
            else:
                query = encoded
        self._url = url
        if url is not None and (not url.startswith("/") or url.startswith("//")):
            raise InvalidUrlError(f"the url must be a relative path starting with /, got {url[:120]!r}")
        self._query = query
        self.payload = body
        self.method = method
        self.target = target
        self.retry_options = retry_options
        self._name = name
        self._countdown = countdown
        if eta is not None and eta.tzinfo is None:
            eta = eta.replace(tzinfo=datetime.timezone.utc)  # a naive ETA is UTC, as App Engine read it
        self._eta = eta if eta is not None else datetime.datetime.fromtimestamp(
            time.time() + (countdown or 0), datetime.timezone.utc)
        self.queue_name: str | None = None
        self.was_enqueued = False
        self.was_deleted = False
        limit = MAX_PULL_TASK_SIZE_BYTES if method == "PULL" else MAX_PUSH_TASK_SIZE_BYTES
        if self.size > limit:
            raise TaskTooLargeError(f"the task is {self.size} bytes; a {'pull' if method == 'PULL' else 'push'} task "
                                    f"may have at most {limit}")

    @property
    def name(self) -> str:
        """The task's name (chosen by the service once added, if it was given none)."""
        return self._name

    @property
    def url(self) -> str:
        """The relative URL the task requests (``/_ah/queue/QUEUE`` by default, once its queue is known)."""
        base = self._url if self._url is not None else f"/_ah/queue/{self.queue_name or DEFAULT_QUEUE}"
        if not self._query:
            return base
        return f"{base}{'&' if '?' in base else '?'}{self._query}"

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._headers)

    @property
    def eta(self) -> datetime.datetime:
        """When the task runs at the earliest (UTC)."""
        return self._eta

    @property
    def eta_posix(self) -> float:
        return self._eta.timestamp()

    @property
    def size(self) -> int:
        """Bytes counted against the limit: url, headers and payload (a pull task's payload alone)."""
        if self.method == "PULL":
            return len(self.payload or b"")
        return (len(self.url) + len(self.payload or b"")
                + sum(len(k) + len(v) for k, v in self._headers.items()))

    def _to_pb(self, queue_name: str) -> pb.Task:
        out = pb.Task(queue=queue_name, name=self._name, method=self.method, payload=self.payload or b"",
                      target=self.target or "")
        self.queue_name = self.queue_name or queue_name
        if self.tag is not None:
            out.tag = self.tag
        if self.method != "PULL":
            out.url = self.url
        for key, value in self._headers.items():
            out.headers.add(name=key, value=str(value).encode("latin-1"))
        if self._countdown is not None:
            out.countdown_seconds = float(self._countdown)
        else:
            out.eta.FromDatetime(self._eta)
        if self.retry_options is not None:
            out.retry_options.CopyFrom(self.retry_options._to_pb())
        return out

    def add(self, queue_name: str = DEFAULT_QUEUE, transactional: bool = False) -> Task:
        """Add this task to ``queue_name``."""
        result = Queue(queue_name).add(self, transactional=transactional)
        assert isinstance(result, Task)
        return result

    @classmethod
    def _leased(cls, queue_name: str, leased: pb.LeasedTask) -> Task:
        task = cls(leased.payload, name=leased.name, method="PULL",
                   tag=leased.tag if leased.HasField("tag") else None)
        task._eta = datetime.datetime.fromtimestamp(0, datetime.timezone.utc) + datetime.timedelta(
            microseconds=leased.eta_usec)
        task.retry_count = leased.retry_count
        task.queue_name = queue_name
        task.was_enqueued = True
        return task

    @property
    def _eta_usec(self) -> int:
        delta = self._eta - datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds

    def __repr__(self) -> str:
        return f"Task(name={self._name!r}, queue={self.queue_name!r}, url={self.url!r}, eta={self._eta.isoformat()})"


class QueueStatistics:
    """A queue's counts (App Engine's ``QueueStatistics``)."""

    def __init__(self, queue: Queue, tasks: int, executed_last_minute: int, in_flight: int,
                 enforced_rate: float, oldest_eta_usec: int | None = None, leased: int | None = None) -> None:
        self.queue = queue
        self.tasks = tasks
        self.oldest_eta_usec = oldest_eta_usec  # pull queues (None for push queues: not reported yet)
        self.leased = leased  # pull queues: tasks whose lease has not ended (kiln's addition)
        self.executed_last_minute = executed_last_minute
        self.in_flight = in_flight
        self.enforced_rate = enforced_rate


class Queue:
    """A queue of the app's queue.yaml (App Engine's ``Queue``)."""

    def __init__(self, name: str = DEFAULT_QUEUE) -> None:
        if not _QUEUE_NAME_RE.match(name):
            raise InvalidQueueNameError(f"the queue name does not match {_QUEUE_NAME_RE.pattern}: {name[:120]!r}")
        self.name = name

    def add(self, task: Task | Iterable[Task], transactional: bool = False) -> Task | list[Task]:
        """Add one task (returns it) or several (returns the list); see the module docstring for errors."""
        many = not isinstance(task, Task)
        batch = list(task) if not isinstance(task, Task) else [task]
        if len(batch) > MAX_TASKS_PER_ADD:
            raise TooManyTasksError(f"at most {MAX_TASKS_PER_ADD} tasks in one add, got {len(batch)}")
        for item in batch:
            if item.was_enqueued:
                raise BadTaskStateError(f"the task {item.name!r} was added already")
        txn = _transaction_of(batch) if transactional else None
        if not batch:
            return []
        request = pb.AddRequest(tasks=[t._to_pb(self.name) for t in batch], transaction=txn.handle if txn else b"")
        response = _rpc.call(_stub().Add, request, table=_ERRORS)
        if txn is not None:
            for sent, result in zip(request.tasks, response.results):
                sent.name = result.task_name  # the name and ETA the service chose: the datastore adds it so
                sent.eta.CopyFrom(result.eta)
            txn.tasks.extend(request.tasks)
        failure: Error | None = None
        for item, result in zip(batch, response.results):
            if not result.error:
                item._name = result.task_name
                item.queue_name = self.name
                item._eta = result.eta.ToDatetime(datetime.timezone.utc)
                item.was_enqueued = True
            elif failure is None or isinstance(failure, (TaskAlreadyExistsError, TombstonedTaskError)):
                failure = _CODES.get(result.error, Error)(f"task {item.name!r}: {result.error}")
        if failure is not None:
            raise failure
        return batch if many else batch[0]

    def delete_tasks_by_name(self, task_name: str | Iterable[str]) -> Any:
        """Delete tasks by name (a name, or several); their names stay tombstoned."""
        names = [task_name] if isinstance(task_name, str) else list(task_name)
        response = _rpc.call(_stub().Delete, pb.DeleteRequest(queue=self.name, task_names=names), table=_ERRORS)
        tasks = []
        for name, error in zip(names, response.errors):
            task = Task(name=name)
            task.queue_name = self.name
            task.was_deleted = not error
            tasks.append(task)
        return tasks[0] if isinstance(task_name, str) else tasks

    def delete_tasks(self, task: Task | Iterable[Task]) -> Any:
        """Delete tasks (a task, or several) by their names."""
        batch = [task] if isinstance(task, Task) else list(task)
        deleted = self.delete_tasks_by_name([t.name for t in batch])
        for item, result in zip(batch, deleted):
            item.was_deleted = result.was_deleted
        return task

    def purge(self) -> None:
        """Delete every task of the queue."""
        _rpc.call(_stub().Purge, pb.PurgeRequest(queue=self.name), table=_ERRORS)

    def fetch_statistics(self, deadline: float = 10) -> QueueStatistics:
        """The queue's counts."""
        response = _rpc.call(_stub().QueueStats, pb.QueueStatsRequest(queues=[self.name], with_oldest_eta=True), timeout=deadline,
                             table=_ERRORS)
        [stats] = response.queues
        pull = stats.mode == "pull"
        return QueueStatistics(self, stats.tasks, stats.executed_last_minute, stats.in_flight,
                               stats.rate_per_second,
                               oldest_eta_usec=stats.oldest_eta_usec if stats.oldest_eta_usec >= 0 else None,
                               leased=stats.leased if pull else None)

    def lease_tasks(self, lease_seconds: float, max_tasks: int, deadline: float = 10) -> list[Task]:
        """Lease up to ``max_tasks`` due tasks of this pull queue for ``lease_seconds`` (more than 0, at most a
        week), oldest ETA first; each is held by this caller alone until its lease ends."""
        return self._lease(pb.LeaseRequest(queue=self.name, lease_seconds=_lease_seconds(lease_seconds, lease=True),
                                           max_tasks=_max_tasks(max_tasks)), deadline)

    def lease_tasks_by_tag(self, lease_seconds: float, max_tasks: int, tag: str | bytes | None = None,
                           deadline: float = 10) -> list[Task]:
        """As :meth:`lease_tasks`, only tasks tagged ``tag`` (without one: the tag of the oldest due task)."""
        request = pb.LeaseRequest(queue=self.name, lease_seconds=_lease_seconds(lease_seconds, lease=True),
                                  max_tasks=_max_tasks(max_tasks), group_by_tag=True)
        if tag is not None:
            request.tag = tag.encode("utf-8") if isinstance(tag, str) else tag
            if len(request.tag) > MAX_TAG_LENGTH:
                raise InvalidTagError(f"the tag is {len(request.tag)} bytes; at most {MAX_TAG_LENGTH}")
        return self._lease(request, deadline)

    def _lease(self, request: pb.LeaseRequest, deadline: float) -> list[Task]:
        response = _rpc.call(_stub().Lease, request, timeout=deadline, table=_ERRORS)
        return [Task._leased(self.name, item) for item in response.tasks]

    def modify_task_lease(self, task: Task, lease_seconds: float) -> None:
        """Make the lease of ``task`` (leased by this caller) end ``lease_seconds`` from now (0: now, so that it may
        be leased again); the task's ``eta`` becomes the new end."""
        response = _rpc.call(_stub().ModifyLease, pb.ModifyLeaseRequest(
            queue=self.name, task_name=task.name, eta_usec=task._eta_usec,
            lease_seconds=_lease_seconds(lease_seconds, lease=False)), table=_ERRORS)
        task._eta = datetime.datetime.fromtimestamp(0, datetime.timezone.utc) + datetime.timedelta(
            microseconds=response.eta_usec)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"


def _lease_seconds(value: float, *, lease: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("lease_seconds must be a float or an integer")
    if not (value > 0 if lease else value >= 0) or not value <= MAX_LEASE_SECONDS:
        raise InvalidLeaseTimeError(f"lease_seconds must be {'more than 0' if lease else '0 or more'} and at most "
                                    f"{MAX_LEASE_SECONDS}, got {value!r}")
    return float(value)


def _max_tasks(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("max_tasks must be an integer")
    if not 1 <= value <= MAX_TASKS_PER_LEASE:
        raise InvalidMaxTasksError(f"max_tasks must be 1 to {MAX_TASKS_PER_LEASE}, got {value}")
    return value


MAX_TASKS_PER_TRANSACTION = 5


def _transaction_of(batch: list[Task]) -> Any:
    """The running datastore transaction a transactional add joins (App Engine's checks, in its order)."""
    from kiln.api import datastore  # noqa: PLC0415 - datastore is loaded only by apps that use transactions

    for item in batch:
        if item.name:
            raise InvalidTaskNameError("A task bound to a transaction cannot be named.")
    txn = datastore._current()
    if txn is None:
        raise BadTransactionStateError("Transactional adds are not allowed outside of transactions")
    if len(txn.tasks) + len(batch) > MAX_TASKS_PER_TRANSACTION:
        raise TransactionalBadRequestError(f"Too many messages, maximum allowed {MAX_TASKS_PER_TRANSACTION}")
    return txn


def add(*args: Any, **kwargs: Any) -> Task:
    """``Task(*args, **kwargs).add(queue_name=..., transactional=...)``."""
    queue_name = kwargs.pop("queue_name", DEFAULT_QUEUE)
    transactional = kwargs.pop("transactional", False)
    return Task(*args, **kwargs).add(queue_name=queue_name, transactional=transactional)
