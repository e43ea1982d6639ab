"""The router's NATS request-reply (router.replies) against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

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
