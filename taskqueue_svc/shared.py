"""What every replica of taskqueue_svc shares about a push queue: its token bucket, its concurrency slots and whether
it is paused — in the NATS KV bucket ``KILN_TASK_QUEUES``, changed only by compare-and-set on an entry's revision.

Design (issue 16: rates and ``max_concurrent_requests`` hold across any number of replicas).

- **Rate**: one :class:`~kiln.pb.taskqueue.v1.taskqueue_pb2.SharedBucket` per queue (key ``APP.QUEUE.bucket``): the
  tokens left at a refill time (Unix time, so replicas on different machines agree as far as their clocks do). A
  replica that holds a due task reads the entry, refills it at the queue's rate up to ``bucket_size``, takes
  tokens and writes it back conditional on the revision it read; a conflict (another replica took tokens
  meanwhile) reads again. A replica takes a *batch* of tokens when the rate is high (:func:`batch_for`: a tenth of a
  second's worth) and spends them locally within :data:`LOCAL_TOKEN_SECONDS`, else drops them: so the KV sees one
  compare-and-set per batch, not per task, and tokens are never spent late. The sum over replicas never exceeds
  the bucket, because every token is taken once from the one entry.
- **Concurrency**: :class:`~kiln.pb.taskqueue.v1.taskqueue_pb2.SlotLeases` (key ``APP.QUEUE.slots``): per replica,
  how many tasks it is sending and until when that lease holds. A replica takes a slot (compare-and-set) before it
  takes a message when the queue sets ``max_concurrent_requests`` (the sum of live leases stays below it), gives
  it back when the attempt ends, and renews its lease every third of :data:`DEFAULT_LEASE_SECONDS`: a replica that
  dies stops renewing, and its slots count for nothing once its lease expires — the same time after which
  JetStream hands its unacknowledged messages to another replica. Queues without ``max_concurrent_requests`` take
  no slots (no cost per task); their leases are only written by the renewal, as the in-flight count of the
  queue's statistics (each lease also says how many tasks the replica is *sending*, as opposed to holding).
- **Pause**: a flag of the bucket entry. A paused queue has no tokens to give, so no replica sends its tasks;
  replicas re-read the entry every second while it is paused.

The pure functions below decide (refill, take, count); :class:`SharedQueues` does the reads and conditional writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb

log = logging.getLogger(__name__)

BUCKET = "KILN_TASK_QUEUES"
DEFAULT_LEASE_SECONDS = 30.0
LOCAL_TOKEN_SECONDS = 1.0  # tokens taken in a batch and not spent within this time are dropped
_BATCH_SECONDS = 0.1  # a batch is this much of the rate
_MAX_CONFLICTS = 50  # compare-and-set retries before giving up for now (the caller waits and tries again)
_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)


def bucket_key(app_id: str, queue: str) -> str:
    return f"{app_id}.{queue}.bucket"


def slots_key(app_id: str, queue: str) -> str:
    return f"{app_id}.{queue}.slots"


def batch_for(rate: float, capacity: int) -> int:
    """How many tokens a replica takes at once: a tenth of a second of the rate (at least 1, at most the bucket)."""
    return max(1, min(capacity, int(rate * _BATCH_SECONDS)))


def refill(bucket: pb.SharedBucket | None, rate: float, capacity: int, now: float) -> pb.SharedBucket:
    """The bucket at ``now`` (a queue seen for the first time starts full, as App Engine's)."""
    if bucket is None:
        return pb.SharedBucket(tokens=float(capacity), refilled_at=now)
    out = pb.SharedBucket()
    out.CopyFrom(bucket)
    elapsed = max(0.0, now - bucket.refilled_at)  # a clock behind the last writer's adds nothing
    out.tokens = min(float(capacity), bucket.tokens + elapsed * rate)
    out.refilled_at = max(now, bucket.refilled_at)
    return out


def take(bucket: pb.SharedBucket | None, rate: float, capacity: int, now: float,
         want: int) -> tuple[pb.SharedBucket, int, float]:
    """Take up to ``want`` whole tokens: (the bucket after, tokens taken, seconds until one is there if none was).

    A paused queue, or a rate of 0, gives none and an infinite wait.
    """
    out = refill(bucket, rate, capacity, now)
    if out.paused or rate <= 0:
        return out, 0, float("inf")
    got = min(want, int(out.tokens + 1e-9))
    if got <= 0:
        return out, 0, (1 - out.tokens) / rate
    out.tokens -= got
    return out, got, 0.0


def live_held(leases: pb.SlotLeases | None, now: float, *, besides: str = "") -> int:
    """Slots held by replicas whose lease has not expired (not counting ``besides``)."""
    if leases is None:
        return 0
    return sum(lease.held for replica, lease in leases.replicas.items()
               if replica != besides and lease.expires_at > now)


def live_sending(leases: pb.SlotLeases | None, now: float) -> int:
    """Tasks being sent by replicas whose lease has not expired."""
    if leases is None:
        return 0
    return sum(lease.sending for lease in leases.replicas.values() if lease.expires_at > now)


def with_held(leases: pb.SlotLeases | None, replica: str, held: int, now: float, lease_seconds: float, *,
              sending: int = 0) -> pb.SlotLeases:
    """``leases`` with ``replica`` holding ``held`` slots and sending ``sending`` tasks (renewed), and expired
    leases of others removed."""
    out = pb.SlotLeases()
    if leases is not None:
        for other, lease in leases.replicas.items():
            if other != replica and lease.expires_at > now:
                out.replicas[other].CopyFrom(lease)
    if held > 0 or sending > 0:
        out.replicas[replica].CopyFrom(pb.SlotLease(held=held, sending=sending, expires_at=now + lease_seconds))
    return out


class SharedQueues:
    """Reads and conditional writes of ``KILN_TASK_QUEUES`` (see module docstring)."""

    def __init__(self, js: JetStreamContext, replica: str, *, replicas: int = 1,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, clock: Callable[[], float]) -> None:
        self.replica = replica
        self.lease_seconds = lease_seconds
        self._js = js
        self._replicas = replicas
        self._clock = clock
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        try:
            self._kv = await self._js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            try:
                self._kv = await self._js.create_key_value(KeyValueConfig(
                    bucket=BUCKET, history=1, storage=StorageType.FILE, replicas=self._replicas, direct=True))
            except nats.js.errors.BadRequestError:  # another replica made it meanwhile
                self._kv = await self._js.key_value(BUCKET)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "open() first"
        return self._kv

    async def _read(self, key: str) -> tuple[bytes | None, int]:
        try:
            entry = await self.kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, 0
        return entry.value, entry.revision or 0

    async def _write(self, key: str, value: bytes, revision: int) -> bool:
        """Compare-and-set: False when another writer changed the entry since ``revision``."""
        try:
            if revision:
                await self.kv.update(key, value, last=revision)
            else:
                await self.kv.create(key, value)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return False
        return True

    async def bucket(self, app_id: str, queue: str) -> pb.SharedBucket | None:
        value, _ = await self._read(bucket_key(app_id, queue))
        return pb.SharedBucket.FromString(value) if value is not None else None

    async def take_tokens(self, app_id: str, queue: str, rate: float, capacity: int,
                          want: int) -> tuple[int, float, bool]:
        """Take up to ``want`` tokens: (taken, seconds to wait if none, paused)."""
        key = bucket_key(app_id, queue)
        for _ in range(_MAX_CONFLICTS):
            value, revision = await self._read(key)
            before = pb.SharedBucket.FromString(value) if value is not None else None
            after, got, wait = take(before, rate, capacity, self._clock(), want)
            if got == 0:
                return 0, wait, after.paused
            if await self._write(key, after.SerializeToString(), revision):
                return got, 0.0, False
        return 0, 0.05, False

    async def set_paused(self, app_id: str, queue: str, paused: bool, *, rate: float, capacity: int) -> None:
        key = bucket_key(app_id, queue)
        while True:
            value, revision = await self._read(key)
            after = refill(pb.SharedBucket.FromString(value) if value is not None else None, rate, capacity,
                           self._clock())
            after.paused = paused
            if await self._write(key, after.SerializeToString(), revision):
                return

    async def slots(self, app_id: str, queue: str) -> pb.SlotLeases | None:
        value, _ = await self._read(slots_key(app_id, queue))
        return pb.SlotLeases.FromString(value) if value is not None else None

    async def in_flight(self, app_id: str, queue: str) -> int:
        return live_sending(await self.slots(app_id, queue), self._clock())

    async def hold(self, app_id: str, queue: str, held: int, *, limit: int | None, sending: int = 0) -> bool:
        """Set this replica's lease to ``held`` slots and ``sending`` tasks (renewed); with ``limit``, only if every
        live lease together stays within it (False: no slot free now)."""
        key = slots_key(app_id, queue)
        for _ in range(_MAX_CONFLICTS):
            value, revision = await self._read(key)
            before = pb.SlotLeases.FromString(value) if value is not None else None
            now = self._clock()
            if limit is not None and live_held(before, now, besides=self.replica) + held > limit:
                return False
            if held == 0 and sending == 0 and (before is None or self.replica not in before.replicas):
                return True  # nothing to write
            after = with_held(before, self.replica, held, now, self.lease_seconds, sending=sending)
            if await self._write(key, after.SerializeToString(), revision):
                return True
        return False

    async def release_all(self, app_id: str, queue: str) -> None:
        """Drop this replica's lease (when it stops serving the queue)."""
        with contextlib.suppress(*_NATS_ERRORS):
            await self.hold(app_id, queue, 0, limit=None)
