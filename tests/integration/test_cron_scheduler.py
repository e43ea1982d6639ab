"""cron_svc's scheduler loop against a real nats-server, on a clock the test moves: NATS trouble in one step
neither stops the replica's cron nor loses the firing."""

from __future__ import annotations

import asyncio
import datetime

import nats
import nats.errors
import pytest

from cron_svc.scheduler import Scheduler, Store
from kiln_platform import cronyaml

pytestmark = pytest.mark.nats

START = datetime.datetime(2030, 1, 1, 12, 0, 30, tzinfo=datetime.timezone.utc).timestamp()


class FailingFirstPut:
    """The open-firings bucket, whose first put times out (as NATS does when a server is busy)."""

    def __init__(self, bucket) -> None:
        self._bucket = bucket
        self.failed = 0

    async def put(self, key, value):
        if not self.failed:
            self.failed += 1
            raise nats.errors.TimeoutError
        return await self._bucket.put(key, value)

    def __getattr__(self, name):
        return getattr(self._bucket, name)


async def test_a_nats_timeout_while_claiming_neither_stops_the_loop_nor_loses_the_firing(supervisor, tmp_path):
    (tmp_path / "nats").mkdir()
    nc = await nats.connect(f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}")
    store = Store(nc.jetstream())
    await store.open_buckets()
    store.open = FailingFirstPut(store.open)
    jobs = cronyaml.parse("cron:\n- url: /tick\n  schedule: every 1 minutes synchronized\n")
    fired: list[datetime.datetime] = []

    async def fire(app_id, job, scheduled, attempt):
        fired.append(scheduled)
        return 200

    now = [START]
    scheduler = Scheduler(store, {"app": jobs}, fire, replica="only", clock=lambda: now[0])
    loop = asyncio.create_task(scheduler.run())
    try:
        while scheduler.next_run("app", jobs[0]) is None:  # planned at 12:00:30, before the clock moves
            await asyncio.sleep(0.01)
        for minute in (1, 2, 3):  # 12:01, 12:02, 12:03
            now[0] = START - 30 + 60 * minute + 1
            for _ in range(100):
                if len(fired) == minute:
                    break
                assert not loop.done(), loop
                await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()
        await asyncio.gather(loop, return_exceptions=True)
        await nc.close()
    assert store.open.failed == 1
    assert [t.strftime("%H:%M") for t in fired] == ["12:01", "12:02", "12:03"]


async def test_a_job_that_never_fires_in_its_zone_is_not_planned_and_the_others_run(supervisor, tmp_path):
    (tmp_path / "nats").mkdir()
    nc = await nats.connect(f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}")
    store = Store(nc.jetstream())
    await store.open_buckets()
    # New York's clocks jump from 02:00 to 03:00 on the 2nd Sunday of March: 02:30 that day never exists.
    jobs = cronyaml.parse("cron:\n- url: /never\n  schedule: 2nd sunday of march 02:30\n  timezone: America/New_York\n"
                          "- url: /tick\n  schedule: every 1 minutes synchronized\n")
    fired: list[str] = []

    async def fire(app_id, job, scheduled, attempt):
        fired.append(job.url)
        return 200

    now = [START]
    scheduler = Scheduler(store, {"app": jobs}, fire, replica="only", clock=lambda: now[0])
    loop = asyncio.create_task(scheduler.run())
    try:
        while scheduler.next_run("app", jobs[1]) is None:
            assert not loop.done(), loop
            await asyncio.sleep(0.01)
        now[0] = START - 30 + 60 + 1  # 12:01
        for _ in range(100):
            if fired:
                break
            await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()
        await asyncio.gather(loop, return_exceptions=True)
        await nc.close()
    assert scheduler.next_run("app", jobs[0]) is None
    assert fired == ["/tick"]


async def test_a_run_now_in_the_second_of_a_scheduled_firing_does_not_take_its_place(supervisor, tmp_path):
    (tmp_path / "nats").mkdir()
    nc = await nats.connect(f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}")
    store = Store(nc.jetstream())
    await store.open_buckets()
    jobs = cronyaml.parse("cron:\n- url: /tick\n  schedule: every 1 minutes synchronized\n")
    fired: list[datetime.datetime] = []

    async def fire(app_id, job, scheduled, attempt):
        fired.append(scheduled)
        return 200

    now = [START]
    scheduler = Scheduler(store, {"app": jobs}, fire, replica="only", clock=lambda: now[0])
    loop = asyncio.create_task(scheduler.run())
    try:
        while scheduler.next_run("app", jobs[0]) is None:  # planned at 12:00:30: next firing 12:01:00
            await asyncio.sleep(0.01)
        now[0] = START + 30  # 12:01:00, the scheduled firing's own second
        ran = await scheduler.run_now("app", jobs[0])
        for _ in range(200):
            if len(fired) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()
        await asyncio.gather(loop, return_exceptions=True)
        await nc.close()
    assert (ran.status, ran.attempt) == (200, 1)
    assert [t.strftime("%H:%M:%S") for t in fired] == ["12:01:00", "12:01:00"]  # the run now, and the scheduled one
