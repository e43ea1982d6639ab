"""The instance's request threads (runtime.app.RequestThreads): real threads, no sockets."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from runtime import sandbox
from runtime.app import RequestThreads

WAIT = 10.0  # a deadline for events that happen at once, not a timing assertion


class Recorder:
    """A request handler that records which thread ran which request and how many ran at once."""

    def __init__(self, block: threading.Event | None = None) -> None:
        self.lock = threading.Lock()
        self.done: dict[Any, str] = {}
        self.running = 0
        self.most = 0
        self.block = block
        self.all_done = threading.Event()
        self.expected = 0

    def __call__(self, state: Any) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        if self.block is not None:
            assert self.block.wait(WAIT)
        with self.lock:
            self.running -= 1
            assert state not in self.done, "a request ran twice"
            self.done[state] = threading.current_thread().name
            if len(self.done) == self.expected:
                self.all_done.set()


def run_all(threads: RequestThreads, recorder: Recorder, states: list[Any]) -> None:
    recorder.expected = len(states)
    for state in states:
        threads.submit(state)
    assert recorder.all_done.wait(WAIT)


def test_every_request_runs_once_on_a_request_thread():
    recorder = Recorder()
    threads = RequestThreads(4, recorder)
    states = [object() for _ in range(2000)]
    run_all(threads, recorder, states)
    threads.stop()
    assert set(recorder.done) == set(states)
    assert all(name.startswith(sandbox.APP_THREADS) for name in recorder.done.values())
    assert len(threads.threads) <= 4


def test_requests_submitted_while_others_run_are_each_answered_once():
    recorder = Recorder()
    threads = RequestThreads(3, recorder)
    states = [object() for _ in range(3000)]
    recorder.expected = len(states)
    for n, state in enumerate(states):
        threads.submit(state)
        if n % 7 == 0:
            threading.Event().wait(0)  # let the threads run between some submissions (no timing involved)
    assert recorder.all_done.wait(WAIT)
    threads.stop()
    assert set(recorder.done) == set(states)


def test_a_thread_waiting_in_app_code_does_not_hold_up_the_others():
    # limit requests that each wait until all limit of them run: possible only on limit threads at once.
    limit = 5
    barrier = threading.Barrier(limit, timeout=WAIT)
    done = threading.Event()
    finished: list[int] = []

    def work(state: int) -> None:
        barrier.wait()
        finished.append(state)
        if len(finished) == limit:
            done.set()

    threads = RequestThreads(limit, work)
    for n in range(limit):
        threads.submit(n)  # type: ignore[arg-type]
    assert done.wait(WAIT)
    threads.stop()
    assert sorted(finished) == list(range(limit))


def test_one_thread_serialises_requests_in_arrival_order():
    order: list[int] = []
    recorder = Recorder()

    def work(state: int) -> None:
        order.append(state)
        recorder(state)

    threads = RequestThreads(1, work)
    recorder.expected = 500
    for n in range(500):
        threads.submit(n)  # type: ignore[arg-type]
    assert recorder.all_done.wait(WAIT)
    threads.stop()
    assert order == list(range(500))
    assert recorder.most == 1
    assert len(threads.threads) == 1


def test_no_more_than_the_limit_run_at_once():
    release = threading.Event()
    recorder = Recorder(block=release)
    threads = RequestThreads(3, recorder)
    recorder.expected = 20
    for n in range(20):
        threads.submit(n)  # type: ignore[arg-type]
    release.set()
    assert recorder.all_done.wait(WAIT)
    threads.stop()
    assert recorder.most <= 3
    assert len(threads.threads) == 3


def test_stopped_threads_end_and_take_no_more_requests():
    recorder = Recorder()
    threads = RequestThreads(2, recorder)
    run_all(threads, recorder, [1, 2, 3])
    threads.stop()
    for thread in threads.threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError):
        threads.submit(4)  # type: ignore[arg-type]


def test_an_instance_needs_a_request_thread():
    with pytest.raises(ValueError):
        RequestThreads(0, lambda state: None)


def test_requests_queued_while_a_thread_wakes_get_threads_of_their_own():
    # One thread busy in app code, one idle: three requests arriving together that each wait for the other two
    # must all run at once (one on the idle thread, two on threads started for them).
    busy, barrier = threading.Event(), threading.Barrier(3, timeout=WAIT)
    running, done, all_three = threading.Event(), threading.Event(), threading.Event()
    finished: list[str] = []

    def work(state: str) -> None:
        if state == "busy":
            running.set()
            assert busy.wait(WAIT)
        elif state == "quick":
            done.set()
        else:
            barrier.wait()
            finished.append(state)
            if len(finished) == 3:
                all_three.set()

    threads = RequestThreads(5, work)
    threads.submit("busy")  # type: ignore[arg-type]
    assert running.wait(WAIT)
    threads.submit("quick")  # type: ignore[arg-type]
    assert done.wait(WAIT)
    for name in ("a", "b", "c"):
        threads.submit(name)  # type: ignore[arg-type]
    try:
        assert all_three.wait(WAIT)
        assert sorted(finished) == ["a", "b", "c"]
    finally:
        busy.set()
        threads.stop()
