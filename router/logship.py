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

Memory is bounded: at most ``max_pending`` records wait at once; beyond that a new record is dropped and counted
in a warning (NATS has been away long enough that the router would otherwise grow without bound). On shutdown
:meth:`LogShipper.close` gives the waiting records a few seconds to get through.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import nats.errors
from nats.aio.client import Client

from kiln_platform import bus
from kiln.pb.logs.v1 import logs_pb2

log = logging.getLogger(__name__)

ACK_TIMEOUT_SECONDS = 5.0
MAX_PAUSE_SECONDS = 5.0
# Room left in a message for the batch's framing and headers.
_HEADROOM = 4096
_BATCH_HEADERS = {bus.LOG_BATCH_HEADER: "1"}


class LogShipper:
    """Publishes request logs to JetStream in acknowledged batches (module docstring)."""

    def __init__(self, nc: Client, subject: str, *, max_pending: int = 50_000,
                 max_batch_bytes: int = 512 * 1024) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subject = subject
        self._max_pending = max_pending
        self._max_batch_bytes = max_batch_bytes
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._in_flight = 0  # records taken into batches not yet acknowledged
        self._send_scheduled = False
        self._senders: set[asyncio.Task[None]] = set()
        self._dropped = 0

    def ship(self, request_id: str, record: bytes) -> None:
        """Send ``record`` (a serialized ``RequestLog`` of request ``request_id``) in the background."""
        if self.pending >= self._max_pending:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("request logs dropped: %d waiting for NATS already (%d dropped so far)",
                            self.pending, self._dropped)
            return
        self._queue.append((request_id, record))
        if not self._send_scheduled:  # the first record of this turn: send at its end
            self._send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_queued)

    def _send_queued(self) -> None:
        """Start sending everything queued, as few messages as fit."""
        self._send_scheduled = False
        while self._queue:
            first_id, batch = self._take()
            self._in_flight += len(batch)
            task = asyncio.create_task(self._send(f"{first_id}+{len(batch)}", batch))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

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

    async def _send(self, batch_id: str, records: list[bytes]) -> None:
        try:
            await self._publish(batch_id, records)
        finally:
            self._in_flight -= len(records)

    async def _publish(self, batch_id: str, records: list[bytes]) -> None:
        payload = logs_pb2.RequestLogBatch(records=records).SerializeToString()
        pause = 0.1
        while True:
            try:
                await self._js.publish(self._subject, payload, timeout=ACK_TIMEOUT_SECONDS,
                                       headers={**_BATCH_HEADERS, "Nats-Msg-Id": batch_id})
                return
            except nats.errors.MaxPayloadError:
                log.error("request logs dropped: %d record(s) of %d bytes exceed NATS's message limit (%d)",
                          len(records), len(payload), self._nc.max_payload)
                return
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                log.debug("request logs %s not acknowledged yet (%s); sending again", batch_id, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE_SECONDS)

    @property
    def pending(self) -> int:
        """Records not yet acknowledged (queued or in a batch on its way)."""
        return len(self._queue) + self._in_flight

    async def close(self, grace: float = 5.0) -> None:
        """Give waiting records ``grace`` seconds to get through, then give up on the rest (logged)."""
        if self._queue:  # records of this turn whose send has not started yet
            self._send_queued()
        if not self._senders:
            return
        _, left = await asyncio.wait(set(self._senders), timeout=grace)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        if self.pending:
            log.warning("%d request logs not acknowledged by NATS at shutdown; they are lost", self.pending)
