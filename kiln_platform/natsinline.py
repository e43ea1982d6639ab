"""NATS subscriptions whose messages are handled in the turn nats-py reads them, with no queue and no task.

nats-py's ``subscribe(cb=...)`` puts each message on the subscription's queue, and a task of the subscription
takes it off and awaits a coroutine made for it: a queue put, a task wake-up and a coroutine per message, and the
message is handled one event-loop turn after it was read. A handler that only hands the message on (resolves a
future, queues a request for a thread) needs none of that: :func:`subscribe_inline` calls it where nats-py reads
the message. The router's replies and log acknowledgements and the runtime's requests are subscribed so.

What stays nats-py's: the subject and queue group (a queue-group message still goes to one member), ``drain`` (the
server stops sending, a ``flush`` round trip later every message it sent has been handled: there is no queue to
wait for) and ``unsubscribe``. What the handler takes over: the subscription has no pending queue, so nats-py's
slow-consumer limits (``pending_msgs_limit``, ``pending_bytes_limit``) do not apply; a handler that keeps messages
for later bounds them itself (the runtime: :data:`runtime.app.MAX_HELD_REQUESTS`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger(__name__)


class _Inline:
    """Stands in for the future of nats-py's single-reply subscriptions: nats-py 2.16 (pinned) hands every message
    of a subscription made with ``future=`` to ``future.set_result`` in its reading task, with no queue and no
    task of the subscription's own; this passes each to ``handle`` there."""

    __slots__ = ("_handle",)

    def __init__(self, handle: Callable[[Msg], None]) -> None:
        self._handle = handle

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        try:
            self._handle(msg)
        except Exception:  # noqa: BLE001 - never into nats-py's reading task: it would stop reading
            log.exception("handling a message on %s failed", msg.subject)


async def subscribe_inline(nc: Client, subject: str, handle: Callable[[Msg], None], *,
                           queue: str = "") -> Subscription:
    """Subscribe ``handle`` (a plain function: it must not block) to ``subject`` (in the queue group ``queue``, if
    given), called for each message in the turn nats-py reads it (see the module docstring)."""
    return await nc.subscribe(subject, queue=queue, future=cast("asyncio.Future[Msg]", _Inline(handle)))
