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
