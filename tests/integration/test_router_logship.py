"""The router's request logs reach the ``KILN_LOGS`` stream across a nats-server death (``router.logship``): records
written to a server that froze and was then killed with SIGKILL (so it never read them) are sent again once it is
back, and each is stored once."""

from __future__ import annotations

import asyncio
import os
import signal

import nats
import pytest

from kiln_platform import bus
from router.logship import LogShipper
from tests.integration.test_mail_durability import Nats

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

RECORDS = 50


async def _wait(predicate, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.1)


def test_logs_written_to_a_server_that_died_unread_are_stored_once_when_it_is_back(supervisor, tmp_path):
    server = Nats(supervisor, tmp_path).start()

    async def scenario() -> int:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await bus.ensure_log_stream(nc)
        shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT)
        server.child.proc.send_signal(signal.SIGSTOP)
        unread = server.received_unread(os.getpid())
        for n in range(RECORDS):
            shipper.ship(f"request-{n}", f"record {n}".encode())

        async def written() -> bool:  # in the frozen server's socket, unread
            return server.received_unread(os.getpid()) > unread
        await _wait(written, 30)
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        js = nc.jetstream()

        async def all_stored() -> bool:
            return shipper.pending == 0
        await _wait(all_stored, 60)
        stored = (await js.stream_info(bus.LOG_STREAM)).state.messages
        await shipper.close()
        await nc.close()
        return stored

    try:
        assert asyncio.run(scenario()) == RECORDS
    finally:
        server.stop()
