"""runtime.cloudlogging: Cloud Logging's entries.write, answered in the app's process, its entries parsed into log
lines at their mapped levels, bad requests refused whole with Cloud Logging's error shape. Through the runtime's
HTTP clients and logs_svc: tests/integration/test_cloud_logging.py."""

from __future__ import annotations

import json
import logging

import pytest

from kiln_platform import requestscope
from runtime import cloudlogging

WRITE = "https://logging.googleapis.com/v2/entries:write"
NAME = "projects/log-app/logs/my-log"


@pytest.fixture(autouse=True)
def app(monkeypatch):
    monkeypatch.setenv("GAE_APPLICATION", "s~log-app")


def body(*entries: dict, **fields: object) -> bytes:
    return json.dumps({"entries": list(entries), **fields}).encode()


def lines(*entries: dict, **fields: object) -> list[tuple[int, str]]:
    found, _ = cloudlogging.parse_write(body(*entries, **fields), "log-app")
    return [(level, message) for _, level, message in found]


def refused(raw: bytes) -> tuple[int, str]:
    with pytest.raises(cloudlogging.BadRequest) as caught:
        cloudlogging.parse_write(raw, "log-app")
    return caught.value.status, str(caught.value)


@pytest.mark.parametrize(("severity", "level"), [
    (None, logging.INFO), ("DEFAULT", logging.INFO), ("DEBUG", logging.DEBUG), ("INFO", logging.INFO),
    ("NOTICE", logging.INFO), ("WARNING", logging.WARNING), ("ERROR", logging.ERROR),
    ("CRITICAL", logging.CRITICAL), ("ALERT", logging.CRITICAL), ("EMERGENCY", logging.CRITICAL),
    ("warning", logging.WARNING), (0, logging.INFO), (100, logging.DEBUG), (400, logging.WARNING),
    (800, logging.CRITICAL)])
def test_each_severity_maps_to_its_python_level(severity, level):
    assert cloudlogging.level_of(severity) == level


@pytest.mark.parametrize("severity", ["LOUD", 150, True, 1.5, ["ERROR"]])
def test_an_unknown_severity_is_refused_naming_the_known_ones(severity):
    with pytest.raises(cloudlogging.BadRequest, match="one of DEFAULT, DEBUG, INFO, NOTICE"):
        cloudlogging.level_of(severity)


def test_a_text_entry_is_its_text_as_sent_prefixed_with_the_log_id():
    assert lines({"logName": NAME, "textPayload": "Photo key: abc  %s\twith spaces "}) == [
        (logging.INFO, "my-log: Photo key: abc  %s\twith spaces ")]


def test_a_json_entry_is_its_payload_as_compact_json_in_the_order_sent():
    assert lines({"logName": NAME, "severity": "ERROR", "jsonPayload": {"z": 1, "a": ["é", None]}}) == [
        (logging.ERROR, 'my-log: {"z":1,"a":["é",null]}')]


def test_a_proto_entry_is_its_payload_as_compact_json():
    assert lines({"logName": NAME, "protoPayload": {"@type": "type.googleapis.com/x.Y", "f": 2}}) == [
        (logging.INFO, 'my-log: {"@type":"type.googleapis.com/x.Y","f":2}')]


def test_an_entry_without_a_payload_is_its_log_id():
    assert lines({"logName": NAME, "severity": "WARNING"}) == [(logging.WARNING, "my-log:")]


def test_entries_take_the_requests_log_name_unless_they_name_their_own():
    assert lines({"textPayload": "a"}, {"logName": "projects/log-app/logs/other", "textPayload": "b"},
                 logName=NAME) == [(logging.INFO, "my-log: a"), (logging.INFO, "other: b")]


def test_the_log_id_is_url_decoded():
    assert lines({"logName": "projects/log-app/logs/app%2Fsub.log", "textPayload": "x"}) == [
        (logging.INFO, "app/sub.log: x")]


def test_fields_given_by_their_proto_names_are_accepted_as_google_cloud_logging_sends_them():
    found, dry_run = cloudlogging.parse_write(json.dumps({
        "entries": [{"log_name": NAME, "text_payload": "t", "insert_id": "i"}], "partial_success": True,
        "dry_run": True}).encode(), "log-app")
    assert ([(level, message) for _, level, message in found], dry_run) == ([(logging.INFO, "my-log: t")], True)


def test_an_entrys_timestamp_is_its_lines_time():
    found, _ = cloudlogging.parse_write(body({"logName": NAME, "timestamp": "2026-01-02T03:04:05.123456789Z"}),
                                        "log-app")
    assert found[0][0] == pytest.approx(1767323045.123456)


def test_an_entry_without_a_timestamp_is_logged_when_written():
    found, _ = cloudlogging.parse_write(body({"logName": NAME}), "log-app")
    assert found[0][0] is None


@pytest.mark.parametrize(("raw", "message"), [
    (b"{not json", "Invalid JSON payload received."),
    (b"[]", "must be a JSON object"),
    (json.dumps({"entries": []}).encode(), "at least one log entry is required"),
    (json.dumps({"entries": "x"}).encode(), "at least one log entry is required"),
    (body({"logName": NAME}, extra=1), 'Unknown name "extra"'),
    (body({"logName": NAME, "colour": "red"}), 'Unknown name "colour" at \'entries[0]\''),
    (body({"logName": NAME, "textPayload": "a", "jsonPayload": {}}), "at most one payload"),
    (body({"logName": NAME, "textPayload": 5}), "entries[0].textPayload"),
    (body({"logName": NAME, "jsonPayload": "text"}), "entries[0].jsonPayload"),
    (body({"logName": NAME, "severity": "LOUD"}), "entries[0].severity"),
    (body({"logName": NAME, "timestamp": "yesterday"}), "entries[0].timestamp"),
    (body({"logName": NAME, "labels": {"a": 1}}), "entries[0].labels"),
    (body({"logName": NAME, "resource": "global"}), "entries[0].resource"),
    (body({"textPayload": "no name"}), "a log name is required"),
    (body({"logName": "logs/my-log"}), "is not projects/[PROJECT_ID]/logs/[LOG_ID]"),
    (body({"logName": "projects/log-app/logs/bad%20name"}), "the log id 'bad name'"),
    (body({"logName": "projects/log-app/logs/" + "x" * 513}), "1 to 512"),
    (body({"logName": NAME, "log_name": NAME}), "is given twice"),
    (body(5), "a LogEntry must be a JSON object"),
    (body({"logName": NAME}, dryRun="yes"), "'dryRun': expected a boolean"),
])
def test_a_bad_request_is_refused_with_400_naming_what_is_wrong(raw, message):
    status, text = refused(raw)
    assert status == 400 and message in text


def test_a_log_of_another_project_is_refused_with_403():
    status, text = refused(body({"logName": "projects/someone-else/logs/x", "textPayload": "x"}))
    assert status == 403 and "another project's log" in text


def test_an_entry_over_256_kb_is_refused():
    status, text = refused(body({"logName": NAME, "textPayload": "x" * (256 * 1024)}))
    assert status == 400 and "exceeds maximum size of 262144" in text


def test_a_request_over_10_mb_is_refused():
    status, text = refused(body({"logName": NAME, "textPayload": "x" * 200_000}) + b" " * (10 * 1024 * 1024))
    assert status == 400 and "exceeds the limit of 10485760 bytes" in text


def test_a_request_with_one_bad_entry_writes_none_of_its_entries():
    logs: list[requestscope.LogLine] = []
    with requestscope.serving({}, logs):
        status, _, _ = cloudlogging.answer("POST", WRITE, {}, body(
            {"logName": NAME, "textPayload": "good"}, {"logName": NAME, "severity": "LOUD"}, partialSuccess=True))
    assert (status, logs) == (400, [])


def test_a_written_entry_becomes_a_line_of_the_current_requests_log():
    logs: list[requestscope.LogLine] = []
    with requestscope.serving({}, logs):
        status, _, answer = cloudlogging.answer("POST", WRITE + "?prettyPrint=false", {}, body(
            {"logName": NAME, "severity": "WARNING", "textPayload": "hello"}))
    assert (status, json.loads(answer)) == (200, {})
    assert [(level, message) for _, level, message in logs] == [(logging.WARNING, "my-log: hello")]


def test_a_dry_run_writes_nothing():
    logs: list[requestscope.LogLine] = []
    with requestscope.serving({}, logs):
        status, _, _ = cloudlogging.answer("POST", WRITE, {}, body({"logName": NAME, "textPayload": "x"},
                                                                   dryRun=True))
    assert (status, logs) == (200, [])


def test_an_entry_written_outside_a_request_goes_to_the_instances_log(caplog):
    with caplog.at_level(logging.DEBUG, logger=cloudlogging.__name__):
        status, _, _ = cloudlogging.answer("POST", WRITE, {}, body({"logName": NAME, "textPayload": "no request"}))
    assert status == 200
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.INFO, "my-log: no request")]


def test_a_bad_request_gets_cloud_loggings_error_shape():
    status, _, answer = cloudlogging.answer("POST", WRITE, {}, b"{")
    error = json.loads(answer)["error"]
    assert (status, error["code"], error["status"]) == (400, 400, "INVALID_ARGUMENT")
    assert error["message"].startswith("Invalid JSON payload received.")


@pytest.mark.parametrize("path", ["/v2/entries:list", "/v2/projects/log-app/logs", "/v2/projects/log-app/sinks"])
def test_other_logging_api_methods_are_not_implemented_naming_what_kiln_answers(path):
    status, _, answer = cloudlogging.answer("POST", "https://logging.googleapis.com" + path, {}, b"{}")
    error = json.loads(answer)["error"]
    assert (status, error["status"]) == (501, "UNIMPLEMENTED")
    assert "kiln answers only POST https://logging.googleapis.com/v2/entries:write" in error["message"]


def test_a_path_outside_the_api_is_not_found():
    status, _, answer = cloudlogging.answer("GET", "https://logging.googleapis.com/index.html", {}, b"")
    assert (status, json.loads(answer)["error"]["status"]) == (404, "NOT_FOUND")


def test_entries_write_takes_post_only():
    status, _, answer = cloudlogging.answer("GET", WRITE, {}, b"")
    assert status == 404 and "takes POST" in json.loads(answer)["error"]["message"]


@pytest.mark.parametrize("url", ["https://example.com/v2/entries:write", "http://logging.googleapis.com/v2/entries:write",
                                 "https://logging.googleapis.com.example.com/v2/entries:write"])
def test_requests_for_other_hosts_are_not_cloud_loggings(url):
    assert cloudlogging.answer("POST", url, {}, b"{}") is None
