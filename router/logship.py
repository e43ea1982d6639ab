"""Request logs to the ``KILN_LOGS`` stream, many to a message, each kept until JetStream has acknowledged it.

A plain NATS publish is fire-and-forget: a record written to the connection just before nats-server dies (or
while the router is reconnecting and its buffer overflows) is gone, and with it the log of a request that was
served. So records are published through JetStream, off the request's path (the response never waits for them),
each publish waiting for the stream's acknowledgement and sent again, with a growing pause, until it gets one.

An acknowledged publish is a request-reply (a reply subscription, a future, the server's answer): about 20 times
the CPU of a plain publish. So records finished in the same turn of the event loop travel together: the first
record of a turn schedules a send for the end of that turn, which takes everything queued by then (up to a size
well inside the server's message limit) into one ``RequestLogBatch`` message (``kiln_platform.bus.request_logs_in``
reads it back). A record never waits for an earlier batch's acknowledgement, nor for a timer: it is written to
NATS in the turn after its request finished, as it was when each record was its own publish, so a router killed
right after answering has its records on their way (a linger that gathered more records per message halved the
latency at one connection, and lost the logs of requests answered in the 50 ms before a kill -9: the fault suite
caught it). A batch's ``Nats-Msg-Id`` is its first record's request id and its size, so a batch sent twice (its
first acknowledgement lost) is stored once within the stream's duplicate window (2 minutes by default; one that
takes longer to get through may be stored twice, which the logs service stores once, by request id).

An acknowledgement is matched without a task, a future or a timeout wrapper per batch (the cost of nats-py's
JetStream ``publish``, which at one connection, one batch a request, was most of the router's log work): the
shipper has one reply subscription of its own (``<inbox>.<counter>``, as :mod:`router.replies` does for requests),
handled in the turn nats-py reads it (:func:`kiln_platform.natsinline.subscribe_inline`), one task writes a
turn's batches, and each batch waiting for its acknowledgement has one timer, which sends it
again (after a pause) if no acknowledgement came within ``ACK_TIMEOUT_SECONDS``; an answer that is an error
(no stream yet, the stream refusing) sends it again the same way.

A served request's log must survive a ``kill -9`` of the router right after it answered, so the router sends a
response only once its record has reached nats-server: :meth:`LogShipper.ship` returns the turn's future, which
the writing task resolves after the turn's batches are published and a PING to the server has come back (the
server has every byte written before it; it stores the batch whatever becomes of the router). At 32 connections
one PING serves a turn's requests; at one connection it is one NATS round trip more per request. While NATS is
not connected nothing can reach it and the future resolves at once (the records wait in memory, as before), and
it never waits longer than :data:`REACH_TIMEOUT_SECONDS`. Before this, a record left the router two or three
event-loop turns after its response, and a kill in between lost it (the fault suite caught it under load).

Memory is bounded: at most ``max_pending`` records wait at once; beyond that a new record is dropped and counted
in a warning (NATS has been away long enough that the router would otherwise grow without bound). On shutdown
:meth:`LogShipper.close` gives the waiting records a few seconds to get through.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from kiln_platform import bus, natsinline
from kiln.pb.logs.v1 import logs_pb2

log = logging.getLogger(__name__)

ACK_TIMEOUT_SECONDS = 5.0
REACH_TIMEOUT_SECONDS = 2  # the longest a response waits for its record to reach nats-server
MAX_PAUSE_SECONDS = 5.0
FIRST_PAUSE_SECONDS = 0.1
# Room left in a message for the batch's framing and headers.
_HEADROOM = 4096
_STATUS = "Status"
_PING = b"PING\r\n"


class _Batch:
    """One message of records on its way: sent, and sent again, until acknowledged."""

    __slots__ = ("payload", "headers", "count", "pause", "timer")

    def __init__(self, batch_id: str, records: list[bytes]) -> None:
        self.payload = logs_pb2.RequestLogBatch(records=records).SerializeToString()
        self.headers = {bus.LOG_BATCH_HEADER: "1", "Nats-Msg-Id": batch_id}
        self.count = len(records)
        self.pause = FIRST_PAUSE_SECONDS
        self.timer: asyncio.TimerHandle | None = None


class LogShipper:
    """Publishes request logs to JetStream in acknowledged batches (module docstring)."""

    def __init__(self, nc: Client, subject: str, *, max_pending: int = 50_000,
                 max_batch_bytes: int = 512 * 1024) -> None:
        self._nc = nc
        self._subject = subject
        self._max_pending = max_pending
        self._max_batch_bytes = max_batch_bytes
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._in_flight = 0  # records taken into batches not yet acknowledged
        self._send_scheduled = False
        self._turn_reached: asyncio.Future[None] | None = None  # this turn's records reached nats-server
        self._writers: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, _Batch] = {}  # by the token of the attempt waiting for its acknowledgement
        self._pausing: set[_Batch] = set()  # to be sent again after a pause
        self._tokens = itertools.count()
        self._prefix = ""  # of this shipper's acknowledgement subjects, once subscribed
        self._idle = asyncio.Event()
        self._idle.set()
        self._dropped = 0

    def ship(self, request_id: str, record: bytes) -> asyncio.Future[None] | None:
        """Send ``record`` (a serialized ``RequestLog`` of request ``request_id``) in the background, until
        acknowledged; returns a future done once it has reached nats-server (module docstring; shared by the
        records of a turn: await it shielded), or None when the record was dropped."""
        if self.pending >= self._max_pending:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("request logs dropped: %d waiting for NATS already (%d dropped so far)",
                            self.pending, self._dropped)
            return None
        self._queue.append((request_id, record))
        self._idle.clear()
        if not self._send_scheduled:  # the first record of this turn: send at its end
            self._send_scheduled = True
            loop = asyncio.get_running_loop()
            self._turn_reached = loop.create_future()
            loop.call_soon(self._send_queued)
        return self._turn_reached

    def _send_queued(self) -> None:
        """Start writing everything queued, as few messages as fit (one task for them all)."""
        self._send_scheduled = False
        reached, self._turn_reached = self._turn_reached, None
        batches = []
        while self._queue:
            first_id, records = self._take()
            self._in_flight += len(records)
            batches.append(_Batch(f"{first_id}+{len(records)}", records))
        if batches:
            self._write_soon(batches, reached)
        elif reached is not None and not reached.done():
            reached.set_result(None)

    def _take(self) -> tuple[str, list[bytes]]:
        """The queued records that fit one message, oldest first (always at least one)."""
        limit = min(self._max_batch_bytes, max(self._nc.max_payload - _HEADROOM, 1))
        first_id, record = self._queue.popleft()
        batch, size = [record], len(record)
        while self._queue and size + len(self._queue[0][1]) + 8 <= limit:
            record = self._queue.popleft()[1]
            batch.append(record)
            size += len(record) + 8  # a record's tag and length take at most 8 bytes
        return first_id, batch

    def _write_soon(self, batches: list[_Batch], reached: asyncio.Future[None] | None = None) -> None:
        task = asyncio.create_task(self._write_reaching(batches, reached))
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def _write_reaching(self, batches: list[_Batch], reached: asyncio.Future[None] | None) -> None:
        """:meth:`_write`, then resolve ``reached`` once the server has what was written (a PING's answer)."""
        pinged = False
        try:
            await self._write(batches)
            if reached is not None and self._nc.is_connected:
                pinged = _ping_after_pending(self._nc, reached)
        finally:
            if not pinged and reached is not None and not reached.done():
                reached.set_result(None)

    async def _write(self, batches: list[_Batch]) -> None:
        """Write ``batches`` to NATS, each waiting for its acknowledgement (or its timer) from then on."""
        loop = asyncio.get_running_loop()
        if not self._prefix:
            prefix = self._nc.new_inbox() + "."
            try:
                await natsinline.subscribe_inline(self._nc, prefix + "*", self._on_ack)
                self._prefix = prefix
            except nats.errors.Error as exc:
                log.debug("request logs: subscribing to acknowledgements failed (%s); trying again", exc)
                for batch in batches:
                    self._again(batch)
                return
        for batch in batches:
            token = format(next(self._tokens), "x")
            try:
                await self._nc.publish(self._subject, batch.payload, reply=self._prefix + token,
                                       headers=batch.headers)
            except nats.errors.MaxPayloadError:
                log.error("request logs dropped: %d record(s) of %d bytes exceed NATS's message limit (%d)",
                          batch.count, len(batch.payload), self._nc.max_payload)
                self._done(batch)
                continue
            except nats.errors.Error as exc:
                log.debug("request logs not written to NATS (%s); sending again", exc)
                self._again(batch)
                continue
            self._waiting[token] = batch
            batch.timer = loop.call_later(ACK_TIMEOUT_SECONDS, self._unanswered, token)

    def _on_ack(self, msg: Msg) -> None:
        batch = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if batch is None:
            return  # the answer to an attempt that timed out (and was sent again): the new attempt's counts
        if batch.timer is not None:
            batch.timer.cancel()
        if msg.headers and msg.headers.get(_STATUS):  # 503: no stream listens (yet)
            log.debug("request logs not stored (status %s); sending again", msg.headers.get(_STATUS))
            self._again(batch)
        elif b'"error"' in msg.data:  # a PubAck is {"stream":…,"seq":…}; an error names itself
            log.debug("request logs not stored (%s); sending again", json.loads(msg.data).get("error"))
            self._again(batch)
        else:
            self._done(batch)

    def _unanswered(self, token: str) -> None:
        batch = self._waiting.pop(token, None)
        if batch is not None:
            log.debug("request logs not acknowledged within %.0f s; sending again", ACK_TIMEOUT_SECONDS)
            self._again(batch)

    def _again(self, batch: _Batch) -> None:
        """Send ``batch`` again after its pause, each pause longer than the last."""
        pause, batch.pause = batch.pause, min(batch.pause * 2, MAX_PAUSE_SECONDS)
        self._pausing.add(batch)
        batch.timer = asyncio.get_running_loop().call_later(pause, self._resend, batch)

    def _resend(self, batch: _Batch) -> None:
        self._pausing.discard(batch)
        self._write_soon([batch])

    def _done(self, batch: _Batch) -> None:
        self._in_flight -= batch.count
        if not self.pending:
            self._idle.set()

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (queued or in a batch on its way)."""
        return len(self._queue) + self._in_flight

    async def close(self, grace: float = 5.0) -> None:
        """Give waiting records ``grace`` seconds to get through, then give up on the rest (logged)."""
        if self._queue:  # records of this turn whose send has not started yet
            self._send_queued()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d request logs not acknowledged by NATS at shutdown; they are lost", self.pending)
        for batch in [*self._waiting.values(), *self._pausing]:
            if batch.timer is not None:
                batch.timer.cancel()
        self._waiting.clear()
        self._pausing.clear()
        for task in list(self._writers):
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)


def _ping_after_pending(nc: Client, reached: asyncio.Future[None]) -> bool:
    """Write what ``nc`` has queued so far followed by a PING, in one write, and resolve ``reached`` on that PING's
    PONG (or after :data:`REACH_TIMEOUT_SECONDS`). False when nothing could be written (``reached`` untouched).

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of the publishes still queued for its
    flusher task (this turn's batches), so its PONG says nothing about them; here the PING follows them in the same
    write. nats-server reads a connection in order, so once the PONG is back it has read every batch before it.
    The write and the PONG's place in the queue of expected PONGs are one step on the loop, as in nats-py's own
    PING, so PONGs still match PINGs in order whoever else sends one. It also costs one write where ``flush()`` made
    two, and no task wake-up or ``wait_for`` per turn.

    Uses nats-py 2.16's internals (pinned): ``_transport``, ``_pending`` and ``_pending_data_size`` (the bytes
    queued for the flusher, which finds none left), ``_pongs`` (futures resolved in order by PONGs).
    """
    transport = nc._transport
    if transport is None:
        return False
    queued = nc._pending
    try:
        transport.writelines([*queued, _PING])
    except Exception as exc:  # noqa: BLE001 - the records wait for their acknowledgement anyway
        log.debug("request logs: no PING after writing them (%s)", exc)
        return False
    nc._pending = []
    nc._pending_data_size = 0
    pong: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    nc._pongs.append(pong)
    timer = asyncio.get_running_loop().call_later(REACH_TIMEOUT_SECONDS, _resolve, reached, None)

    def answered(_: asyncio.Future[bool]) -> None:
        timer.cancel()
        _resolve(reached, None)

    pong.add_done_callback(answered)
    return True


def _resolve(future: asyncio.Future[None], _: object) -> None:
    if not future.done():
        future.set_result(None)
