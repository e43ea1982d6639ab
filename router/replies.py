"""NATS request-reply for the router: one reply subscription per process, little work per request.

It keeps nats-py's ``request`` design (one wildcard subscription on a random
inbox, ``INBOX.<nuid>.*``, and a future per request found by the last token
of the reply subject) and drops the per-request work that design does not
need, measured with cProfile on the router under load:

- the token is a counter, not a new NUID plus two random bytes read from
  the OS: the inbox prefix is already unique to this connection, and only the
  instance that received a request may publish to its reply subject (NATS
  ``allow_responses``, :mod:`kiln_platform.natsauth`), so a token needs no
  secrecy, only uniqueness within the prefix;
- the timeouts share one timer on the loop, set for the earliest deadline of
  the requests waiting (not :func:`asyncio.wait_for`, which wraps the future
  and adds callbacks, nor a timer made and cancelled per request): a request
  costs a clock read, and the timer, when it fires, fails the requests whose
  deadline has passed and is set again for the earliest of the others;
- the subject is checked once, by ``publish``;
- a reply is handed to its request in the turn that read it
  (:func:`kiln_platform.natsinline.subscribe_inline`), not through the
  subscription's queue and task (a queue put, a task wake-up, a coroutine per
  reply, and one event-loop turn more before the request's task resumes).

The semantics are nats-py's: :class:`nats.errors.NoRespondersError` when
the server says no one listens (status 503), :class:`nats.errors.TimeoutError`
after ``timeout`` seconds, and a reply that comes after its request gave up is
dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from kiln_platform.natsinline import subscribe_inline

log = logging.getLogger(__name__)

_STATUS = "Status"
_NO_RESPONDERS = "503"


class Requester:
    """Sends requests on ``nc`` and matches their replies (see module docstring)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}  # by token: the future, its deadline
        self._tokens = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the timer fires (loop time); inf: not set

    @property
    def waiting(self) -> int:
        """Requests waiting for a reply."""
        return len(self._waiting)

    async def start(self) -> None:
        """Subscribe to this process's replies (once, before the first request)."""
        self._prefix = self._nc.new_inbox() + "."
        await subscribe_inline(self._nc, self._prefix + "*", self._on_reply)

    def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    async def request(self, subject: str, data: bytes, *, timeout: float) -> Msg:
        """The reply to ``data`` sent on ``subject``.

        Raises:
            nats.errors.NoRespondersError: No one listens on ``subject``.
            nats.errors.TimeoutError: No reply within ``timeout`` seconds.
        """
        assert self._prefix, "start() first"
        token = format(next(self._tokens), "x")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        deadline = loop.time() + timeout
        self._waiting[token] = (future, deadline)
        if deadline < self._timer_at:  # the earliest deadline waiting (with one timeout for all: the first only)
            self._set_timer(loop, deadline)
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token)
            msg = await future
        finally:
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    def _set_timer(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        """Fail the requests whose deadline has passed; set the timer for the earliest of the others."""
        self._timer, self._timer_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest = math.inf
        for token, (future, deadline) in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[token]
                if not future.done():
                    future.set_exception(nats.errors.TimeoutError)
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._set_timer(loop, earliest)
