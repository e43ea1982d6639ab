"""The router's NATS request-reply (router.replies) against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from kiln_platform.natsinline import subscribe_inline
from router.replies import Requester

pytestmark = pytest.mark.nats


PROBE = b"probe"


async def listening(responder, subject, cb, router):
    """Subscribe ``cb`` and wait until the server routes ``subject`` to it. (nats-py's flush() writes its PING
    straight to the socket, possibly before the SUB still queued for its flusher, so it does not prove that.)"""

    async def answering_probes(msg):
        if msg.data == PROBE:
            await responder.publish(msg.reply, PROBE)
        else:
            await cb(msg)

    await responder.subscribe(subject, cb=answering_probes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            await router.request(subject, PROBE, timeout=5)
            return
        except nats.errors.NoRespondersError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.01)


@pytest.fixture()
async def connections(nats_url):
    router, responder = await nats.connect(nats_url), await nats.connect(nats_url)
    yield router, responder
    await router.close()
    await responder.close()


async def test_concurrent_requests_each_get_their_own_reply(connections):
    router, responder = connections

    async def echo(msg):
        await responder.publish(msg.reply, b"re:" + msg.data)

    await listening(responder, "replies.echo", echo, router)
    requester = Requester(router)
    await requester.start()
    answers = await asyncio.gather(*(requester.request("replies.echo", str(i).encode(), timeout=10)
                                     for i in range(300)))
    assert [a.data for a in answers] == [b"re:%d" % i for i in range(300)]
    assert requester.waiting == 0


async def test_no_responders_is_an_error_at_once(connections):
    router, _ = connections
    requester = Requester(router)
    await requester.start()
    with pytest.raises(nats.errors.NoRespondersError):
        await requester.request("replies.nobody", b"x", timeout=30)
    assert requester.waiting == 0


async def test_a_reply_after_the_timeout_is_dropped_and_the_next_request_gets_its_own(connections):
    router, responder = connections
    held: asyncio.Queue = asyncio.Queue()

    async def hold(msg):
        await held.put(msg)

    await listening(responder, "replies.slow", hold, router)
    requester = Requester(router)
    await requester.start()
    with pytest.raises(nats.errors.TimeoutError):
        await requester.request("replies.slow", b"first", timeout=0.2)
    assert requester.waiting == 0
    late = await held.get()
    await responder.publish(late.reply, b"late answer")
    second = asyncio.ensure_future(requester.request("replies.slow", b"second", timeout=10))
    current = await held.get()
    await responder.publish(current.reply, b"answer to " + current.data)
    assert (await second).data == b"answer to second"


async def test_replies_reach_their_requests_without_a_task_of_the_subscription(connections):
    router, responder = connections

    async def echo(msg):
        await responder.publish(msg.reply, msg.data)

    await listening(responder, "replies.inline", echo, router)
    requester = Requester(router)
    tasks_before = len(asyncio.all_tasks())
    await requester.start()
    assert len(asyncio.all_tasks()) == tasks_before  # no queue-reading task for the reply subscription
    assert (await requester.request("replies.inline", b"x", timeout=10)).data == b"x"


async def test_a_failing_inline_handler_leaves_the_connection_reading(connections):
    router, responder = connections
    seen: list[bytes] = []

    def handle(msg):
        seen.append(msg.data)
        raise RuntimeError("handler failed")

    await subscribe_inline(router, "replies.failing", handle)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not seen:  # until the server routes the subject to the subscription (a probe got through)
        assert loop.time() < deadline
        await responder.publish("replies.failing", PROBE)
        await asyncio.sleep(0.01)
    await responder.publish("replies.failing", b"first")
    await responder.publish("replies.failing", b"second")
    while b"second" not in seen:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert [data for data in seen if data != PROBE] == [b"first", b"second"]
    assert router.is_connected


async def test_a_short_timeout_after_a_long_one_expires_at_its_own_deadline(connections):
    router, responder = connections
    held: asyncio.Queue = asyncio.Queue()

    async def hold(msg):
        await held.put(msg)

    await listening(responder, "replies.held", hold, router)
    requester = Requester(router)
    await requester.start()
    long = asyncio.ensure_future(requester.request("replies.held", b"long", timeout=600))
    await held.get()
    with pytest.raises(nats.errors.TimeoutError):  # the shared timer, set for the 600-s one, is set earlier
        await asyncio.wait_for(requester.request("replies.held", b"short", timeout=0.2), 30)
    assert not long.done() and requester.waiting == 1
    long.cancel()
    await asyncio.gather(long, return_exceptions=True)
    assert requester.waiting == 0


async def test_a_request_answered_before_its_deadline_leaves_later_requests_their_own(connections):
    router, responder = connections
    held: asyncio.Queue = asyncio.Queue()

    async def hold(msg):
        await held.put(msg)

    await listening(responder, "replies.later", hold, router)
    requester = Requester(router)
    await requester.start()
    first = asyncio.ensure_future(requester.request("replies.later", b"first", timeout=0.3))
    msg = await held.get()
    await responder.publish(msg.reply, b"first answer")
    assert (await first).data == b"first answer"
    second = asyncio.ensure_future(requester.request("replies.later", b"second", timeout=30))
    current = await held.get()
    # A third request, unanswered, times out after the first's deadline, for which the shared timer was set.
    with pytest.raises(nats.errors.TimeoutError):
        await asyncio.wait_for(requester.request("replies.later", b"third", timeout=0.5), 30)
    assert not second.done()
    await responder.publish(current.reply, b"second answer")
    assert (await second).data == b"second answer"
