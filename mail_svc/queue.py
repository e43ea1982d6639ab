"""The durable mail queue on JetStream, and the workers that deliver from it.

``Send`` returns only after JetStream has stored the message (a ``PubAck``), so an accepted message survives a
crash of mail_svc, of the relay, or a restart of NATS itself (file storage). The stream ``KILN_MAIL`` is a
work queue: a message leaves it when a worker acknowledges it, after delivery or after moving it to the
dead-letter stream ``KILN_MAIL_DEAD``.

Exactly once towards the relay: before sending, a worker claims the delivery in the key-value bucket
``kiln-mail-delivered`` (keyed by Message-ID and recipients; an atomic create, or a compare-and-set over a claim
older than ``ack_wait``), and as soon as the relay has accepted the message it replaces the claim with the
record of the delivery, and only then acknowledges the message on the stream. A message handed out again after
a crash (or to another replica) whose delivery is recorded is acknowledged without being sent again; one whose
delivery another worker has claimed comes back later. The claim matters because JetStream's count of deliveries
is no proof that nobody else holds a message: a nats-server killed outright forgets recent consumer state and
hands out a message a worker is still sending as a first delivery, and a reconnected client can still hold a
message the old connection fetched.

A worker that holds a delivery the relay accepted keeps it until the record is stored, however long NATS is
unreachable (each attempt is short, so a request lost with a killed nats-server is sent again as soon as NATS is
back). A claim that looks stale may belong to such a worker, or to one whose claim refreshes could not get
through: whoever takes a stale claim over waits :data:`TAKEOVER_GRACE_SECONDS` and sends only if nobody wrote
the entry meanwhile, and a live holder writes it within that time (it refreshes its claim, and re-asserts it over
a takeover, at least every ``TAKEOVER_GRACE_SECONDS / 2.5``; it retries its record at least as often).

What remains is SMTP's own window: mail_svc itself dying between the relay's ``250`` and the stored record (on
loopback a few milliseconds, see ``bench/mail_bench.py --window``; for as long as NATS stays unreachable when it
is): the relay has the message but kiln cannot know it, and it is sent again. JetStream writes each message to
its file before it acknowledges it (``write()``, without ``fsync``), so a kill -9 of nats-server loses no
acknowledged record; a crash of the machine can lose what the kernel had not written to disk yet (nats-server's
``sync_interval``, 2 minutes by default).

Failures: a temporary one (connection refused, timeouts, 4xx) puts the message back with exponential backoff
(``nak`` with a delay); a permanent one (5xx), or the last allowed attempt, moves it to the dead-letter stream
with the reason. Recipients refused temporarily while others were accepted are requeued on their own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, ObjectStoreConfig, RetentionPolicy, StorageType,
                         StreamConfig)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from kiln.errors import UnavailableError
from kiln.pb.mail.v1 import mail_pb2 as pb
from mail_svc.message import delivery_key
from mail_svc.transport import Outcome, PermanentFailure, TemporaryFailure, Transport

log = logging.getLogger(__name__)

STREAM = "KILN_MAIL"
SUBJECT_PREFIX = "kiln.mail.outbound."
DEAD_STREAM = "KILN_MAIL_DEAD"
DEAD_PREFIX = "kiln.mail.dead."
CONSUMER = "mail-delivery"
DELIVERED_BUCKET = "kiln-mail-delivered"
BODIES_BUCKET = "kiln-mail-bodies"
# Room for the QueuedMail envelope around an inline message.
ENVELOPE_ALLOWANCE = 16 * 1024
DEAD_MAX_AGE_SECONDS = 30 * 24 * 3600
ATTEMPTS_HEADER = "Kiln-Attempts"
DEAD_READ_BATCH = 256  # dead letters read per round trip when listing
DEAD_READER_IDLE_SECONDS = 30.0  # a listing's consumer vanishes this long after a reader died mid-page
# How long one attempt to store a delivery's record may take. Short, because a request that a killed nats-server
# swallowed is never answered: the next attempt goes out on the new connection.
RECORD_ATTEMPT_SECONDS = 2.0
RECORD_PAUSE_SECONDS = 0.2
# A worker taking over a stale claim waits this long for a live holder to show itself before it sends.
TAKEOVER_GRACE_SECONDS = 5.0
# How often a holder refreshes its claim during a delivery (at most; a third of ack_wait when that is shorter).
REFRESH_SECONDS = TAKEOVER_GRACE_SECONDS / 2.5


@dataclasses.dataclass(frozen=True)
class QueueSettings:
    """How the queue stores and retries (from MailConfig)."""

    replicas: int = 1
    ack_wait_seconds: float = 120.0
    retry_min_seconds: float = 10.0
    retry_max_seconds: float = 1800.0
    max_attempts: int = 20
    max_age_seconds: float = 3 * 24 * 3600.0


def backoff(attempt: int, settings: QueueSettings) -> float:
    """Seconds before attempt ``attempt + 1``: doubling from the minimum, capped at the maximum."""
    return float(min(settings.retry_max_seconds, settings.retry_min_seconds * 2 ** max(0, attempt - 1)))


class MailQueue:
    """The stream, the delivery records and the bucket of large messages, on one NATS connection."""

    def __init__(self, nc: Client, settings: QueueSettings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self._delivered: KeyValue | None = None
        self._bodies: ObjectStore | None = None

    async def open(self) -> None:
        """Create (or find) the streams and buckets."""
        s = self.settings
        await _ensure_stream(self.js, StreamConfig(
            name=STREAM, subjects=[SUBJECT_PREFIX + ">"], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, num_replicas=s.replicas, duplicate_window=120.0))
        await _ensure_stream(self.js, StreamConfig(
            name=DEAD_STREAM, subjects=[DEAD_PREFIX + ">"], storage=StorageType.FILE, num_replicas=s.replicas,
            max_age=DEAD_MAX_AGE_SECONDS))
        keep = s.max_age_seconds + DEAD_MAX_AGE_SECONDS
        try:
            self._delivered = await self.js.key_value(DELIVERED_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self._delivered = await self.js.create_key_value(KeyValueConfig(
                bucket=DELIVERED_BUCKET, ttl=keep, storage=StorageType.FILE, replicas=s.replicas))
        try:
            self._bodies = await self.js.object_store(BODIES_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self._bodies = await self.js.create_object_store(BODIES_BUCKET, config=ObjectStoreConfig(
                ttl=keep, storage=StorageType.FILE, replicas=s.replicas))

    async def put(self, queued: pb.QueuedMail, raw: bytes) -> None:
        """Store a message durably; returns once JetStream has it (a second put of one Message-ID is a no-op)."""
        try:
            if len(raw) + ENVELOPE_ALLOWANCE <= self.nc.max_payload:
                queued.raw = raw
            else:
                queued.raw_object = delivery_key(queued.message_id, list(queued.recipients))
                assert self._bodies is not None
                await self._bodies.put(queued.raw_object, raw)
            await self.js.publish(SUBJECT_PREFIX + queued.app_id, queued.SerializeToString(),
                                  headers={"Nats-Msg-Id": delivery_key(queued.message_id, list(queued.recipients))},
                                  timeout=10)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise UnavailableError(f"the mail queue (NATS JetStream) did not store the message: {exc}") from None

    async def raw(self, queued: pb.QueuedMail) -> bytes:
        """The message's bytes (from the bucket when they did not fit in the stream message)."""
        if not queued.raw_object:
            return queued.raw
        assert self._bodies is not None
        result = await self._bodies.get(queued.raw_object)
        return bytes(result.data or b"")

    async def record_delivery(self, key: str, outcome: Outcome, *, timeout: float = RECORD_ATTEMPT_SECONDS) -> None:
        """Store that the relay accepted the delivery ``key`` (over any claim: the sender's word is final)."""
        assert self._delivered is not None
        await asyncio.wait_for(self._delivered.put(key, outcome.to_json()), timeout)

    async def claim(self, key: str) -> Claim | Outcome | None:
        """Take the delivery ``key`` for this worker.

        Returns:
            a :class:`Claim` to send the message under; the recorded :class:`Outcome` if it was delivered
            already; ``None`` if another worker claimed it less than ``ack_wait_seconds`` ago (it may be
            sending it right now).
        """
        assert self._delivered is not None
        claim = Claim(key, uuid.uuid4().hex)
        for _ in range(3):  # a concurrent claimer can win each compare-and-set; three rounds settle who
            try:
                # The common case, a message nobody sent yet: one atomic create (it also replaces a released claim).
                claim.revision = await self._delivered.create(key, claim.value())
                return claim
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._delivered.get(key)
            except nats.js.errors.KeyNotFoundError:  # released meanwhile
                continue
            held = _claimed_at(entry.value or b"")
            if held is None:
                return Outcome.from_json(entry.value or b"{}")
            if time.time() - held < self.settings.ack_wait_seconds:
                return None
            try:  # a stale claim: its worker died before sending (or before recording what it sent)...
                claim.revision = await self._delivered.update(key, claim.value(), last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return await self._after_grace(claim)
        return None

    async def _after_grace(self, claim: Claim) -> Claim | Outcome | None:
        """...or it is alive and could not write for a while (NATS was down): a live holder records its delivery
        or re-asserts its claim within the grace, and then the message is not sent here. Meanwhile this worker
        keeps its own claim fresh (compare-and-set: any other write ends the wait), so that nobody else takes
        it over in turn."""
        assert self._delivered is not None
        deadline = time.monotonic() + TAKEOVER_GRACE_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, _refresh_interval(self.settings)))
            try:
                claim.revision = await self._delivered.update(claim.key, claim.value(), last=claim.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                break
        try:
            entry = await self._delivered.get(claim.key)
        except nats.js.errors.KeyNotFoundError:  # its holder gave it up after a failed attempt: it comes back
            return None
        if entry.revision == claim.revision:
            return claim
        if _claimed_at(entry.value or b"") is None:
            return Outcome.from_json(entry.value or b"{}")
        log.info("a claim taken over as stale was re-asserted by its live holder; not sending")
        return None

    async def refresh(self, claim: Claim) -> None:
        """Renew a claim during a long delivery. A holder that is sending is the one sender: should its claim
        have changed (a refresh whose answer was lost with a killed nats-server, or a takeover by a worker that
        found it stale while NATS was down), it writes it again, over anything but a record."""
        assert self._delivered is not None
        last = claim.revision
        for _ in range(3):
            try:
                claim.revision = await self._delivered.update(claim.key, claim.value(), last=last)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._delivered.get(claim.key)
            except nats.js.errors.KeyNotFoundError:
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    claim.revision = await self._delivered.create(claim.key, claim.value())
                    return
                continue
            if _claimed_at(entry.value or b"") is None:
                return  # recorded as delivered already
            last = entry.revision or 0

    async def release(self, claim: Claim) -> None:
        """Give a claim up after a delivery that did not happen (so a retry need not wait for it to go stale)."""
        assert self._delivered is not None
        with contextlib.suppress(nats.errors.Error):
            await self._delivered.delete(claim.key, last=claim.revision)

    async def forget_body(self, queued: pb.QueuedMail) -> None:
        if queued.raw_object and self._bodies is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._bodies.delete(queued.raw_object)

    async def dead_letter(self, queued: pb.QueuedMail, reason: str, *, attempts: int) -> None:
        """Keep a message that will not be delivered, with why and after how many attempts, on the dead-letter
        stream (under the sending app's subject, which is what scopes :meth:`dead_letters`)."""
        await self.js.publish(DEAD_PREFIX + queued.app_id, queued.SerializeToString(),
                              headers={"Kiln-Reason": reason[:1000].replace("\r", " ").replace("\n", " "),
                                       ATTEMPTS_HEADER: str(attempts),
                                       "Nats-Msg-Id": "dead-" + delivery_key(queued.message_id,
                                                                             list(queued.recipients))},
                              timeout=10)

    async def dead_letters(self, app_id: str, *, limit: int, before: int | None) -> tuple[list[pb.DeadLetter], int]:
        """A page of ``app_id``'s dead letters, newest first: at most ``limit`` of those stored before stream
        sequence ``before`` (all when None), and the sequence to pass as ``before`` for the next page (0: none).

        JetStream reads a subject forwards only, so this reads the app's letters older than ``before`` with an
        ephemeral consumer filtered to its subject (in batches) and keeps the newest ``limit``: a page costs
        the app's dead letters of the last :data:`DEAD_MAX_AGE_SECONDS`, not the stream's.
        """
        kept: collections.deque[pb.DeadLetter] = collections.deque(maxlen=limit + 1)
        sub = await self.js.pull_subscribe(
            DEAD_PREFIX + app_id, stream=DEAD_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                  inactive_threshold=DEAD_READER_IDLE_SECONDS, mem_storage=True))
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                msgs = await sub.fetch(min(DEAD_READ_BATCH, pending), timeout=5)
                for msg in msgs:
                    pending = msg.metadata.num_pending
                    if before is not None and msg.metadata.sequence.stream >= before:
                        pending = 0
                        break
                    kept.append(_dead_letter(msg))
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise UnavailableError(f"the mail dead-letter stream (NATS JetStream) could not be read: {exc}") from None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        page = list(reversed(kept))
        if len(page) > limit:
            return page[:limit], page[limit - 1].sequence
        return page, 0

    async def delete_dead_letter(self, app_id: str, sequence: int) -> bool:
        """Remove ``app_id``'s dead letter at stream sequence ``sequence``; False when there is none (another
        app's letter is none too: it is neither deleted nor said to exist)."""
        try:
            found = await self.js.get_msg(DEAD_STREAM, seq=sequence)
            if found.subject != DEAD_PREFIX + app_id:
                return False
            return bool(await self.js.delete_msg(DEAD_STREAM, sequence))
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise UnavailableError(f"the mail dead-letter stream (NATS JetStream) could not be changed: {exc}") \
                from None

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        """The shared durable consumer every replica's workers pull from."""
        return await self.js.pull_subscribe(SUBJECT_PREFIX + ">", durable=CONSUMER, stream=STREAM,
                                            config=ConsumerConfig(ack_wait=self.settings.ack_wait_seconds,
                                                                  max_deliver=-1, max_ack_pending=10_000))


@dataclasses.dataclass
class Claim:
    """One worker's claim on one delivery: it alone may send the message while the claim is fresh."""

    key: str
    owner: str
    revision: int = 0

    def value(self) -> bytes:
        return json.dumps({"claimed_by": self.owner, "at": time.time()}).encode()


def _dead_letter(msg: Msg) -> pb.DeadLetter:
    """One message of the dead-letter stream as the contract shows it (its body, headers and place)."""
    queued = pb.QueuedMail.FromString(msg.data)
    headers = msg.headers or {}
    attempts = headers.get(ATTEMPTS_HEADER, "")
    letter = pb.DeadLetter(sequence=msg.metadata.sequence.stream, message_id=queued.message_id,
                           envelope_from=queued.envelope_from, recipients=queued.recipients, subject=queued.subject,
                           queued_at=queued.queued_at, reason=headers.get("Kiln-Reason", ""),
                           attempts=int(attempts) if attempts.isdigit() else 0)
    letter.dead_at.FromDatetime(msg.metadata.timestamp)
    return letter


def _refresh_interval(settings: QueueSettings) -> float:
    """How often a holder writes its claim again: well within ack_wait (after which the claim looks stale) and
    within the takeover grace."""
    return min(REFRESH_SECONDS, max(0.5, settings.ack_wait_seconds / 3))


def _claimed_at(value: bytes) -> float | None:
    """When a bucket entry that is a claim was made (``None``: the entry records a delivery)."""
    try:
        found = json.loads(value)
    except ValueError:
        return None
    return float(found["at"]) if isinstance(found, dict) and "claimed_by" in found else None


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.stream_info(config.name)  # another replica created it meanwhile


class Deliverer:
    """Workers that take messages off the queue and hand them to the transport."""

    def __init__(self, queue: MailQueue, transports: list[Transport], *, batch: int = 16) -> None:
        self._queue = queue
        self._transports = transports
        self._batch = batch
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.delivered = 0

    async def start(self) -> None:
        sub = await self._queue.subscribe()
        self._sub = sub
        self._tasks = [asyncio.create_task(self._work(sub, transport)) for transport in self._transports]

    async def stop(self) -> None:
        """Finish the message in hand, put the rest of each batch back, close the transports."""
        self._stopping.set()
        done, pending = await asyncio.wait(self._tasks, timeout=10) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()
        for transport in self._transports:
            await transport.close()

    async def _work(self, sub: JetStreamContext.PullSubscription, transport: Transport) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(self._batch, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except nats.errors.Error as exc:
                log.warning("reading the mail queue: %s", exc)
                await asyncio.sleep(1)
                continue
            for i, msg in enumerate(msgs):
                if self._stopping.is_set():
                    for rest in msgs[i:]:
                        with contextlib.suppress(nats.errors.Error):
                            await rest.nak()
                    break
                try:
                    await self._handle(msg, transport)
                except nats.errors.Error as exc:
                    # Not acknowledged: JetStream hands it out again after ack_wait.
                    log.warning("mail queue error while handling a message: %s", exc)

    async def _handle(self, msg: Msg, transport: Transport) -> None:
        try:
            queued = pb.QueuedMail.FromString(msg.data)
        except Exception:  # noqa: BLE001 - a malformed entry cannot be delivered; keep it for inspection
            log.error("malformed entry on the mail queue (%d bytes); moved to the dead-letter stream", len(msg.data))
            await self._queue.js.publish(DEAD_PREFIX + "_malformed", msg.data, timeout=10)
            await msg.ack_sync()
            return
        key = delivery_key(queued.message_id, list(queued.recipients))
        attempt = msg.metadata.num_delivered or 1
        claim = await self._queue.claim(key)
        if isinstance(claim, Outcome):
            log.info("mail %s was delivered before a restart; not sending it again", queued.message_id)
            await self._after_partial(queued, claim, attempt)  # idempotent: finishes what a crash may have cut short
            await self._finish(msg, queued)
            return
        if claim is None:
            log.info("mail %s is being delivered by another worker; looking again later", queued.message_id)
            await msg.nak(delay=self._queue.settings.ack_wait_seconds)
            return
        try:
            raw = await self._queue.raw(queued)
            async with _keep_alive(msg, self._queue, claim):
                outcome = await transport.deliver(queued, raw)
        except TemporaryFailure as exc:
            await self._queue.release(claim)
            await self._retry_or_give_up(msg, queued, attempt, str(exc))
            return
        except PermanentFailure as exc:
            log.warning("mail %s of %s refused for good: %s", queued.message_id, queued.app_id, exc)
            await self._queue.dead_letter(queued, str(exc), attempts=attempt)
            await self._queue.release(claim)
            await self._finish(msg, queued)
            return
        await self._record(queued, key, outcome, time.monotonic())
        self.delivered += 1
        await self._after_partial(queued, outcome, attempt)
        await self._finish(msg, queued)

    async def _record(self, queued: pb.QueuedMail, key: str, outcome: Outcome, accepted_at: float) -> None:
        """Record a delivery the relay accepted, however long NATS stays unreachable: an unrecorded delivery would
        be sent again once its claim goes stale. Only mail_svc stopping (cancellation) ends the attempts."""
        failed = 0
        try:
            while True:
                try:
                    await self._queue.record_delivery(key, outcome)
                    break
                except (nats.errors.Error, asyncio.TimeoutError) as exc:
                    failed += 1
                    if failed == 1 or failed % 25 == 0:
                        log.warning("recording the delivery of mail %s: %s; trying again", queued.message_id,
                                    exc or type(exc).__name__)
                    await asyncio.sleep(RECORD_PAUSE_SECONDS)
        except asyncio.CancelledError:
            log.error("stopping before the delivery of mail %s could be recorded (NATS unreachable): it will be "
                      "sent again", queued.message_id)
            raise
        took = time.monotonic() - accepted_at
        if failed:
            log.info("delivery of mail %s recorded %.1fs after the relay accepted it", queued.message_id, took)
        else:
            log.debug("delivery of mail %s recorded %.2f ms after the relay accepted it", queued.message_id,
                      took * 1000)

    async def _after_partial(self, queued: pb.QueuedMail, outcome: Outcome, attempt: int) -> None:
        """Recipients the relay refused while it accepted others: dead-letter the permanent, requeue the rest."""
        if outcome.refused_permanently:
            dead = pb.QueuedMail()
            dead.CopyFrom(queued)
            del dead.recipients[:]
            dead.recipients.extend(outcome.refused_permanently)
            await self._queue.dead_letter(dead, "; ".join(f"{r}: {why}" for r, why in
                                                         outcome.refused_permanently.items()), attempts=attempt)
        if outcome.deferred:
            again = pb.QueuedMail()
            again.CopyFrom(queued)
            del again.recipients[:]
            again.recipients.extend(outcome.deferred)
            raw = await self._queue.raw(queued)
            again.ClearField("raw")
            again.ClearField("raw_object")
            await self._queue.put(again, raw)

    async def _retry_or_give_up(self, msg: Msg, queued: pb.QueuedMail, attempt: int, reason: str) -> None:
        settings = self._queue.settings
        age = time.time() - queued.queued_at.ToSeconds()
        if attempt >= settings.max_attempts or age >= settings.max_age_seconds:
            log.warning("mail %s of %s not delivered after %d attempts: %s", queued.message_id, queued.app_id,
                        attempt, reason)
            await self._queue.dead_letter(queued, f"gave up after {attempt} attempts: {reason}", attempts=attempt)
            await self._finish(msg, queued)
            return
        delay = backoff(attempt, settings)
        log.info("mail %s: attempt %d failed (%s); next in %.1fs", queued.message_id, attempt, reason, delay)
        await msg.nak(delay=delay)

    async def _finish(self, msg: Msg, queued: pb.QueuedMail) -> None:
        # Not waited for: should the acknowledgement be lost, the message comes back as a redelivery, whose
        # recorded delivery keeps it from being sent again.
        await msg.ack()
        await self._queue.forget_body(queued)


@contextlib.asynccontextmanager
async def _keep_alive(msg: Msg, queue: MailQueue, claim: Claim) -> AsyncIterator[None]:
    """Tell JetStream the message is still being worked on while a slow delivery runs (no redelivery), and
    keep the claim on its delivery fresh."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(_refresh_interval(queue.settings))
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await msg.in_progress()
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await asyncio.wait_for(queue.refresh(claim), RECORD_ATTEMPT_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
