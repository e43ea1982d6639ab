"""Pull queues on NATS JetStream: the tasks, their leases, and what keeps two leasers from holding one task.

**Storage.** A pull task is one entry of the KV bucket ``KILN_PULL_TASKS``, key ``APP.QUEUE.NAME``, its value a
:class:`~kiln.pb.taskqueue.v1.taskqueue_pb2.StoredTask` (method ``PULL``). A payload over
:data:`INLINE_PAYLOAD_BYTES` is kept in the object store ``KILN_PULL_BODIES`` under the same key (a pull payload may
be 1 MiB, NATS's default message limit, and scanning a queue should not carry every payload); the entry names it.
The task's name is taken in ``KILN_TASK_NAMES`` as a push task's (:mod:`taskqueue_svc.store`): at most once, and
tombstoned for seven days once the task is deleted.

**Leases are compare-and-set.** A pull task's ``eta`` is when it may be leased next (its add-time ETA, then the end
of each lease); a lease is nothing but a new value of the task's entry: ``eta`` = now + ``lease_seconds``,
``retry_count`` + 1. Every change of an entry (lease, ModifyLease, delete) is written with the revision it was
decided on (``Nats-Expected-Last-Subject-Sequence``); JetStream refuses it if anything changed the entry since. So when
several leasers (threads of one replica, or any number of ``taskqueue_svc`` replicas) pick the same due task, exactly
one write succeeds: the others skip the task and take the next due one. A task is therefore never held by two
leasers while a lease lasts, with no lock and no leader; a replica that dies holds nothing (its leases simply end).
The lease's end is its token (App Engine's ``eta_usec``): ModifyLease succeeds only with the current end, before it
has passed, and writes with compare-and-set too, so a stale holder gets ``TASK_LEASE_EXPIRED``.

**Finding due tasks.** A lease reads the queue's current entries (a KV watch of ``APP.QUEUE.*`` without history,
which ends once the current values have been seen), orders the due ones by ETA (:func:`taskqueue_svc.leases.due`)
and writes its leases one by one. This costs a read of the queue's entries per lease: fine for queues of thousands
of tasks; a per-replica index kept by a long-lived watch would lift that and needs no change of the data.

**Limits.** A task leased ``task_retry_limit`` times (the queue's ``retry_parameters`` or the task's) is deleted
when a lease meets it again, as Google's SDK's pull queue does. A replica killed between taking a task's name and
storing it leaves the name taken (as for push tasks); one killed between writing a lease and answering leaves the
task leased by nobody until the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from taskqueue_svc import errors, leases
from taskqueue_svc.store import DELETED, QUEUED, RAN, TaskStore, current_values, name_key

log = logging.getLogger(__name__)

PULL_BUCKET = "KILN_PULL_TASKS"
BODIES_BUCKET = "KILN_PULL_BODIES"
INLINE_PAYLOAD_BYTES = 16 * 1024
_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)
_GONE = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError)


def _transient(exc: BaseException) -> errors.TransientError:
    return errors.TransientError(f"the task store is not reachable now ({exc})")


class PullStore:
    """Pull tasks and their leases (see module docstring)."""

    def __init__(self, js: JetStreamContext, names: TaskStore, *, replicas: int = 1) -> None:
        self.js = js
        self._names = names
        self._replicas = replicas
        self._kv: KeyValue | None = None
        self._bodies: ObjectStore | None = None

    async def open(self) -> None:
        """Create (or find) the bucket and the object store."""
        try:
            self._kv = await self.js.key_value(PULL_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await self.js.create_key_value(bucket=PULL_BUCKET, history=1, replicas=self._replicas,
                                                      storage=StorageType.FILE)
        try:
            self._bodies = await self.js.object_store(BODIES_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self._bodies = await self.js.create_object_store(BODIES_BUCKET, config=ObjectStoreConfig(
                storage=StorageType.FILE, replicas=self._replicas))

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "open() first"
        return self._kv

    @property
    def bodies(self) -> ObjectStore:
        assert self._bodies is not None, "open() first"
        return self._bodies

    async def add(self, tasks: list[pb.StoredTask]) -> list[str]:
        """Store valid pull tasks; per task ``""``, ``TASK_ALREADY_EXISTS`` or ``TOMBSTONED_TASK``.

        Raises:
            TransientError: NATS failed; nothing of the batch is kept.
        """
        taken: list[str] = []
        stored: list[str] = []
        objects: list[str] = []
        try:
            results, accepted = await self._names.take_names(tasks, taken)
            for task in accepted:
                key = name_key(task.app_id, task.queue, task.name)
                entry = task
                if len(task.payload) > INLINE_PAYLOAD_BYTES:
                    await self.bodies.put(key, task.payload)
                    objects.append(key)
                    entry = pb.StoredTask()
                    entry.CopyFrom(task)
                    entry.payload, entry.payload_object = b"", key
                await self.kv.put(key, entry.SerializeToString())
                stored.append(key)
        except _NATS_ERRORS as exc:
            for key in stored:
                with contextlib.suppress(*_NATS_ERRORS):
                    await self.kv.delete(key)
            for key in objects:
                with contextlib.suppress(*_NATS_ERRORS):
                    await self.bodies.delete(key)
            await self._names.release_names(taken)
            raise errors.TransientError(f"the task store is not reachable now; nothing was added ({exc})") from None
        return results

    async def entries(self, app_id: str, queue: str) -> list[leases.Entry]:
        """Every stored task of a queue, with its revision."""
        try:
            found = await current_values(self.js, PULL_BUCKET, f"{app_id}.{queue}.*")
        except _NATS_ERRORS as exc:
            raise _transient(exc) from None
        return [leases.Entry(pb.StoredTask.FromString(value), revision) for _, value, revision in found if value]

    async def lease(self, app_id: str, queue: str, request: pb.LeaseRequest, now_usec: int,
                    exhausted: Callable[[pb.StoredTask], bool]) -> list[pb.StoredTask]:
        """Lease due tasks (checked request), each by compare-and-set; tasks over their retry limit are deleted."""
        out: list[pb.StoredTask] = []
        size = 0
        tag = request.tag if request.HasField("tag") else None
        candidates = leases.due(await self.entries(app_id, queue), now_usec, group_by_tag=request.group_by_tag,
                                tag=tag)
        try:
            for entry in candidates:
                if len(out) >= request.max_tasks:
                    break
                key = name_key(app_id, queue, entry.task.name)
                if exhausted(entry.task):
                    await self._drop(entry, key)
                    continue
                payload_size = len(entry.task.payload)
                if entry.task.payload_object:
                    info = await self.bodies.get_info(entry.task.payload_object)
                    payload_size = int(info.size or 0)
                if out and size + payload_size > leases.MAX_LEASE_RESPONSE_BYTES:
                    break
                taken = leases.leased(entry.task, now_usec, request.lease_seconds)
                try:
                    await self.kv.update(key, taken.SerializeToString(), last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another leaser (or a delete) changed it first: it is theirs
                size += payload_size
                out.append(taken)
            for task in out:
                if task.payload_object:
                    task.payload = (await self.bodies.get(task.payload_object)).data or b""
        except _NATS_ERRORS as exc:
            raise _transient(exc) from None
        return out

    async def _drop(self, entry: leases.Entry, key: str) -> None:
        try:
            await self.kv.delete(key, last=entry.revision)
        except nats.js.errors.APIError:
            return  # changed meanwhile: whoever changed it decides
        log.warning("taskqueue %s/%s: pull task %s was leased %d times, its retry limit; deleted",
                    entry.task.app_id, entry.task.queue, entry.task.name, entry.task.retry_count)
        await self._names.tombstone(entry.task, RAN)
        if entry.task.payload_object:
            with contextlib.suppress(*_NATS_ERRORS):
                await self.bodies.delete(entry.task.payload_object)

    async def modify(self, app_id: str, queue: str, request: pb.ModifyLeaseRequest, now_usec: int) -> int:
        """Change the lease of one task for its holder (checked request); the lease's new end.

        Raises:
            UnknownTaskError, TombstonedTaskError, TaskLeaseExpiredError, TransientError.
        """
        key = name_key(app_id, queue, request.task_name)
        try:
            try:
                found = await self.kv.get(key)
            except _GONE:
                state = await self._names.state(app_id, queue, request.task_name)
                if state in (RAN, DELETED):
                    raise errors.TombstonedTaskError(f"task {request.task_name!r} was deleted") from None
                raise errors.UnknownTaskError(f"no task {request.task_name!r} in queue {queue!r}") from None
            entry = leases.Entry(pb.StoredTask.FromString(found.value or b""), int(found.revision or 0))
            leases.check_token(entry, request.eta_usec, now_usec)
            changed = leases.modified(entry.task, now_usec, request.lease_seconds)
            try:
                await self.kv.update(key, changed.SerializeToString(), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise errors.TaskLeaseExpiredError(f"task {request.task_name!r}: its lease changed meanwhile") from None
        except _NATS_ERRORS as exc:
            raise _transient(exc) from None
        return int(changed.eta.ToMicroseconds())

    async def delete(self, app_id: str, queue: str, names: list[str]) -> list[str]:
        """Delete pull tasks by name, leased or not: per name ``""``, ``UNKNOWN_TASK`` or ``TOMBSTONED_TASK``."""
        out = []
        try:
            for name in names:
                key = name_key(app_id, queue, name)
                try:
                    taken = await self._names.names.get(key)
                except _GONE:
                    out.append("UNKNOWN_TASK")
                    continue
                if taken.value != QUEUED:
                    out.append("TOMBSTONED_TASK")
                    continue
                try:
                    found = await self.kv.get(key)
                except _GONE:
                    found = None
                await self.kv.delete(key)  # the task first: a kill before the tombstone leaves no task behind
                try:
                    await self._names.tombstone(pb.StoredTask(app_id=app_id, queue=queue, name=name), DELETED,
                                                last=taken.revision)
                except nats.js.errors.APIError:  # deleted by another call meanwhile
                    out.append("TOMBSTONED_TASK")
                    continue
                if found is not None and found.value:
                    body = pb.StoredTask.FromString(found.value).payload_object
                    if body:
                        with contextlib.suppress(*_NATS_ERRORS):
                            await self.bodies.delete(body)
                out.append("")
        except _NATS_ERRORS as exc:
            raise _transient(exc) from None
        return out

    async def purge(self, app_id: str, queue: str) -> None:
        """Drop every pull task of a queue (their names are tombstoned by :meth:`TaskStore.purge`)."""
        bodies = [e.task.payload_object for e in await self.entries(app_id, queue) if e.task.payload_object]
        try:
            await self.js.purge_stream(f"KV_{PULL_BUCKET}", subject=f"$KV.{PULL_BUCKET}.{app_id}.{queue}.>")
            for name in bodies:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.bodies.delete(name)
        except _NATS_ERRORS as exc:
            raise _transient(exc) from None

    async def stats(self, app_id: str, queue: str, now_usec: int) -> tuple[int, int, int]:
        """Tasks stored, the oldest ETA (-1: none) and the tasks whose lease has not ended."""
        entries = await self.entries(app_id, queue)
        oldest = min((e.eta_usec for e in entries), default=-1)
        held = sum(1 for e in entries if e.task.retry_count > 0 and e.eta_usec > now_usec)
        return len(entries), oldest, held
