"""Push delivery: one loop per queue of every app, on the queue's durable JetStream consumer.

Each loop waits for a free slot (``max_concurrent_requests``) and a token of the queue's bucket (``rate``,
``bucket_size``), then takes the next message. A task whose ETA has not come is handed back with a delay until it
(``nak(delay)``: JetStream keeps it and redelivers it then; it uses no token); a due task spends a token and is
sent through the router by the :class:`Sender`. A 2xx answer completes it (its name is tombstoned); anything else
(or no answer within the request deadline) queues its next attempt after the backoff of its retry parameters,
until ``task_retry_limit``/``task_age_limit`` give it up: it is then dropped and logged. Failing tasks never hold
up the others: a retry waits in the stream, not in a slot.

**Across replicas.** Every replica pulls from the same durable consumer, so each message goes to one replica at
a time; the bucket, the slots and the paused flag are shared in NATS KV (:mod:`taskqueue_svc.shared`), so the rate
and ``max_concurrent_requests`` hold for the sum of the replicas. A replica keeps the messages it holds (waiting
for a token, or being sent) alive with in-progress acknowledgements every third of the lease (``lease_seconds``,
30 s by default), which is also the consumer's ``ack_wait``: a task request may run App Engine's 10 minutes
without being handed to another replica, and a replica that dies has its messages redelivered to the others
within one lease, while its slots expire at the same time. That is App Engine's at-least-once contract: the only
duplicate runs are of the attempts the dead replica had in flight (sent, not yet recorded).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln_platform.queueyaml import Queue
from taskqueue_svc import tasks
from taskqueue_svc.shared import LOCAL_TOKEN_SECONDS, SharedQueues, batch_for
from taskqueue_svc.store import DELETED, QUEUED, TaskStore

log = logging.getLogger(__name__)
# What an operator of kiln dev wants to see as it happens (kiln dev prints this logger's lines).
events = logging.getLogger("taskqueue_svc.events")

# Sends one attempt of a task through the router; its HTTP status, or 0 when there was no answer.
Sender = Callable[[pb.StoredTask], Awaitable[int]]
_NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)


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

    def __init__(self, app_id: str, queue: Queue, store: TaskStore, send: Sender, shared: SharedQueues, *,
                 default_max_concurrent: int) -> None:
        self.app_id = app_id
        self.queue = queue
        self.state = QueueState()
        self._store = store
        self._send = send
        self._shared = shared
        # The consumer's ack_wait: held messages are kept alive three times per lease (see module docstring).
        self._ack_wait = shared.lease_seconds
        self._keepalive = shared.lease_seconds / 3
        self._limit = queue.max_concurrent_requests or None
        self._slots = asyncio.Semaphore(queue.max_concurrent_requests or default_max_concurrent)
        self._held = 0  # slots (attempts) this replica holds; its lease in the shared entry says so
        self._lease_lock = asyncio.Lock()
        self._batch = batch_for(queue.rate_per_second, queue.bucket_size)
        self._tokens = 0  # taken from the shared bucket, not spent yet
        self._tokens_until = 0.0
        self._paused = False
        self._backlog = False  # the last fetch came back full: fetch a batch next
        self._stopping = asyncio.Event()
        self._attempts: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Deliver until :meth:`stop`; while NATS cannot be reached, try again every second."""
        renewer = asyncio.create_task(self._renew())
        try:
            await self._run()
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await self._shared.release_all(self.app_id, self.queue.name)

    async def _run(self) -> None:
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
            if self.queue.rate_per_second <= 0:  # paused in queue.yaml (App Engine's rate 0)
                await self._sleep(5.0)
                continue
            if self._paused:
                await self._sleep(1.0)
                with contextlib.suppress(*_NATS_ERRORS):  # still paused as far as this replica knows
                    bucket = await self._shared.bucket(self.app_id, self.queue.name)
                    self._paused = bucket is not None and bucket.paused
                continue
            slots = 0
            try:
                slots = await self._reserve()
                msgs = await self._fetch(sub, slots) if slots else []
                due = await self._due(msgs)
            except _NATS_ERRORS as exc:  # messages in hand are redelivered after ack_wait
                for _ in range(slots):
                    await self._give_back()
                log.warning("taskqueue %s/%s: reading the queue: %s", self.app_id, self.queue.name, exc)
                await self._sleep(1.0)
                continue
            except BaseException:
                for _ in range(slots):
                    await self._give_back()
                raise
            for _ in range(slots - len(due)):
                await self._give_back()
            for msg in due:
                attempt = asyncio.create_task(self._attempt(msg))
                self._attempts.add(attempt)
                attempt.add_done_callback(self._attempts.discard)

    async def _reserve(self) -> int:
        """Slots for the next fetch: with ``max_concurrent_requests`` one at a time from the replicas' shared
        leases (0: none free now); without, as many free local slots as a batch of tokens (at least one)."""
        await self._slots.acquire()
        if self._limit is not None:
            try:
                if await self._take_slot():
                    return 1
            except BaseException:
                self._slots.release()
                raise
            self._slots.release()
            return 0
        n = 1
        while n < self._batch and not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            n += 1
        async with self._lease_lock:
            self._held += n
        return n

    async def _take_slot(self) -> bool:
        """Count one more attempt of this replica; with ``max_concurrent_requests``, only if the replicas'
        leases together leave a slot (else wait a little and say no)."""
        async with self._lease_lock:
            if self._limit is not None and not await self._shared.hold(
                    self.app_id, self.queue.name, self._held + 1, limit=self._limit, sending=self.state.in_flight):
                taken = False
            else:
                self._held += 1
                taken = True
        if not taken:
            await self._sleep(0.05)
        return taken

    async def _give_back(self, *, counted: bool = True) -> None:
        """End an attempt (or a try at one): its local and shared slot are free again."""
        try:
            if counted:
                async with self._lease_lock:
                    self._held -= 1
                    if self._limit is not None:
                        with contextlib.suppress(*_NATS_ERRORS):  # the lease expires by itself
                            await self._shared.hold(self.app_id, self.queue.name, self._held, limit=None,
                                                    sending=self.state.in_flight)
        finally:
            self._slots.release()

    async def _renew(self) -> None:
        """Renew this replica's lease (and report its in-flight count) while it runs."""
        while not self._stopping.is_set():
            await self._sleep(min(self._keepalive, 2.0))
            with contextlib.suppress(*_NATS_ERRORS):
                async with self._lease_lock:
                    await self._shared.hold(self.app_id, self.queue.name, self._held, limit=None,
                                            sending=self.state.in_flight)

    async def _fetch(self, sub: JetStreamContext.PullSubscription, n: int) -> list[Msg]:
        """Up to ``n`` messages: while the last fetch came back full, as many as are there (waiting at most 0.1 s);
        else the first to come within 2 s. (A fetch of several that finds none waits for all of them until its
        timeout, which would hold a task whose ETA just came.)"""
        batch = n > 1 and self._backlog
        try:
            msgs = list(await sub.fetch(n if batch else 1, timeout=0.1 if batch else 2.0))
        except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nothing due now
            self._backlog = False
            return []
        self._backlog = len(msgs) == (n if batch else 1)
        return msgs

    async def _due(self, msgs: list[Msg]) -> list[Msg]:
        """The messages whose task is due, with a token spent for each; the others go back to the stream (a task
        not due yet until its ETA, the rest at once if the queue was paused meanwhile)."""
        out, held = [], list(msgs)
        async with self._kept_alive(held):
            for msg in msgs:
                try:
                    task = pb.StoredTask.FromString(msg.data)
                except Exception:  # noqa: BLE001 - not ours: never retried
                    log.error("taskqueue %s/%s: dropping a message that is not a task", self.app_id, self.queue.name)
                    held.remove(msg)
                    await msg.term()
                    continue
                early = task.eta.ToDatetime(datetime.timezone.utc).timestamp() - time.time()
                if early > 0.001:
                    held.remove(msg)  # no longer kept alive: that would push its redelivery back
                    await msg.nak(delay=early)
                elif await self._token():
                    out.append(msg)
                else:  # paused (or stopping) while it waited: back to the stream, untouched
                    held.remove(msg)
                    await msg.nak(delay=1.0)
        return out

    async def _token(self) -> bool:
        """Spend a token of the shared bucket, waiting for one; False when the queue is paused or stopping."""
        while not self._stopping.is_set():
            if self._tokens and time.monotonic() < self._tokens_until:
                self._tokens -= 1
                return True
            got, wait, paused = await self._shared.take_tokens(self.app_id, self.queue.name,
                                                               self.queue.rate_per_second, self.queue.bucket_size,
                                                               self._batch)
            if got:
                self._tokens, self._tokens_until = got - 1, time.monotonic() + LOCAL_TOKEN_SECONDS
                return True
            if paused:
                self._paused = True
                return False
            await self._sleep(min(wait, 1.0))
        return False

    @contextlib.asynccontextmanager
    async def _kept_alive(self, msgs: list[Msg]) -> AsyncIterator[None]:
        """Tell JetStream the messages are still being worked on, so they are not redelivered while this replica
        lives (a task request may run 10 minutes; the consumer's ack_wait is one lease)."""
        async def beat() -> None:
            while True:
                await asyncio.sleep(self._keepalive)
                for msg in list(msgs):
                    with contextlib.suppress(*_NATS_ERRORS):
                        await msg.in_progress()

        beating = asyncio.create_task(beat())
        try:
            yield
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _attempt(self, msg: Msg) -> None:
        self.state.in_flight += 1
        try:
            async with self._kept_alive([msg]):
                await self._deliver(msg, pb.StoredTask.FromString(msg.data))
        except _NATS_ERRORS as exc:  # the message stays unacknowledged: JetStream redelivers it after ack_wait
            log.warning("taskqueue %s/%s: task store not reachable: %s", self.app_id, self.queue.name, exc)
        except Exception:  # noqa: BLE001 - one task's fault never stops the queue
            log.exception("taskqueue %s/%s: delivering a task failed", self.app_id, self.queue.name)
        finally:
            self.state.in_flight -= 1
            self.state.finished.append(time.monotonic())
            await self._give_back()

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
            events.warning("taskqueue %s/%s: task %s (%s %s) failed %d times (last answer %s); dropped after its "
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
