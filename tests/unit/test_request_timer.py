"""The request timer's bookkeeping (runtime.timer): which deadlines are due, and when its one watcher looks again."""

from __future__ import annotations

import time

import pytest

from runtime.timer import RequestTimer


def test_a_deadline_is_due_once_its_time_has_come_and_only_once():
    timer: RequestTimer[str] = RequestTimer(60)
    at = timer.start(1, 60, "request")
    assert timer.due(at - 0.001) == ([], at)  # not yet: the watcher looks again exactly at the deadline
    assert timer.due(at)[0] == ["request"]
    assert timer.due(at + 1)[0] == []
    assert not timer.stop(1, 60)  # it had passed: the request thread learns the timer took it


def test_a_request_that_ended_is_never_due():
    timer: RequestTimer[str] = RequestTimer(60)
    at = timer.start(1, 60, "request")
    assert timer.stop(1, 60)
    assert timer.due(at + 3600)[0] == []
    assert len(timer) == 0


def test_with_nothing_filed_the_watcher_looks_again_after_the_shortest_deadline():
    timer: RequestTimer[str] = RequestTimer(60)
    assert timer.due(1000.0) == ([], 1060.0)


def test_the_earliest_deadline_of_each_length_decides_when_to_look_again():
    timer: RequestTimer[str] = RequestTimer(60)
    first = timer.start(1, 60, "a")
    timer.start(2, 60, "b")
    task = timer.start(3, 600, "task")
    assert timer.due(first - 1)[1] == first
    timer.stop(1, 60)
    passed, wake = timer.due(first)
    assert passed == [] and first < wake < task  # b's deadline, not the ended request's


def test_deadlines_fall_due_in_the_order_they_were_filed_whatever_their_keys():
    timer: RequestTimer[int] = RequestTimer(1)
    ats = [timer.start(key, 1, key) for key in (9, 3, 7, 1)]
    assert timer.due(ats[-1])[0] == [9, 3, 7, 1]


def test_a_deadline_filed_after_the_watcher_looked_never_falls_before_its_next_look():
    timer: RequestTimer[str] = RequestTimer(60)
    timer.start(1, 600, "task")
    _, wake = timer.due(time.monotonic())
    at = timer.start(2, 60, "request")
    assert at >= wake  # so the watcher never needs waking when a request starts


def test_a_deadline_shorter_than_the_shortest_is_refused():
    timer: RequestTimer[str] = RequestTimer(60)
    with pytest.raises(ValueError, match="shorter than the timer's 60"):
        timer.start(1, 59, "request")
    with pytest.raises(ValueError, match="must be positive"):
        RequestTimer(0)
