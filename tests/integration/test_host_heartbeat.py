"""A runtime host's heartbeats to the control plane (``runtime.host.report``) on a real nats-server: they keep their
period while the host looks for its Pythons again, which takes seconds on a busy host, so a busy host never
looks dead to the control plane (which would refuse every deploy meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import nats
import pytest

from kiln.pb.deploy.v1 import events_pb2
from kiln_platform import bus
from runtime import host

pytestmark = pytest.mark.nats

PERIOD = 0.2
SLOW_LOOK = 3.0


def test_heartbeats_keep_their_period_while_the_host_looks_for_its_pythons_again(nats_url, monkeypatch):
    looks = threading.Semaphore(0)

    def slow_python_versions(environ) -> list[str]:
        looks.release()
        time.sleep(SLOW_LOOK)  # as running each Python on a loaded machine
        return ["3.11"]

    monkeypatch.setattr(host, "python_versions", slow_python_versions)
    monkeypatch.setattr(host, "INTERPRETERS_REFRESH_SECONDS", 0.0)  # look again at once, over and over

    async def beats() -> list[float]:
        nc = await nats.connect(nats_url)
        seen: list[float] = []

        async def on(msg) -> None:
            if events_pb2.HostHeartbeat.FromString(msg.data).host == "busy-host":
                seen.append(time.monotonic())
        await nc.subscribe(bus.DEPLOY_HOST_SUBJECT, cb=on)
        await nc.flush()
        reporting = asyncio.create_task(host.report(nc, "busy-host", PERIOD))
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:  # the first look is done: beating
            await asyncio.sleep(0.05)
        await asyncio.sleep(2 * SLOW_LOOK)  # two more looks, each as long as ten periods
        reporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporting
        await nc.close()
        return seen

    seen = asyncio.run(beats())
    assert looks.acquire(timeout=0) and looks.acquire(timeout=0)  # it did look again while beating
    gaps = [later - earlier for earlier, later in zip(seen, seen[1:])]
    assert len(seen) >= 10 and max(gaps) < SLOW_LOOK, gaps
