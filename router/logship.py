"""Request logs to the ``KILN_LOGS`` stream, each kept until JetStream has acknowledged it.

A plain NATS publish is fire-and-forget: a record written to the connection just before nats-server dies (or
while the router is reconnecting and its buffer overflows) is gone, and with it the log of a request that was
served. So each record is published through JetStream in a task of its own, off the request's path (the response
never waits for it): the publish waits for the stream's acknowledgement and is sent again, with a growing pause,
until it gets one. The record's request id is its ``Nats-Msg-Id``, so a record sent twice (its first
acknowledgement lost) is stored once, within the stream's duplicate window (2 minutes by default; a record that
takes longer than that to get through may be stored twice, which the logs service shows as two records).

Memory is bounded: at most ``max_pending`` records wait at once; beyond that a new record is dropped and counted
in a warning (NATS has been away long enough that the router would otherwise grow without bound). On shutdown
:meth:`LogShipper.close` gives the waiting records a few seconds to get through.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client

log = logging.getLogger(__name__)

ACK_TIMEOUT_SECONDS = 5.0
MAX_PAUSE_SECONDS = 5.0


class LogShipper:
    """Publishes request logs to JetStream, each until acknowledged (module docstring)."""

    def __init__(self, nc: Client, subject: str, *, max_pending: int = 50_000) -> None:
        self._js = nc.jetstream()
        self._subject = subject
        self._max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()
        self._dropped = 0

    def ship(self, request_id: str, record: bytes) -> None:
        """Send ``record`` (a serialized ``RequestLog``) in the background."""
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("request logs dropped: %d waiting for NATS already (%d dropped so far)",
                            len(self._pending), self._dropped)
            return
        task = asyncio.create_task(self._send(request_id, record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, request_id: str, record: bytes) -> None:
        pause = 0.1
        while True:
            try:
                await self._js.publish(self._subject, record, timeout=ACK_TIMEOUT_SECONDS,
                                       headers={"Nats-Msg-Id": request_id})
                return
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                log.debug("request log %s not acknowledged yet (%s); sending again", request_id, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE_SECONDS)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def close(self, grace: float = 5.0) -> None:
        """Give waiting records ``grace`` seconds to get through, then give up on the rest (logged)."""
        if not self._pending:
            return
        _, left = await asyncio.wait(set(self._pending), timeout=grace)
        for task in left:
            task.cancel()
        if left:
            log.warning("%d request logs not acknowledged by NATS at shutdown; they are lost", len(left))
