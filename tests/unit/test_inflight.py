"""What an instance tells its manager about its requests (runtime.inflight), over a real pipe; no sockets."""

from __future__ import annotations

import os

import pytest

from kiln.pb.logs.v1 import logs_pb2
from kiln.pb.runtime.v1 import http_pb2
from runtime import inflight
from runtime.manager import exit_reason

REPLY = "_INBOX.TPBsRd3Q4oXh7fL0mYc2Ab.Kq3z81mPw0"


@pytest.fixture
def pipe():
    tracker = inflight.Tracker()
    reporter = inflight.Reporter(os.dup(tracker.write_fd))
    tracker.spawned()
    yield tracker, reporter
    tracker.close()
    os.close(reporter._fd)


def test_a_request_is_held_from_its_start_until_its_answer(pipe):
    tracker, reporter = pipe
    reporter.started(REPLY)
    reporter.started(REPLY + "2")
    tracker.feed()
    assert tracker.held() == [REPLY, REPLY + "2"]
    reporter.finished(REPLY)
    tracker.feed()
    assert tracker.held() == [REPLY + "2"]


def test_close_reads_what_the_instance_wrote_last(pipe):
    tracker, reporter = pipe
    reporter.started(REPLY)
    reporter.started("_INBOX.abc")
    reporter.finished("_INBOX.abc")
    assert tracker.close() == [REPLY]


def test_a_line_split_across_reads_is_joined(pipe):
    tracker, reporter = pipe
    os.write(reporter._fd, b"+" + REPLY[:10].encode())
    tracker.feed()
    os.write(reporter._fd, REPLY[10:].encode() + b"\n")
    tracker.feed()
    assert tracker.held() == [REPLY]


@pytest.mark.parametrize("line", [
    b"+kiln.http.other.v1", b"+_INBOX_otherapp.abc.def", b"+$JS.API.STREAM.PURGE.KILN_LOGS", b"+_INBOX.>",
    b"+_INBOX.*.x", b"+_INBOX.a.b.c", b"+_INBOX.", b"+_INBOX", b"+_INBOX.abc def", b"+_INBOX.ab\x00c", b"+",
    b"", b"*" + REPLY.encode(), b"+" + b"_INBOX." + b"a" * 65, "+_INBOX.ａｂｃ".encode(),
])
def test_lines_that_are_not_a_routers_reply_inbox_are_refused(pipe, line):
    """App code shares the instance's process and could write into the pipe: only the router's inboxes count."""
    tracker, reporter = pipe
    os.write(reporter._fd, line + b"\n")
    tracker.feed()
    assert tracker.held() == []
    assert tracker.refused == 1


def test_an_endless_line_is_dropped_and_what_follows_still_counts(pipe):
    tracker, reporter = pipe
    os.write(reporter._fd, b"+_INBOX." + b"x" * 4000)
    tracker.feed()
    os.write(reporter._fd, b"\n+" + REPLY.encode() + b"\n")
    tracker.feed()
    assert tracker.held() == [REPLY]
    assert tracker.refused >= 1


def test_an_instance_holds_at_most_max_held_requests(pipe):
    tracker, reporter = pipe
    for i in range(inflight.MAX_HELD + 50):
        reporter.started(f"_INBOX.a.{i}")
        if i % 1000 == 0:
            tracker.feed()
    tracker.feed()
    assert len(tracker.held()) == inflight.MAX_HELD


def test_a_full_pipe_never_blocks_the_instance(pipe):
    tracker, reporter = pipe
    for i in range(100_000):  # more than the pipe holds, and nobody reads
        reporter.started(f"_INBOX.a.{i}")
    assert reporter._dropped


def test_an_instance_without_a_pipe_reports_nothing():
    inflight.Reporter(-1).started(REPLY)  # no error, nothing to write to


def test_the_response_is_a_500_with_app_engines_message_in_the_request_log():
    resp = http_pb2.HttpResponse.FromString(inflight.exited_response(
        "abc", out_of_memory=False, reason="was killed by SIGKILL").SerializeToString())
    assert resp.status == 500 and b"Internal Server Error" in resp.body and resp.instance_id == "abc"
    assert "was killed by SIGKILL" in resp.runtime_error
    assert [(line.level, line.message) for line in resp.app_logs] == [(logs_pb2.LOG_LEVEL_ERROR,
                                                                       inflight.EXITED_MESSAGE)]
    assert "causing it to exit" in inflight.EXITED_MESSAGE


def test_the_response_for_memory_says_the_process_used_too_much_memory():
    resp = inflight.exited_response("abc", out_of_memory=True, reason="was killed by the kernel")
    assert resp.status == 500
    assert resp.app_logs[0].level == logs_pb2.LOG_LEVEL_CRITICAL
    assert "too much memory" in resp.app_logs[0].message


@pytest.mark.parametrize(("status", "namespaced", "said"), [
    (137, True, "was killed by SIGKILL"), (139, True, "was killed by SIGSEGV"), (-9, False, "was killed by SIGKILL"),
    (0, True, "exited with status 0"), (75, True, "exited with status 75"), (137, False, "exited with status 137"),
    (None, True, "ended"),
])
def test_exit_reason_names_the_signal_or_the_status(status, namespaced, said):
    assert exit_reason(status, namespaced=namespaced) == said


def test_requests_reported_together_are_held_and_released_together(pipe):
    tracker, reporter = pipe
    replies = [f"_INBOX.a.{i}" for i in range(5)]
    reporter.started_all(replies)
    tracker.feed()
    assert tracker.held() == replies
    reporter.finished_all(replies[:3])
    tracker.feed()
    assert tracker.held() == replies[3:]


def test_a_batch_larger_than_one_atomic_pipe_write_arrives_whole(pipe):
    tracker, reporter = pipe
    replies = [f"_INBOX.TPBsRd3Q4oXh7fL0mYc2Ab.{i:040d}" for i in range(500)]  # ~35 KB of lines
    reporter.started_all(replies)
    tracker.feed()
    assert tracker.held() == replies
    assert tracker.refused == 0
