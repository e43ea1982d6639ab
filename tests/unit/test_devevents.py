"""kiln dev's reader of service events (deploy.devevents): one logger's messages from a text log, read as the log
grows, partial lines kept for the next read."""

from __future__ import annotations

from deploy.devevents import LogEvents

EVENT = "2026-12-06 12:00:00,000 WARNING taskqueue_svc taskqueue_svc.events [- -] taskqueue a/q: task t dropped\n"
OTHER = "2026-12-06 12:00:00,001 INFO taskqueue_svc taskqueue_svc.app [- -] taskqueue a/q: task t: 500 in 3 ms\n"


def test_only_the_loggers_messages_are_returned_without_their_prefix(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text(OTHER + EVENT + OTHER)
    assert LogEvents(log, "taskqueue_svc.events").new() == ["taskqueue a/q: task t dropped"]


def test_each_message_is_returned_once_as_the_log_grows(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text(EVENT)
    events = LogEvents(log, "taskqueue_svc.events")
    assert len(events.new()) == 1
    assert events.new() == []
    with open(log, "a") as out:
        out.write(OTHER + EVENT.replace("task t", "task u"))
    assert events.new() == ["taskqueue a/q: task u dropped"]


def test_a_line_still_being_written_waits_for_its_end(tmp_path):
    log = tmp_path / "svc.log"
    log.write_text(EVENT[:40])
    events = LogEvents(log, "taskqueue_svc.events")
    assert events.new() == []
    with open(log, "a") as out:
        out.write(EVENT[40:])
    assert events.new() == ["taskqueue a/q: task t dropped"]


def test_a_log_not_written_yet_has_no_events(tmp_path):
    assert LogEvents(tmp_path / "missing.log", "taskqueue_svc.events").new() == []
