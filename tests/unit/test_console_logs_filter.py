"""The Request logs page's filter (console/logs.py): parsed from the address, precise about bad input."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from console.logs import LogFilter
from kiln.errors import BadRequestError
from kiln.pb.logs.v1 import logs_pb2


def _record(status: int, resource: str) -> logs_pb2.RequestLog:
    return logs_pb2.RequestLog(status=status, resource=resource)


def test_an_empty_filter_matches_every_request():
    assert LogFilter.parse(MultiDict()).matches(_record(500, "/x"))


@pytest.mark.parametrize(("status", "code", "matches"), [
    ("4xx", 404, True), ("4xx", 500, False), ("404", 404, True), ("404", 403, False), ("5XX", 503, True),
])
def test_a_status_filter_matches_a_class_or_one_status(status, code, matches):
    assert LogFilter.parse(MultiDict(status=status)).matches(_record(code, "/")) is matches


def test_a_path_filter_matches_text_in_the_path_and_query():
    flt = LogFilter.parse(MultiDict(path="api?x"))
    assert flt.matches(_record(200, "/v1/api?x=1"))
    assert not flt.matches(_record(200, "/v1/api"))


@pytest.mark.parametrize(("query", "message"), [
    ({"level": "loud"}, "level: expected one of debug"),
    ({"status": "teapot"}, "status: expected a status"),
    ({"status": "6xx"}, "status: expected a status"),
    ({"path": "x" * 501}, "path: at most 500"),
])
def test_a_bad_field_is_refused_naming_it(query, message):
    with pytest.raises(BadRequestError, match=message):
        LogFilter.parse(MultiDict(query))


@pytest.mark.parametrize(("query", "message"), [
    ({"version": "V1"}, "version: not a version id"),
    ({"version": "-v"}, "version: not a version id"),
    ({"request_id": "a b"}, "request_id: not a request id"),
    ({"request_id": "x" * 129}, "request_id: not a request id"),
    ({"since": "yesterday"}, "since: expected a time"),
    ({"until": "2026-13-01T00:00"}, "until: expected a time"),
    ({"since": "2026-12-07T10:00+01:00"}, "since: a time in UTC"),
    ({"since": "2026-12-07T10:00", "until": "2026-12-07T10:00"}, "until: must be after since"),
])
def test_a_bad_version_request_id_or_time_is_refused_naming_it(query, message):
    with pytest.raises(BadRequestError, match=message):
        LogFilter.parse(MultiDict(query))


def test_version_request_id_and_times_go_to_logs_svc_as_its_own_conditions():
    request = logs_pb2.QueryRequest()
    LogFilter.parse(MultiDict(version="v2", request_id="abc-1", since="2026-12-07T10:00",
                              until="2026-12-07T11:30:15", level="error")).apply(request)
    assert list(request.version_ids) == ["v2"]
    assert list(request.request_ids) == ["abc-1"]
    assert request.start_time.ToJsonString() == "2026-12-07T10:00:00Z"
    assert request.end_time.ToJsonString() == "2026-12-07T11:30:15Z"
    assert request.minimum_log_level == logs_pb2.LOG_LEVEL_ERROR


def test_an_empty_filter_asks_logs_svc_for_everything():
    request = logs_pb2.QueryRequest()
    LogFilter.parse(MultiDict()).apply(request)
    assert request == logs_pb2.QueryRequest()


def test_the_filter_carries_into_page_links_without_its_empty_fields():
    flt = LogFilter.parse(MultiDict(version="v2", path="/a"))
    assert flt.params(page="t") == {"path": "/a", "version": "v2", "page": "t"}
    assert flt.narrows() and not LogFilter.parse(MultiDict()).narrows()
