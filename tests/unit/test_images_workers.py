"""images_svc.service's worker pool: Pillow work runs off the event loop, at most ``workers`` at once, and calls
beyond ``max_waiting`` are refused as busy instead of queueing their requests in memory. No sockets: the pool is
driven directly with work that blocks until the test releases it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from images_svc.service import ImagesService
from kiln import errors


async def until(predicate) -> None:
    """Yield to the loop until ``predicate`` holds (the worker thread gets there on its own)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never became true")


@pytest.fixture
async def service():
    svc = ImagesService(max_pixels=1000, workers=1, max_waiting=1)
    yield svc
    await svc.close()


async def test_work_runs_on_a_worker_thread_while_the_loop_keeps_running(service):
    release, started = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        release.wait(10)
        return threading.current_thread().name

    call = asyncio.ensure_future(service._run(work))
    await until(started.is_set)   # the loop turns while the worker is blocked
    release.set()
    assert (await call).startswith("images")


async def test_a_call_waits_for_the_busy_worker_then_runs(service):
    release, order = threading.Event(), []
    first = asyncio.ensure_future(service._run(lambda: (release.wait(10), order.append("first"))))
    await until(service._slots.locked)
    second = asyncio.ensure_future(service._run(lambda: order.append("second")))
    await until(lambda: service._waiting == 1)
    assert order == []
    release.set()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]


async def test_calls_beyond_the_waiting_limit_are_refused_as_busy(service):
    release = threading.Event()
    first = asyncio.ensure_future(service._run(lambda: release.wait(10)))
    await until(service._slots.locked)
    second = asyncio.ensure_future(service._run(lambda: "second"))
    await until(lambda: service._waiting == 1)
    with pytest.raises(errors.UnavailableError, match="busy"):
        await service._run(lambda: "third")
    release.set()
    assert await first is True and await second == "second"


async def test_an_error_in_the_work_frees_the_worker(service):
    def fail() -> None:
        raise ValueError("boom")
    with pytest.raises(ValueError):
        await service._run(fail)
    assert await service._run(lambda: "next") == "next"
