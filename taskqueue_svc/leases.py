"""What App Engine's pull queue operations allow, and which tasks a lease takes: pure functions over the contract's
messages, with the time passed in (microseconds since the epoch, App Engine's unit: a pull task's ETA is its lease
token and is compared exactly).

A pull task's ``eta`` is when it may be leased next: its add-time ETA, then the end of each lease. A lease takes the
due tasks (ETA passed) oldest ETA first (name breaks ties), sets each one's ETA to the lease's end and counts it in
``retry_count``; :mod:`taskqueue_svc.pullstore` makes each of those changes with compare-and-set.
"""

from __future__ import annotations

import dataclasses
import math

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln_platform.queueyaml import Queue
from taskqueue_svc import errors, tasks

MAX_LEASE_SECONDS = 7 * 86400  # App Engine's: a week
MAX_TASKS_PER_LEASE = 1000
MAX_LEASE_RESPONSE_BYTES = 32 * 1024 * 1024  # App Engine's API responses were at most 32 MB


@dataclasses.dataclass(frozen=True)
class Entry:
    """A pull task as stored, with the revision a change of it must match."""

    task: pb.StoredTask
    revision: int

    @property
    def eta_usec(self) -> int:
        return int(self.task.eta.ToMicroseconds())


def check_lease(request: pb.LeaseRequest) -> None:
    """Raises InvalidRequestError or InvalidTagError for a lease App Engine refused."""
    _check_seconds(request.lease_seconds, allow_zero=False)
    if not 1 <= request.max_tasks <= MAX_TASKS_PER_LEASE:
        raise errors.InvalidRequestError(f"max_tasks must be 1 to {MAX_TASKS_PER_LEASE}, got {request.max_tasks}")
    if request.HasField("tag"):
        if not request.group_by_tag:
            raise errors.InvalidRequestError("a tag is given only with group_by_tag")
        if len(request.tag) > tasks.MAX_TAG_BYTES:
            raise errors.InvalidTagError(f"the tag is {len(request.tag)} bytes; at most {tasks.MAX_TAG_BYTES}")


def check_modify(request: pb.ModifyLeaseRequest) -> None:
    """Raises InvalidRequestError or InvalidTaskNameError for a lease change App Engine refused."""
    _check_seconds(request.lease_seconds, allow_zero=True)
    if not tasks.TASK_NAME_RE.match(request.task_name):
        raise errors.InvalidTaskNameError(f"task name {request.task_name[:120]!r} must be 1 to 500 letters, digits, "
                                          f"underscores and hyphens")


def _check_seconds(seconds: float, *, allow_zero: bool) -> None:
    low_ok = seconds >= 0 if allow_zero else seconds > 0
    if not (low_ok and math.isfinite(seconds) and seconds <= MAX_LEASE_SECONDS):
        raise errors.InvalidRequestError(f"lease_seconds must be {'0' if allow_zero else 'more than 0'} to "
                                         f"{MAX_LEASE_SECONDS} (a week), got {seconds}")


def due(entries: list[Entry], now_usec: int, *, group_by_tag: bool, tag: bytes | None) -> list[Entry]:
    """The tasks a lease may take, in the order it takes them: ETA passed, oldest first; with ``group_by_tag``
    only those with ``tag``, or (without one) with the tag of the oldest due task, or no tag if it has none."""
    ready = sorted((e for e in entries if e.eta_usec <= now_usec), key=lambda e: (e.eta_usec, e.task.name))
    if not group_by_tag or not ready:
        return ready
    if tag is None:
        oldest = ready[0].task
        tag = oldest.tag if oldest.HasField("tag") else None
    if tag is None:
        return [e for e in ready if not e.task.HasField("tag")]
    return [e for e in ready if e.task.HasField("tag") and e.task.tag == tag]


def exhausted(queue: Queue, task: pb.StoredTask) -> bool:
    """Whether a task was leased as many times as its ``task_retry_limit`` allows (it is deleted, not leased).

    As Google's SDK's pull queue: only the count limits leases (its age does not).
    """
    retry = tasks.retry_of(queue, task.retry_options if task.HasField("retry_options") else None)
    return retry.exhausted(task.retry_count, 0.0)


def leased(task: pb.StoredTask, now_usec: int, lease_seconds: float) -> pb.StoredTask:
    """The task as a lease of ``lease_seconds`` from now leaves it."""
    out = pb.StoredTask()
    out.CopyFrom(task)
    out.retry_count += 1
    out.eta.FromMicroseconds(now_usec + round(lease_seconds * 1_000_000))
    if not out.HasField("first_attempt"):
        out.first_attempt.FromMicroseconds(now_usec)
    return out


def check_token(entry: Entry, eta_usec: int, now_usec: int) -> None:
    """Raises TaskLeaseExpiredError unless ``eta_usec`` is the task's current lease and it has not ended."""
    if entry.eta_usec != eta_usec:
        raise errors.TaskLeaseExpiredError(f"task {entry.task.name!r}: the lease ending at {eta_usec} µs is not the "
                                           f"task's current lease (it was leased again or changed)")
    if entry.eta_usec < now_usec:
        raise errors.TaskLeaseExpiredError(f"task {entry.task.name!r}: its lease ended")


def modified(task: pb.StoredTask, now_usec: int, lease_seconds: float) -> pb.StoredTask:
    """The task with its lease ending ``lease_seconds`` from now (its retry count unchanged)."""
    out = pb.StoredTask()
    out.CopyFrom(task)
    out.eta.FromMicroseconds(now_usec + round(lease_seconds * 1_000_000))
    return out
