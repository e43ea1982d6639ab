"""Where tasks live: NATS JetStream, nothing home-made.

- **Tasks**: the work-queue stream ``KILN_TASKS``, one subject per app and queue (``kiln.tasks.APP.QUEUE``), each
  message a :class:`~kiln.pb.taskqueue.v1.taskqueue_pb2.StoredTask`. A retry is a new message (with the next retry
  count and ETA) published before the failed one is acknowledged; ``Nats-Msg-Id`` (``APP.QUEUE.NAME.RETRY``) makes
  JetStream drop a second copy of the same attempt within its duplicate window.
- **Names**: the KV bucket ``KILN_TASK_NAMES``, key ``APP.QUEUE.NAME``, value ``queued`` while the task waits or runs,
  then ``ran`` or ``deleted``. A name is taken with the bucket's create-if-absent, so it is used at most once; the
  ``ran``/``deleted`` value is the task's tombstone and is written with a per-message TTL of
  :data:`TOMBSTONE_SECONDS` (seven days, as App Engine kept a task's name unavailable "for about seven days" after
  it ran or was deleted), after which the name may be used again. Every task has its entry, named or not (the
  service names unnamed ones), so Delete finds any task and delivery skips deleted ones.

A batch is all or nothing: names are taken first, then the messages published; if NATS fails on the way, the
messages already published are deleted by sequence and the names released, and the caller gets
``TRANSIENT_ERROR``. What is not covered: a service killed between taking a name and publishing its task leaves
the name ``queued`` with no task (a later add of that name answers ``TASK_ALREADY_EXISTS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from taskqueue_svc.errors import TombstonedTaskError, TransientError, UnknownTaskError

log = logging.getLogger(__name__)

STREAM = "KILN_TASKS"
SUBJECT_PREFIX = "kiln.tasks."
NAMES_BUCKET = "KILN_TASK_NAMES"
TOMBSTONE_SECONDS = 7 * 86400
OLDEST_ETA_SCAN = 1000  # tasks read to find a queue's oldest ETA
LIST_SCAN_FACTOR = 4  # a page of N listed tasks reads at most 4 N messages (deleted tasks' are skipped)
RUN_NOW_SCAN = 10_000  # messages of a queue read to find the task to run now
QUEUED, RAN, DELETED = b"queued", b"ran", b"deleted"
_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)
_SCAN_BATCH = 256
_SCAN_STEP_SECONDS = 10.0  # each batch of a scan within this: a NATS outage fails the call instead of hanging it


async def current_values(js: JetStreamContext, bucket: str, keys: str) -> list[tuple[str, bytes, int]]:
    """Every live entry of a KV ``bucket`` whose key matches ``keys`` (a NATS subject pattern), as (key, value,
    revision).

    Not a KV watch: nats-py's watch marks "all current values seen" from the consumer's pending count, which a push
    consumer may already have delivered (to the client, not yet to the watcher) — then the marker comes first and the
    scan misses entries. A pull consumer delivers nothing until fetched, so its pending count at creation is exact.

    Raises:
        The NATS errors of the scan.
    """
    prefix = f"$KV.{bucket}."
    sub = await js.pull_subscribe(prefix + keys, stream=f"KV_{bucket}", config=ConsumerConfig(
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE, inactive_threshold=60.0,
        mem_storage=True))
    try:
        pending = int((await sub.consumer_info()).num_pending or 0)
        out: list[tuple[str, bytes, int]] = []
        seen = 0
        while seen < pending:
            for msg in await sub.fetch(min(_SCAN_BATCH, pending - seen), timeout=_SCAN_STEP_SECONDS):
                seen += 1
                if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    continue
                out.append((msg.subject[len(prefix):], msg.data, int(msg.metadata.sequence.stream)))
        return out
    finally:
        with contextlib.suppress(*_NATS_ERRORS):
            await sub.unsubscribe()


def subject(app_id: str, queue: str) -> str:
    """The stream subject of one queue of one app."""
    return f"{SUBJECT_PREFIX}{app_id}.{queue}"


def name_key(app_id: str, queue: str, name: str) -> str:
    """The KV key of a task name."""
    return f"{app_id}.{queue}.{name}"


def consumer_name(app_id: str, queue: str) -> str:
    """The durable consumer that delivers one queue (shared by every replica)."""
    return f"tq-{app_id}-{queue}"


class TaskStore:
    """The stream and the name bucket (see module docstring)."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self.js = js
        self._replicas = replicas
        self._names: KeyValue | None = None

    async def open(self) -> None:
        """Create (or find) the stream and the bucket."""
        try:
            await self.js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            with contextlib.suppress(nats.js.errors.BadRequestError):  # another replica made it meanwhile
                await self.js.add_stream(StreamConfig(
                    name=STREAM, subjects=[SUBJECT_PREFIX + ">"], retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE, num_replicas=self._replicas, duplicate_window=120.0))
        try:
            self._names = await self.js.key_value(NAMES_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            # Direct gets: a name's state is read before every attempt, and the API's JSON form costs far more.
            self._names = await self.js.create_key_value(bucket=NAMES_BUCKET, history=1, replicas=self._replicas,
                                                         storage=StorageType.FILE, direct=True)

    @property
    def names(self) -> KeyValue:
        assert self._names is not None, "open() first"
        return self._names

    async def add(self, tasks: list[pb.StoredTask]) -> list[str]:
        """Store valid tasks; per task ``""`` (added), ``TASK_ALREADY_EXISTS`` or ``TOMBSTONED_TASK``.

        Raises:
            TransientError: NATS failed; nothing of the batch is kept.
        """
        taken: list[str] = []
        published: list[int] = []
        try:
            results, accepted = await self.take_names(tasks, taken)
            for task in accepted:
                msg_id = f"{name_key(task.app_id, task.queue, task.name)}.0"
                ack = await self.js.publish(subject(task.app_id, task.queue), task.SerializeToString(),
                                            stream=STREAM, headers={"Nats-Msg-Id": msg_id})
                published.append(ack.seq)
        except _NATS_ERRORS as exc:
            await self._undo(published, taken)
            raise TransientError(f"the task store is not reachable now; nothing was added ({exc})") from None
        return results

    async def take_names(self, tasks: list[pb.StoredTask],
                         taken: list[str]) -> tuple[list[str], list[pb.StoredTask]]:
        """Take each task's name (create-if-absent in the names bucket): per task ``""``, ``TASK_ALREADY_EXISTS``
        (still queued) or ``TOMBSTONED_TASK``, and the tasks whose name was taken. Each key taken is appended to
        ``taken`` at once, so that a caller whose later step fails can give them back (:meth:`release_names`).

        Raises:
            The NATS errors of the bucket.
        """
        results: list[str] = []
        accepted: list[pb.StoredTask] = []
        for task in tasks:
            key = name_key(task.app_id, task.queue, task.name)
            try:
                await self.names.create(key, QUEUED)
            except nats.js.errors.KeyWrongLastSequenceError:
                state = await self.state(task.app_id, task.queue, task.name)
                results.append("TASK_ALREADY_EXISTS" if state == QUEUED else "TOMBSTONED_TASK")
                continue
            taken.append(key)
            accepted.append(task)
            results.append("")
        return results, accepted

    async def release_names(self, taken: list[str]) -> None:
        """Give back names :meth:`take_names` took (best effort: NATS may be what failed)."""
        for key in taken:
            with contextlib.suppress(*_NATS_ERRORS):
                await self.names.delete(key)

    async def _undo(self, published: list[int], taken: list[str]) -> None:
        for seq in published:
            with contextlib.suppress(*_NATS_ERRORS):
                await self.js.delete_msg(STREAM, seq)
        await self.release_names(taken)

    async def state(self, app_id: str, queue: str, name: str) -> bytes | None:
        """``queued``, ``ran``, ``deleted``, or ``None`` (no such name, or its tombstone expired)."""
        try:
            entry = await self.names.get(name_key(app_id, queue, name))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value

    async def tombstone(self, task: pb.StoredTask, value: bytes = RAN, *, last: int | None = None) -> None:
        """Mark a task's name as used (``ran`` or ``deleted``) for :data:`TOMBSTONE_SECONDS`.

        With ``last``, only if the entry is still at that revision (raises ``KeyWrongLastSequenceError``).
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)} if last is not None else None
        await self.js.publish(f"$KV.{NAMES_BUCKET}.{name_key(task.app_id, task.queue, task.name)}", value,
                              headers=headers, msg_ttl=TOMBSTONE_SECONDS)

    async def retry(self, task: pb.StoredTask) -> None:
        """Queue the next attempt of a task (its retry count and ETA already set)."""
        await self.js.publish(subject(task.app_id, task.queue), task.SerializeToString(), stream=STREAM,
                              headers={"Nats-Msg-Id": f"{name_key(task.app_id, task.queue, task.name)}."
                                                      f"{task.retry_count}"})

    async def delete(self, app_id: str, queue: str, names: list[str]) -> list[str]:
        """Delete tasks by name: per name ``""``, ``UNKNOWN_TASK`` or ``TOMBSTONED_TASK``. A deleted task's message
        stays in the stream until delivery meets it and drops it unsent."""
        out = []
        try:
            for name in names:
                key = name_key(app_id, queue, name)
                try:
                    entry = await self.names.get(key)
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    out.append("UNKNOWN_TASK")
                    continue
                if entry.value != QUEUED:
                    out.append("TOMBSTONED_TASK")
                    continue
                try:
                    await self.tombstone(pb.StoredTask(app_id=app_id, queue=queue, name=name), DELETED,
                                         last=entry.revision)
                except nats.js.errors.APIError:  # it finished meanwhile
                    out.append("TOMBSTONED_TASK")
                    continue
                out.append("")
        except _NATS_ERRORS as exc:
            raise TransientError(f"the task store is not reachable now ({exc})") from None
        return out

    async def purge(self, app_id: str, queue: str) -> None:
        """Drop every task of a queue; the names of those waiting are tombstoned as deleted."""
        try:
            await self.js.purge_stream(STREAM, subject=subject(app_id, queue))
            waiting = [key.rpartition(".")[2] for key, value, _ in
                       await current_values(self.js, NAMES_BUCKET, name_key(app_id, queue, ">")) if value == QUEUED]
            for name in waiting:
                await self.tombstone(pb.StoredTask(app_id=app_id, queue=queue, name=name), DELETED)
        except _NATS_ERRORS as exc:
            raise TransientError(f"the task store is not reachable now ({exc})") from None

    async def subscribe(self, app_id: str, queue: str, ack_wait: float) -> JetStreamContext.PullSubscription:
        """The durable pull consumer of one queue, made or updated to ``ack_wait`` (a consumer of an earlier
        version waited the whole request deadline before redelivering a dead replica's messages)."""
        durable = consumer_name(app_id, queue)
        await self.js.add_consumer(STREAM, ConsumerConfig(
            name=durable, durable_name=durable, filter_subject=subject(app_id, queue), ack_wait=ack_wait,
            max_deliver=-1, max_ack_pending=-1))
        return await self.js.pull_subscribe_bind(durable=durable, stream=STREAM)

    async def oldest_eta(self, app_id: str, queue: str, *, limit: int = OLDEST_ETA_SCAN) -> float | None:
        """The earliest ETA (Unix time) of a queue's stored tasks, among the first ``limit`` of them (None: none).

        Tasks are read one by one in stream order (a work-queue stream admits no second consumer to scan it with).
        """
        earliest, seq = None, 0
        try:
            for _ in range(limit):
                try:
                    msg = await self.js.get_msg(STREAM, seq + 1, subject=subject(app_id, queue), next=True)
                except nats.js.errors.NotFoundError:
                    break
                seq = msg.seq or seq + 1
                try:
                    task = pb.StoredTask.FromString(msg.data or b"")
                except Exception:  # noqa: BLE001 - not a task: delivery drops it
                    continue
                state = await self.state(app_id, queue, task.name)
                eta = task.eta.ToDatetime(datetime.timezone.utc).timestamp()
                if state == QUEUED and (earliest is None or eta < earliest):
                    earliest = eta
        except _NATS_ERRORS as exc:
            raise TransientError(f"the task store is not reachable now ({exc})") from None
        return earliest

    async def _next(self, app_id: str, queue: str, seq: int) -> tuple[int, pb.StoredTask | None] | None:
        """The queue's first message at or after stream sequence ``seq``: its sequence and task (None: not a task),
        or None when there is none."""
        try:
            msg = await self.js.get_msg(STREAM, seq, subject=subject(app_id, queue), next=True)
        except nats.js.errors.NotFoundError:
            return None
        try:
            task: pb.StoredTask | None = pb.StoredTask.FromString(msg.data or b"")
        except Exception:  # noqa: BLE001 - not a task: delivery drops it
            task = None
        return (msg.seq or seq), task

    async def page(self, app_id: str, queue: str, start: int, size: int) -> tuple[list[pb.StoredTask], int]:
        """Up to ``size`` waiting tasks of a queue, in stream order from sequence ``start`` (1: the first), and the
        sequence the next page starts at (0: no more). Reads at most :data:`LIST_SCAN_FACTOR` × ``size`` messages,
        so a page of a queue full of deleted tasks' messages may hold fewer than ``size``.

        Raises:
            TransientError: NATS failed.
        """
        found: dict[str, pb.StoredTask] = {}
        seq = start
        try:
            for _ in range(LIST_SCAN_FACTOR * size):
                if len(found) >= size:
                    break
                message = await self._next(app_id, queue, seq)
                if message is None:
                    return list(found.values()), 0
                at, task = message
                seq = at + 1
                if task is not None and await self.state(app_id, queue, task.name) == QUEUED:
                    found.pop(task.name, None)  # a retry's message replaces the attempt's it is about to follow
                    found[task.name] = task
            more = await self._next(app_id, queue, seq) is not None
        except _NATS_ERRORS as exc:
            raise TransientError(f"the task store is not reachable now ({exc})") from None
        return list(found.values()), seq if more else 0

    async def run_now(self, app_id: str, queue: str, name: str, now: datetime.datetime) -> pb.StoredTask:
        """Make the waiting task ``name`` due at ``now``; the task as it now waits.

        Its message is replaced: the old one is deleted by sequence (which also fails if delivery took it meanwhile,
        so a task is never left to run twice), then a copy with ETA ``now`` is published. A task already due is
        left as it is (delivery takes it as soon as a token allows).

        Raises:
            UnknownTaskError: no such task waits (never added, or it changed meanwhile: retried or being sent).
            TombstonedTaskError: it ran or was deleted.
            TransientError: NATS failed (if it failed between the delete and the publish, the old message is put
                back).
        """
        try:
            state = await self.state(app_id, queue, name)
            if state is None:
                raise UnknownTaskError(f"queue {queue!r} has no task {name!r}")
            if state != QUEUED:
                raise TombstonedTaskError(f"task {name!r} {'ran' if state == RAN else 'was deleted'} already")
            found: tuple[int, pb.StoredTask] | None = None
            seq = 1
            for _ in range(RUN_NOW_SCAN):
                message = await self._next(app_id, queue, seq)
                if message is None:
                    break
                at, task = message
                seq = at + 1
                if task is not None and task.name == name:
                    found = (at, task)  # the last one: a retry's message follows its attempt's
            if found is None:
                raise UnknownTaskError(f"task {name!r} of queue {queue!r} is not waiting (it is being sent now)")
            at, task = found
            if task.eta.ToDatetime(datetime.timezone.utc) <= now:
                return task
            original = task.SerializeToString()
            try:
                await self.js.delete_msg(STREAM, at)
            except nats.js.errors.APIError:
                raise UnknownTaskError(f"task {name!r} changed meanwhile (retried, made due or being sent); "
                                       f"nothing was done") from None
            task.eta.FromDatetime(now)
            try:
                await self.js.publish(subject(app_id, queue), task.SerializeToString(), stream=STREAM,
                                      headers={"Nats-Msg-Id": f"{name_key(app_id, queue, name)}.now.{at}"})
            except _NATS_ERRORS:
                with contextlib.suppress(*_NATS_ERRORS):
                    await self.js.publish(subject(app_id, queue), original, stream=STREAM)
                raise
        except _NATS_ERRORS as exc:
            raise TransientError(f"the task store is not reachable now ({exc})") from None
        return task

    async def waiting(self, app_id: str, queue: str) -> int:
        """Tasks of a queue not finished (waiting for their ETA, due, or being sent)."""
        try:
            info = await self.js.consumer_info(STREAM, consumer_name(app_id, queue))
        except nats.js.errors.NotFoundError:
            return 0
        return int((info.num_pending or 0) + (info.num_ack_pending or 0))
