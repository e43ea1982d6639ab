"""Transactional tasks: push tasks delivered if and only if their datastore transaction commits (an outbox).

App Engine lets a transaction add up to five push tasks that run only if it commits. kiln keeps them in the
datastore, with the transaction's own writes, and hands them to ``taskqueue_svc`` once the commit is done:

1. **Add.** The app's client asks ``taskqueue_svc`` to check the tasks (``AddRequest.transaction`` set: checked and
   named, nothing stored) and keeps the checked tasks with the transaction's buffered writes.
2. **Commit.** ``CommitRequest.tasks`` carries them. Before committing, the service writes a *hint* (the app,
   namespace and transaction; no tasks) to a platform-only place: the reserved pseudo-app :data:`HINT_APP`, in one of
   :data:`HINT_SHARDS` groups. Then the transaction's commit includes one more entity group, the transaction's own
   *outbox group* (:func:`outbox_group`, in the app's namespace, never written before: expected version 0), holding
   one record: the tasks (:class:`~kiln.pb.datastore.v1.datastore_pb2.TransactionTasks`). The engine commits it with
   the transaction's writes, atomically (the embedded engine: one SQLite transaction; Cassandra: a cross-group commit,
   whose transaction record is the commit point). So the record exists if and only if the transaction committed.
3. **Forward.** After the commit the service adds the tasks to ``taskqueue_svc`` (as the app, with a short-lived app
   token it mints) under the names they were checked with, then deletes the record and the hint. Adding again is
   harmless: a name already taken (queued, or tombstoned for seven days after it ran) is answered
   ``TASK_ALREADY_EXISTS``/``TOMBSTONED_TASK``, which here means "already added".
4. **Sweep.** Every replica looks, every :data:`SWEEP_SECONDS`, at the hints older than :data:`SWEEP_AFTER_SECONDS`
   (the commit's own forwarding has had its chance by then; reading the record strongly makes the Cassandra engine
   finish a cross-group commit left half-applied): the record is there → forward as in 3; no record and the outbox
   group was written (version > 0) → it was forwarded and deleted already: drop the hint; no record and version 0 →
   not committed: drop the hint once :data:`ABANDON_AFTER_SECONDS` have passed (a transaction expires after 60 s, so
   it can no longer commit).

Failure cases, and why none delivers a task of an uncommitted transaction or loses one of a committed one:

- Rollback, contention (``ConcurrentTransactionError``), an expired or unknown transaction, a refused commit: no
  record is written, so nothing is forwarded; a hint written before a failed commit is dropped at once or by the sweep
  (version 0).
- The datastore dies after the commit and before forwarding: the hint is there (written first), the sweep finds the
  record and forwards it. ``taskqueue_svc`` or NATS down while forwarding: the record stays, the sweep retries every
  :data:`SWEEP_SECONDS`.
- Dies after forwarding and before deleting: the sweep forwards again; the names make that a no-op.
- Two replicas sweep at once: both add (no-op for the second) and both delete (idempotent).
- A task that ``taskqueue_svc`` refuses when forwarded (its queue was removed from queue.yaml after the add): the task
  is dropped and logged, the others are added; this is the one way a committed task does not run.
- Delivery after forwarding is ``taskqueue_svc``'s: at least once.
- What is not covered: tasks of a committed transaction wait up to :data:`SWEEP_AFTER_SECONDS` (+ one sweep) when the
  replica died between commit and forward (or the task queue was down); and a hint is a plain write, so if the hint
  write itself fails the commit is not attempted (the app gets ``UNAVAILABLE`` and retries).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import grpc

from datastore_svc.engine.base import Engine, GroupCommit, Ref, Write
from datastore_svc.index import IndexRow
from kiln.errors import BadRequestError, KilnError, UnavailableError
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as tq
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc

log = logging.getLogger(__name__)

MAX_TASKS = 5  # App Engine's limit on a transaction's tasks
#: The pseudo-app that holds hints: not a valid app id (``kiln_platform.auth.APP_ID_RE``), so no app reaches it.
HINT_APP = "_kiln"
HINT_SHARDS = 16
SWEEP_SECONDS = 5.0
SWEEP_AFTER_SECONDS = 30.0
ABANDON_AFTER_SECONDS = 600.0
FORWARD_TIMEOUT_SECONDS = 10.0
# Records start with a byte no serialized entity starts with (0xFF is not a valid protobuf tag), so code that reads
# an entity group's blobs (old index rows) tells them apart.
RECORD_MARK = b"\xffkiln-tasks\x00"
# Keys encode each element as escape(kind) 00 ...; a kind is UTF-8, which never has 0xFF: no entity group of a
# real key starts with it, so these groups are invisible to queries, and they have no index rows.
_OUTBOX_PREFIX = b"\xffkiln-outbox\x00"
_HINT_PREFIX = b"\xffkiln-hint\x00"
_ALREADY_ADDED = frozenset({"TASK_ALREADY_EXISTS", "TOMBSTONED_TASK"})
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.UNAUTHENTICATED})


def outbox_group(transaction: bytes) -> bytes:
    """The entity group (and key) of a transaction's task record."""
    return _OUTBOX_PREFIX + transaction.hex().encode()


def _hint_group(shard: int) -> bytes:
    return _HINT_PREFIX + bytes([shard])


def _hint_ref(transaction: bytes) -> Ref:
    group = _hint_group(transaction[0] % HINT_SHARDS if transaction else 0)
    return Ref(group, group + transaction.hex().encode())


def no_rows(blob: bytes) -> frozenset[IndexRow]:
    """Records and hints have no index rows."""
    return frozenset()


def is_record(blob: bytes) -> bool:
    return blob.startswith(RECORD_MARK)


def check_tasks(tasks: list[tq.Task]) -> list[tq.Task]:
    """The tasks to store: at most :data:`MAX_TASKS`, each with a name (one is given where the client gave none).

    Raises:
        BadRequestError: more than five tasks.
    """
    if len(tasks) > MAX_TASKS:
        raise BadRequestError(f"Too many messages, maximum allowed {MAX_TASKS}: a transaction may add at most "
                              f"{MAX_TASKS} tasks, this one adds {len(tasks)}")
    out = []
    for task in tasks:
        copy = tq.Task()
        copy.CopyFrom(task)
        if not copy.name:
            copy.name = "tx-" + secrets.token_hex(16)
        out.append(copy)
    return out


def record_commit(record: pb.TransactionTasks) -> GroupCommit:
    """The extra group commit that stores ``record`` with its transaction's writes."""
    group = outbox_group(record.transaction)
    return GroupCommit(group, (Write(group, "", RECORD_MARK + record.SerializeToString()),), 0)


# Mints a short-lived app token for the forwarder's calls.
TokenFor = Callable[[str], str]


@dataclasses.dataclass
class Outbox:
    """Forwards committed transactions' tasks to ``taskqueue_svc`` and sweeps what a crash left (module docstring)."""

    engine: Engine
    taskqueue: taskqueue_pb2_grpc.TaskQueueServiceAsyncStub
    token_for: TokenFor
    sweep_seconds: float = SWEEP_SECONDS
    sweep_after_seconds: float = SWEEP_AFTER_SECONDS
    _pending: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    async def hint(self, record: pb.TransactionTasks) -> None:
        """Write the hint of a commit about to start (before it)."""
        ref = _hint_ref(record.transaction)
        hint = pb.TransactionTasks(app_id=record.app_id, namespace=record.namespace, transaction=record.transaction,
                                   started=record.started)
        write = Write(ref.path, "", hint.SerializeToString())
        await self.engine.commit(HINT_APP, "", [GroupCommit(ref.group, (write,))], no_rows, atomic=False)

    async def unhint(self, transaction: bytes) -> None:
        ref = _hint_ref(transaction)
        await self.engine.commit(HINT_APP, "", [GroupCommit(ref.group, (Write(ref.path, "", None),))], no_rows,
                                 atomic=False)

    def committed(self, record: pb.TransactionTasks) -> None:
        """Forward a just-committed record in the background (the commit's answer does not wait for it)."""
        task = asyncio.create_task(self._forward_logged(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _forward_logged(self, record: pb.TransactionTasks) -> None:
        try:
            await self.forward(record)
        except (KilnError, grpc.aio.AioRpcError) as exc:
            log.warning("transactional tasks of %s: not added yet (%s); the sweep retries", record.app_id, exc)
        except Exception:  # noqa: BLE001 - the sweep retries whatever went wrong
            log.exception("transactional tasks of %s: forwarding failed; the sweep retries", record.app_id)

    async def forward(self, record: pb.TransactionTasks) -> None:
        """Add the record's tasks to the task queue, then delete the record and the hint.

        Raises:
            grpc.aio.AioRpcError: the task queue could not be reached (the record stays).
        """
        try:
            out = await self.taskqueue.Add(tq.AddRequest(tasks=record.tasks), timeout=FORWARD_TIMEOUT_SECONDS,
                                           metadata=(("authorization", f"Bearer {self.token_for(record.app_id)}"),))
            errors = [r.error for r in out.results]
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSIENT:
                raise
            # The batch was refused whole (a queue removed since the add...): add the others one by one.
            errors = [await self._add_one(record.app_id, task) for task in record.tasks]
        for task, error in zip(record.tasks, errors):
            if error and error not in _ALREADY_ADDED:
                log.error("transactional task %s of %s (queue %r) was refused when its transaction committed and "
                          "is dropped: %s", task.name, record.app_id, task.queue or "default", error)
        group = outbox_group(record.transaction)
        await self.engine.commit(record.app_id, record.namespace, [GroupCommit(group, (Write(group, "", None),))],
                                 no_rows, atomic=False)
        await self.unhint(record.transaction)
        log.info("transactional tasks of %s: %d added", record.app_id, len(record.tasks))

    async def _add_one(self, app_id: str, task: tq.Task) -> str:
        try:
            out = await self.taskqueue.Add(tq.AddRequest(tasks=[task]), timeout=FORWARD_TIMEOUT_SECONDS,
                                           metadata=(("authorization", f"Bearer {self.token_for(app_id)}"),))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TRANSIENT:
                raise
            return f"{exc.code().name}: {exc.details()}"
        return str(out.results[0].error)

    async def sweep_once(self, *, now: float | None = None) -> int:
        """Handle the hints old enough (module docstring); returns how many were settled."""
        now = time.time() if now is None else now
        settled = 0
        for shard in range(HINT_SHARDS):
            group = _hint_group(shard)
            for _path, _kind, blob in await self.engine.scan_group(HINT_APP, "", group, group, group + b"\xff",
                                                                   1000):
                hint = pb.TransactionTasks.FromString(blob)
                age = now - hint.started.ToMicroseconds() / 1e6
                if age < self.sweep_after_seconds:
                    continue
                try:
                    if await self._settle(hint, age):
                        settled += 1
                except (KilnError, grpc.aio.AioRpcError) as exc:
                    log.warning("transactional tasks of %s: sweep will retry: %s", hint.app_id, exc)
        return settled

    async def _settle(self, hint: pb.TransactionTasks, age: float) -> bool:
        group = outbox_group(hint.transaction)
        [blob] = await self.engine.get(hint.app_id, hint.namespace, [Ref(group, group)], strong=True)
        if blob is not None and is_record(blob):
            await self.forward(pb.TransactionTasks.FromString(blob[len(RECORD_MARK):]))
            return True
        [version] = await self.engine.group_versions(hint.app_id, hint.namespace, [group])
        if version > 0 or age > ABANDON_AFTER_SECONDS:  # forwarded already, or never committed
            await self.unhint(hint.transaction)
            return True
        return False

    async def run(self) -> None:
        """Sweep every ``sweep_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                settled = await self.sweep_once()
            except UnavailableError as exc:
                log.warning("transactional tasks sweep: %s", exc)
                continue
            if settled:
                log.info("transactional tasks sweep: settled %d transaction(s)", settled)

    async def close(self) -> None:
        """Stop forwarding (what is cut is left to the next sweep)."""
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)


def forwarder(engine: Engine, address: str, token_for: TokenFor, options: tuple[tuple[str, int], ...], *,
              sweep_seconds: float = SWEEP_SECONDS,
              sweep_after_seconds: float = SWEEP_AFTER_SECONDS) -> tuple[Outbox, Callable[[], Awaitable[None]]]:
    """An :class:`Outbox` sending to ``taskqueue_svc`` at ``address``, and the function that closes its channel."""
    channel = grpc.aio.insecure_channel(address, options=list(options))
    stub: taskqueue_pb2_grpc.TaskQueueServiceAsyncStub = taskqueue_pb2_grpc.TaskQueueServiceStub(channel)
    return Outbox(engine, stub, token_for, sweep_seconds, sweep_after_seconds), channel.close
