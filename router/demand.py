"""Asking runtime hosts for an instance of a version none serves (scale to zero's way back).

A version without traffic runs no instance (:mod:`runtime.host`, ``--scale-to-zero``). When a request for it finds
no responder, the router publishes a demand for the version on the demand work queue
(:func:`kiln_platform.bus.ensure_demand_stream`) and keeps the request in its pending queue; one runtime host with
room takes the demand and starts the version's manager, whose first instance then answers the waiting requests.
A router asks at most once per version every :data:`ASK_SECONDS` while requests wait, and the stream keeps one
message per version per period whichever router sent it, so a burst of requests is one start. Once the version
answers a request that had to ask, the router forgets its ask (and the next ask gets a new message id): a version
that scales to zero again soon after is asked for at once, not when the period ends. Extra demands are harmless:
a host starts a version only once (its placement key, :mod:`runtime.host`).

Requests waiting for a version they asked for retry when its first instance says it serves (an instance sends its
first heartbeat right after subscribing, :mod:`runtime.app`), not only on their back-off: :meth:`Demand.started`
listens on the version's heartbeat subject while requests wait, for one heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kiln_platform import bus

log = logging.getLogger(__name__)

ASK_SECONDS = bus.DEMAND_DEDUPE_SECONDS
_MAX_REMEMBERED = 4096


class Demand:
    """Publishes demands for versions (see module docstring)."""

    def __init__(self, nc: Client) -> None:
        self._js = nc.jetstream()
        self._asked: dict[tuple[str, str], float] = {}
        self._rounds: dict[tuple[str, str], int] = {}  # asks answered so far, per version: part of the message id
        self._nc = nc
        self._started: dict[tuple[str, str], asyncio.Event] = {}  # set by the version's next heartbeat
        self._sending: set[asyncio.Task[None]] = set()

    def ask(self, app_id: str, version_id: str) -> None:
        """Ask for an instance of the version, unless this router asked less than :data:`ASK_SECONDS` ago."""
        key = (app_id, version_id)
        now = time.monotonic()
        if now - self._asked.get(key, -ASK_SECONDS) < ASK_SECONDS:
            return
        if len(self._asked) >= _MAX_REMEMBERED:
            self._asked.clear()
        self._asked[key] = now
        task = asyncio.ensure_future(self._publish(app_id, version_id))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def started(self, app_id: str, version_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for an instance of the version to send a heartbeat (it serves); whether
        one did. Requests waiting for the same version share one subscription, which ends with the heartbeat."""
        key = (app_id, version_id)
        event = self._started.get(key)
        if event is None or event.is_set():  # none yet, or one that an earlier instance set (it went away since)
            event = self._started[key] = asyncio.Event()
            if len(self._started) > _MAX_REMEMBERED:
                self._started = {key: event}

            listening: list[Subscription] = []

            async def on_beat(_msg: Msg) -> None:
                event.set()
                for sub in listening:  # one heartbeat is all it waits for
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

            try:
                listening.append(await self._nc.subscribe(bus.heartbeat_subject(app_id, version_id), cb=on_beat))
            except Exception as exc:  # noqa: BLE001 - NATS away: the back-off alone decides
                log.debug("cannot listen for %s/%s's heartbeats: %s", app_id, version_id, exc)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def answered(self, app_id: str, version_id: str) -> None:
        """A request that asked for the version got its answer: forget the ask (see module docstring)."""
        key = (app_id, version_id)
        self._started.pop(key, None)
        if self._asked.pop(key, None) is not None:
            if len(self._rounds) >= _MAX_REMEMBERED:
                self._rounds.clear()
            self._rounds[key] = self._rounds.get(key, 0) + 1

    async def _publish(self, app_id: str, version_id: str) -> None:
        answered = self._rounds.get((app_id, version_id), 0)
        message_id = bus.demand_message_id(app_id, version_id, time.time(), answered)
        try:
            await self._js.publish(bus.demand_subject(app_id, version_id), b"", timeout=5,
                                   headers={"Nats-Msg-Id": message_id})
        except Exception as exc:  # noqa: BLE001 - the next waiting request asks again
            log.warning("could not ask for an instance of %s/%s: %s", app_id, version_id, exc)
