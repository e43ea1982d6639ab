"""What makes a push task valid, as App Engine's Task Queue service decided it, and the stored form of a valid one.

Pure functions over the contract's messages and the app's queues (:mod:`kiln_platform.queueyaml`), with the time
passed in: :func:`check_batch` turns an ``AddRequest`` into the :class:`~kiln.pb.taskqueue.v1.taskqueue_pb2.StoredTask`
of each task, or raises the error of the first task that is not valid (App Engine's error names, see
:mod:`taskqueue_svc.errors`), so a refused batch stores nothing.
"""

from __future__ import annotations

import datetime
import re
import secrets

from kiln.errors import KilnError
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln_platform import httpfields
from kiln_platform.queueyaml import DEFAULT_QUEUE, QUEUE_NAME_RE, TARGET_RE, Queue, RetryParameters
from taskqueue_svc import errors

MAX_TASKS_PER_ADD = 100
MAX_TASKS_PER_TRANSACTION = 5  # App Engine's limit on a transaction's tasks
MAX_PUSH_TASK_BYTES = 100 * 1024  # App Engine's limit for a push task: url, headers and payload
MAX_PULL_TASK_BYTES = 1024 * 1024  # App Engine's limit for a pull task's payload
MAX_TAG_BYTES = 500
MAX_URL_LENGTH = 2083
MAX_ETA_AHEAD = datetime.timedelta(days=30)
TASK_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,500}$")
METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT"})
# Headers only the platform sets (compared with "_" read as "-", as the app reads them) and ones the router sets.
_PLATFORM_PREFIXES = ("x-appengine-", "x-kiln-")
_ROUTER_SET = frozenset({"host", "content-length"})
# The one App Engine header a task may carry: the namespace of the request that added it (Google's SDK sets it).
NAMESPACE_HEADER = "X-AppEngine-Current-Namespace"
NAMESPACE_RE = re.compile(r"^[0-9A-Za-z._-]{0,100}$")


def queue_for(name: str, queues: dict[str, Queue]) -> Queue:
    """The app's queue called ``name`` (empty: the default queue).

    Raises:
        InvalidQueueNameError, UnknownQueueError.
    """
    name = name or DEFAULT_QUEUE
    if not QUEUE_NAME_RE.match(name):
        raise errors.InvalidQueueNameError(f"queue name {name[:120]!r} must be 1 to 100 letters, digits and hyphens")
    found = queues.get(name)
    if found is None:
        raise errors.UnknownQueueError(f"queue {name!r} is not declared in the app's queue.yaml")
    return found


def new_name() -> str:
    """A name for a task added without one (unguessable, so an app's own names never meet it)."""
    return "task-" + secrets.token_hex(16)


def check_batch(request: pb.AddRequest, app_id: str, queues: dict[str, Queue],
                now: datetime.datetime) -> list[pb.StoredTask]:
    """The stored form of every task of ``request``, or the error of the first task that is not valid.

    Raises:
        TooManyTasksError, DuplicateTaskNameError, InvalidRequestError and every error of :func:`check_task`.
    """
    if not request.tasks:
        raise errors.InvalidRequestError("add at least one task")
    if len(request.tasks) > MAX_TASKS_PER_ADD:
        raise errors.TooManyTasksError(f"at most {MAX_TASKS_PER_ADD} tasks in one add, got {len(request.tasks)}")
    if request.transaction:
        if len(request.tasks) > MAX_TASKS_PER_TRANSACTION:
            raise errors.TooManyTasksError(f"at most {MAX_TASKS_PER_TRANSACTION} tasks in one transaction, got "
                                           f"{len(request.tasks)}")
        for i, task in enumerate(request.tasks):
            if task.name:
                raise errors.InvalidTaskNameError(f"task {i}: a task bound to a transaction cannot be named")
    out = []
    seen: set[tuple[str, str]] = set()
    for i, task in enumerate(request.tasks):
        try:
            stored = check_task(task, app_id, queues, now)
        except KilnError as exc:
            raise type(exc)(f"task {i}: {exc}") from None
        key = (stored.queue, stored.name)
        if stored.named and key in seen:
            raise errors.DuplicateTaskNameError(f"task {i}: the name {stored.name!r} is used twice in this batch")
        seen.add(key)
        out.append(stored)
    if len({task.method == "PULL" for task in out}) > 1:
        raise errors.InvalidRequestError("a batch's tasks are all pull tasks or all push tasks")
    return out


def check_task(task: pb.Task, app_id: str, queues: dict[str, Queue], now: datetime.datetime) -> pb.StoredTask:
    """One task's stored form (see :func:`check_batch`)."""
    queue = queue_for(task.queue, queues)
    method = task.method.upper() or "POST"
    if queue.mode == "pull" or method == "PULL":
        return check_pull_task(task, app_id, queue, now)
    if task.name and not TASK_NAME_RE.match(task.name):
        raise errors.InvalidTaskNameError(f"task name {task.name[:120]!r} must be 1 to 500 letters, digits, "
                                          f"underscores and hyphens")
    if task.HasField("tag"):
        raise errors.InvalidRequestError("only pull tasks have a tag")
    if method not in METHODS:
        raise errors.InvalidRequestError(f"method must be one of {', '.join(sorted(METHODS))}, got {task.method!r}")
    url = task.url or f"/_ah/queue/{queue.name}"
    _check_url(url)
    if task.payload and method not in BODY_METHODS:
        raise errors.InvalidRequestError(f"a payload may only be sent with POST or PUT, not {method}")
    size = len(url) + len(task.payload)
    headers = []
    for header in task.headers:
        problem = httpfields.response_problem(header.name, header.value)
        folded = header.name.replace("_", "-").lower()
        if problem is None and folded == NAMESPACE_HEADER.lower():
            if not NAMESPACE_RE.match(header.value.decode("latin-1")):
                raise errors.InvalidRequestError(f"{NAMESPACE_HEADER} must be a namespace matching "
                                                 f"{NAMESPACE_RE.pattern}")
            header = pb.Header(name=NAMESPACE_HEADER, value=header.value)
        elif problem is None and folded.startswith(_PLATFORM_PREFIXES):
            problem = f"the header {header.name!r} is set by the platform only"
        if problem is None and folded in _ROUTER_SET:
            problem = f"the header {header.name!r} is set by the router"
        if problem is not None:
            raise errors.InvalidRequestError(problem)
        size += len(header.name) + len(header.value)
        headers.append(header)
    if size > MAX_PUSH_TASK_BYTES:
        raise errors.TaskTooLargeError(f"the task is {size} bytes (url, headers and payload); a push task may have "
                                       f"at most {MAX_PUSH_TASK_BYTES}")
    target = task.target or queue.version
    if target and not TARGET_RE.match(target):
        raise errors.InvalidRequestError(f"target must be a version name, got {target[:120]!r}")
    stored = pb.StoredTask(app_id=app_id, queue=queue.name, name=task.name or new_name(), named=bool(task.name),
                           url=url, method=method, headers=headers, payload=task.payload,
                           target=target.partition(".")[0] if "." in target else target)
    stored.eta.FromDatetime(_eta(task, now))
    return _stamped(stored, task, queue, now)


def check_pull_task(task: pb.Task, app_id: str, queue: Queue, now: datetime.datetime) -> pb.StoredTask:
    """A pull task's stored form: method ``PULL`` on a pull queue, a payload of at most 1 MiB, no url, headers (but
    the namespace Google's SDK may set) or target, a tag of at most 500 bytes (see :func:`check_batch`)."""
    method = task.method.upper() or "POST"
    if queue.mode != "pull":
        raise errors.InvalidQueueModeError(f"queue {queue.name!r} is a push queue; a PULL task goes to a pull queue")
    if method != "PULL":
        raise errors.InvalidQueueModeError(f"queue {queue.name!r} is a pull queue; its tasks have method PULL, "
                                           f"not {method}")
    if task.name and not TASK_NAME_RE.match(task.name):
        raise errors.InvalidTaskNameError(f"task name {task.name[:120]!r} must be 1 to 500 letters, digits, "
                                          f"underscores and hyphens")
    if task.url or task.target:
        raise errors.InvalidRequestError("a pull task has no url or target (it is leased, not sent)")
    for header in task.headers:
        if header.name.replace("_", "-").lower() != NAMESPACE_HEADER.lower():
            raise errors.InvalidRequestError(f"a pull task has no headers, got {header.name[:120]!r}")
    if task.HasField("tag") and len(task.tag) > MAX_TAG_BYTES:
        raise errors.InvalidTagError(f"the tag is {len(task.tag)} bytes; at most {MAX_TAG_BYTES}")
    if len(task.payload) > MAX_PULL_TASK_BYTES:
        raise errors.TaskTooLargeError(f"the payload is {len(task.payload)} bytes; a pull task may have at most "
                                       f"{MAX_PULL_TASK_BYTES}")
    stored = pb.StoredTask(app_id=app_id, queue=queue.name, name=task.name or new_name(), named=bool(task.name),
                           method="PULL", payload=task.payload)
    if task.HasField("tag"):
        stored.tag = task.tag
    stored.eta.FromMicroseconds(_usec(_eta(task, now)))
    return _stamped(stored, task, queue, now)


def _stamped(stored: pb.StoredTask, task: pb.Task, queue: Queue, now: datetime.datetime) -> pb.StoredTask:
    """``stored`` (its ETA set) with what every task keeps: its first ETA, when it was added, its retry options."""
    stored.original_eta.CopyFrom(stored.eta)
    stored.added.FromDatetime(now)
    if task.HasField("retry_options"):
        retry_of(queue, task.retry_options)  # refuses options that cannot hold
        stored.retry_options.CopyFrom(task.retry_options)
    return stored


def _usec(when: datetime.datetime) -> int:
    """Whole microseconds since the epoch: a pull task's ETA is its lease token, compared exactly."""
    delta = when - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _check_url(url: str) -> None:
    if len(url) > MAX_URL_LENGTH:
        raise errors.InvalidUrlError(f"the url is {len(url)} characters; at most {MAX_URL_LENGTH}")
    if not url.startswith("/") or url.startswith("//") or not url.isascii() or any(
            c.isspace() or ord(c) < 0x20 or c in "#\x7f" for c in url):
        raise errors.InvalidUrlError(f"the url must be a relative path starting with / (no host, spaces, control "
                                     f"characters or fragment), got {url[:120]!r}")


def _eta(task: pb.Task, now: datetime.datetime) -> datetime.datetime:
    which = task.WhichOneof("when")
    if which == "eta":
        eta = task.eta.ToDatetime(datetime.timezone.utc)
    elif which == "countdown_seconds":
        if not task.countdown_seconds >= 0:  # also refuses NaN
            raise errors.InvalidEtaError(f"countdown must be 0 or more seconds, got {task.countdown_seconds}")
        if task.countdown_seconds > MAX_ETA_AHEAD.total_seconds():
            raise errors.InvalidEtaError(f"countdown is more than 30 days ({task.countdown_seconds:g} s)")
        eta = now + datetime.timedelta(seconds=task.countdown_seconds)
    else:
        return now
    if eta - now > MAX_ETA_AHEAD:
        raise errors.InvalidEtaError(f"the ETA {eta.isoformat()} is more than 30 days ahead")
    return eta


def retry_of(queue: Queue, options: pb.RetryOptions | None) -> RetryParameters:
    """The retry parameters of a task: the queue's, with the task's own options where it set them.

    Raises:
        InvalidRequestError: an option is negative, or the minimum backoff is above the maximum.
    """
    base = queue.retry
    if options is None:
        return base
    for field, value in options.ListFields():
        if not value >= 0:  # also refuses NaN
            raise errors.InvalidRequestError(f"retry_options.{field.name} must be 0 or more, got {value}")
    if options.HasField("task_age_limit_seconds") and options.task_age_limit_seconds == 0:
        raise errors.InvalidRequestError("retry_options.task_age_limit_seconds must be more than 0")
    out = RetryParameters(
        task_retry_limit=options.task_retry_limit if options.HasField("task_retry_limit") else base.task_retry_limit,
        task_age_limit_seconds=(options.task_age_limit_seconds if options.HasField("task_age_limit_seconds")
                                else base.task_age_limit_seconds),
        min_backoff_seconds=(options.min_backoff_seconds if options.HasField("min_backoff_seconds")
                             else base.min_backoff_seconds),
        max_backoff_seconds=(options.max_backoff_seconds if options.HasField("max_backoff_seconds")
                             else base.max_backoff_seconds),
        max_doublings=options.max_doublings if options.HasField("max_doublings") else base.max_doublings)
    if out.min_backoff_seconds > out.max_backoff_seconds:
        raise errors.InvalidRequestError(f"retry_options: min_backoff_seconds ({out.min_backoff_seconds:g}) is above "
                                         f"max_backoff_seconds ({out.max_backoff_seconds:g})")
    return out
