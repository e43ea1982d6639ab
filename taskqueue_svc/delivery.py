"""Push delivery: one loop per queue of every app, on the queue's durable JetStream consumer.

Each loop waits for a free slot (``max_concurrent_requests``) and a token of the queue's bucket (``rate``,
``bucket_size``), then takes the next message. A task whose ETA has not come is handed back with a delay until it
(``nak(delay)``: JetStream keeps it and redelivers it then; it uses no token); a due task spends a token and is
sent through the router by the :class:`Sender`. A 2xx answer completes it (its name is tombstoned); anything else
(or no answer within the request deadline) queues its next attempt after the backoff of its retry parameters,
until ``task_retry_limit``/``task_age_limit`` give it up: it is then dropped and logged. Failing tasks never hold
up the others: a retry waits in the stream, not in a slot.

**Across replicas (not done yet).** Every replica pulls from the same durable consumer, so each message goes to one
replica at a time; but the bucket and the slots are this replica's own, so N replicas allow up to N × rate. The
plan: each replica takes tokens from a shared bucket in NATS KV (``APP.QUEUE`` → tokens and refill time, changed
with compare-and-set on the revision, a batch of tokens at a time so the KV is not the bottleneck), and slots
likewise as leases (a key per running task with a TTL of the request deadline, counted before taking a message).
A replica that dies leaves its messages unacknowledged: JetStream redelivers them after ``ack_wait`` (the request
deadline plus a margin), which is App Engine's at-least-once contract.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln_platform.queueyaml import Queue
from taskqueue_svc import tasks
from taskqueue_svc.store import DELETED, QUEUED, TaskStore

log = logging.getLogger(__name__)

# Sends one attempt of a task through the router; its HTTP status, or 0 when there was no answer.
Sender = Callable[[pb.StoredTask], Awaitable[int]]
_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)


class TokenBucket:
    """App Engine's token bucket: ``rate`` tokens a second, at most ``capacity`` saved up (full at the start)."""

    def __init__(self, rate: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = float(capacity)
        self._tokens = float(capacity)
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait_seconds(self) -> float:
        """Seconds until a token is there (0: one is there now; infinite at rate 0, App Engine's paused queue)."""
        if self.rate <= 0:
            return float("inf")
        self._refill()
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate

    def take(self) -> None:
        """Spend one token (call after :meth:`wait_seconds` said 0)."""
        self._refill()
        self._tokens -= 1


@dataclasses.dataclass
class QueueState:
    """What one replica knows of a queue while it runs it (QueueStats)."""

    in_flight: int = 0
    finished: collections.deque[float] = dataclasses.field(default_factory=collections.deque)

    def executed_last_minute(self, now: float) -> int:
        while self.finished and self.finished[0] < now - 60:
            self.finished.popleft()
        return len(self.finished)


class QueueRunner:
    """Delivers one queue of one app (see module docstring)."""

    def __init__(self, app_id: str, queue: Queue, store: TaskStore, send: Sender, *, request_timeout: float,
                 default_max_concurrent: int) -> None:
        self.app_id = app_id
        self.queue = queue
        self.state = QueueState()
        self._store = store
        self._send = send
        self._ack_wait = request_timeout + 60  # the attempt's deadline, then a margin before JetStream redelivers
        self._bucket = TokenBucket(queue.rate_per_second, queue.bucket_size)
        self._slots = asyncio.Semaphore(queue.max_concurrent_requests or default_max_concurrent)
        self._stopping = asyncio.Event()
        self._attempts: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Deliver until :meth:`stop`; while NATS cannot be reached, try again every second."""
        while not self._stopping.is_set():
            try:
                sub = await self._store.subscribe(self.app_id, self.queue.name, self._ack_wait)
            except _NATS_ERRORS as exc:
                log.warning("taskqueue %s/%s: cannot read the queue: %s", self.app_id, self.queue.name, exc)
                await self._sleep(1.0)
                continue
            try:
                await self._deliver_from(sub)
            finally:
                with contextlib.suppress(*_NATS_ERRORS):
                    await sub.unsubscribe()

    async def _deliver_from(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                msg = await self._next(sub)
            except _NATS_ERRORS as exc:
                self._slots.release()
                log.warning("taskqueue %s/%s: reading the queue: %s", self.app_id, self.queue.name, exc)
                await self._sleep(1.0)
                continue
            except BaseException:
                self._slots.release()
                raise
            if msg is None:
                self._slots.release()
                continue
            attempt = asyncio.create_task(self._attempt(msg))
            self._attempts.add(attempt)
            attempt.add_done_callback(self._attempts.discard)

    async def _next(self, sub: JetStreamContext.PullSubscription) -> Msg | None:
        """The next due message, with a token spent for it; ``None`` when there is none now."""
        wait = self._bucket.wait_seconds()
        if wait > 0:
            await self._sleep(min(wait, 5.0))
            return None
        try:
            [msg] = await sub.fetch(1, timeout=2.0)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nothing due now
            return None
        try:
            task = pb.StoredTask.FromString(msg.data)
        except Exception:  # noqa: BLE001 - not ours: never retried
            log.error("taskqueue %s/%s: dropping a message that is not a task", self.app_id, self.queue.name)
            await msg.term()
            return None
        early = task.eta.ToDatetime(datetime.timezone.utc).timestamp() - time.time()
        if early > 0.001:
            await msg.nak(delay=early)
            return None
        self._bucket.take()
        return msg

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _attempt(self, msg: Msg) -> None:
        self.state.in_flight += 1
        try:
            await self._deliver(msg, pb.StoredTask.FromString(msg.data))
        except _NATS_ERRORS as exc:  # the message stays unacknowledged: JetStream redelivers it after ack_wait
            log.warning("taskqueue %s/%s: task store not reachable: %s", self.app_id, self.queue.name, exc)
        except Exception:  # noqa: BLE001 - one task's fault never stops the queue
            log.exception("taskqueue %s/%s: delivering a task failed", self.app_id, self.queue.name)
        finally:
            self.state.in_flight -= 1
            self.state.finished.append(time.monotonic())
            self._slots.release()

    async def _deliver(self, msg: Msg, task: pb.StoredTask) -> None:
        state = await self._store.state(task.app_id, task.queue, task.name)
        if state != QUEUED:  # deleted (or purged) while it waited
            log.info("taskqueue %s/%s: task %s was %s; not sent", self.app_id, self.queue.name, task.name,
                     (state or DELETED).decode())
            await msg.ack()
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        if not task.HasField("first_attempt"):
            task.first_attempt.FromDatetime(now)
        status = await self._send(task)
        if 200 <= status < 300:
            await self._store.tombstone(task)
            await msg.ack()
            return
        now = datetime.datetime.now(datetime.timezone.utc)  # the backoff counts from the failure
        retry = tasks.retry_of(self.queue, task.retry_options if task.HasField("retry_options") else None)
        age = (now - task.first_attempt.ToDatetime(datetime.timezone.utc)).total_seconds()
        if retry.exhausted(task.retry_count, age):
            log.warning("taskqueue %s/%s: task %s (%s %s) failed %d times (last answer %s); dropped after its "
                        "retry limits", self.app_id, self.queue.name, task.name, task.method, task.url,
                        task.retry_count + 1, status or "none")
            await self._store.tombstone(task)
            await msg.ack()
            return
        task.retry_count += 1
        if status:
            task.execution_count += 1
        task.previous_response = status
        delay = retry.backoff(task.retry_count)
        task.eta.FromDatetime(now + datetime.timedelta(seconds=delay))
        log.info("taskqueue %s/%s: task %s answered %s; retry %d in %.1f s", self.app_id, self.queue.name,
                 task.name, status or "nothing", task.retry_count, delay)
        await self._store.retry(task)
        await msg.ack()

    async def stop(self) -> None:
        """Stop taking tasks and wait for the attempts under way (their messages are redelivered if cut)."""
        self._stopping.set()
        if self._attempts:
            await asyncio.gather(*self._attempts, return_exceptions=True)
