"""The request deadline's wake-ups (kiln_platform.requestscope): what the request timer does besides raising
DeadlineExceededError, and the waits it ends, on plain threads (the timer's exception itself is tested through real
instances in tests/integration/test_deadline_waits.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping

import pytest

from kiln import runtime as kiln_runtime
from kiln_platform import requestscope


@pytest.fixture
def hooks() -> Iterator[list[Callable[[Mapping[str, str]], None]]]:
    added: list[Callable[[Mapping[str, str]], None]] = []
    yield added
    for hook in added:
        requestscope._deadline_hooks.remove(hook)


def far_deadline() -> kiln_runtime._Deadline:
    at = time.monotonic() + 3600
    return kiln_runtime._Deadline(at, at + 1)


def test_passing_the_deadline_tells_every_hook_the_requests_environment_even_after_one_fails(hooks):
    told: list[str] = []

    def failing(environ: Mapping[str, str]) -> None:
        raise RuntimeError("a broken hook")

    for hook in (failing, lambda environ: told.append(environ["REQUEST_LOG_ID"])):
        requestscope.on_deadline(hook)
        hooks.append(hook)
    deadline = far_deadline()
    requestscope.deadline_passed(deadline, {"REQUEST_LOG_ID": "r1"})
    assert told == ["r1"] and deadline.passed.is_set()


def run_in_request(deadline: kiln_runtime._Deadline, wait: Callable[[], object]) -> tuple[threading.Thread,
                                                                                        threading.Event]:
    """Start ``wait`` on a thread serving a request with ``deadline``; the event is set when it returned."""
    done = threading.Event()

    def serve() -> None:
        with requestscope.serving({"REQUEST_LOG_ID": "r1"}, [], deadline):
            wait()
        done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, done


@pytest.mark.parametrize("wait", ["sleep", "sleep forever"])
def test_a_requests_sleep_ends_when_the_timer_passes_its_deadline(wait):
    deadline = far_deadline()
    seconds = threading.TIMEOUT_MAX * 2 if wait == "sleep forever" else 3600
    thread, done = run_in_request(deadline, lambda: requestscope._sleep(seconds))
    assert not done.wait(0.2)
    requestscope.deadline_passed(deadline, {})
    assert done.wait(10)
    thread.join(10)


@pytest.mark.parametrize("wait", ["condition", "join"])
def test_a_requests_threading_waits_cut_at_its_deadline_still_end_by_what_they_wait_for(wait):
    at = time.monotonic() + 0.3
    deadline = kiln_runtime._Deadline(at, at + 1)
    condition, stop = threading.Condition(), threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()

    def waiting() -> None:
        if wait == "condition":
            with condition:
                requestscope._condition_wait(condition, 3600)
        else:
            requestscope._thread_join(other, 3600)

    thread, done = run_in_request(deadline, waiting)
    try:
        # Past the deadline the wait returns to Python code in short slices (where the timer's exception lands);
        # here, with no exception, it keeps waiting: what it waits for still ends it.
        assert not done.wait(0.6)
        if wait == "condition":
            # A notification reaches only a thread already waiting (on a loaded machine the request thread may
            # not be yet): notify until it has returned, with a deadline.
            give_up = time.monotonic() + 10
            while not done.is_set() and time.monotonic() < give_up:
                with condition:
                    condition.notify_all()
                done.wait(0.05)
        else:
            stop.set()
        assert done.wait(10)
    finally:
        stop.set()
        thread.join(10)


def test_sleep_outside_a_request_and_with_bad_arguments_behaves_as_time_sleep():
    requestscope._sleep(0)
    with pytest.raises(ValueError):
        requestscope._sleep(-1)
    with pytest.raises(TypeError):
        requestscope._sleep("1")  # type: ignore[arg-type]


def test_a_deadline_has_one_passed_event_however_many_threads_ask_for_it_at_once():
    deadline = far_deadline()
    start = threading.Barrier(8)
    seen: list[threading.Event] = []

    def ask() -> None:
        start.wait()
        seen.append(deadline.passed)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and all(event is seen[0] for event in seen)
    requestscope.deadline_passed(deadline, {"REQUEST_LOG_ID": "r1"})
    assert seen[0].is_set()
