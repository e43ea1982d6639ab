"""The router's demands for scaled-to-zero versions (router/demand.py) on a real nats-server's JetStream."""

from __future__ import annotations

import asyncio

import nats
import pytest

from kiln_platform import bus
from router.demand import Demand

pytestmark = pytest.mark.nats


async def stored(js, subject: str) -> int:
    """How many demands for ``subject`` the stream holds (nobody consumes them here)."""
    info = await js.stream_info(bus.DEMAND_STREAM, subjects_filter=subject)
    return info.state.subjects.get(subject, 0) if info.state.subjects else 0


async def settled(demand: Demand) -> None:
    """Wait until the demand's publishes are acknowledged by JetStream (with a deadline)."""
    async with asyncio.timeout(10):
        while demand._sending:  # noqa: SLF001 - the test waits for the publishes it started
            await asyncio.sleep(0.01)


@pytest.fixture()
async def js(nats_url):
    nc = await nats.connect(nats_url)
    await bus.ensure_demand_stream(nc)
    yield nc
    await nc.close()


async def test_a_router_asks_once_while_its_requests_wait(js):
    demand, subject = Demand(js), bus.demand_subject("waits", "v1")
    for _ in range(5):
        demand.ask("waits", "v1")
    await settled(demand)
    assert await stored(js.jetstream(), subject) == 1


async def test_after_the_version_answered_the_next_ask_goes_out_at_once(js):
    demand, subject = Demand(js), bus.demand_subject("again", "v1")
    demand.ask("again", "v1")
    await settled(demand)
    demand.answered("again", "v1")  # it served; then it scaled to zero again, within the same period
    demand.ask("again", "v1")
    await settled(demand)
    assert await stored(js.jetstream(), subject) == 2


async def test_an_answer_to_a_request_that_never_asked_changes_nothing(js):
    demand, subject = Demand(js), bus.demand_subject("quiet", "v1")
    demand.answered("quiet", "v1")
    demand.ask("quiet", "v1")
    demand.ask("quiet", "v1")
    await settled(demand)
    assert await stored(js.jetstream(), subject) == 1


async def test_a_waiting_request_hears_the_versions_first_heartbeat(js):
    demand = Demand(js)
    waiting = asyncio.ensure_future(demand.started("beats", "v1", 60))
    async with asyncio.timeout(30):  # an instance heartbeats every few seconds: here, until the waiter heard one
        while not waiting.done():
            await js.publish(bus.heartbeat_subject("beats", "v1"), b"")
            await asyncio.sleep(0.05)
    assert waiting.result() is True


async def test_without_a_heartbeat_the_wait_ends_at_its_timeout(js):
    assert await Demand(js).started("silent", "v1", 0.05) is False


async def test_another_versions_heartbeat_does_not_wake_it(js):
    demand = Demand(js)
    waiting = asyncio.ensure_future(demand.started("mine", "v1", 1))
    await asyncio.sleep(0)
    await js.publish(bus.heartbeat_subject("mine", "v2"), b"")
    assert await waiting is False
