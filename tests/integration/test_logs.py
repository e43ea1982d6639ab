"""App logs and request logs, kept by logs_svc and queried as App Engine's log reader did;
through router, NATS (JetStream) and runtime."""

from __future__ import annotations

import textwrap
import time

import grpc
import pytest

from tests.integration import apps
from tests.integration.apps import running
from kiln_platform import auth
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent('''
    import logging, sys

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/noisy":
            logging.debug("a debug line")
            logging.info("an info line")
            logging.warning("a warning line")
            print("written to stderr", file=sys.stderr)
        if path == "/fails":
            logging.error("about to fail")
            raise RuntimeError("boom in the app")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("logsapp"), {"main.py": MAIN}) as srv:
        yield srv


def fetch(server, path):
    status, headers, _ = apps.fetch(server, path)
    return status, headers


def query(server, app=None, **fields):
    channel = grpc.insecure_channel(server.addresses["logs_svc"])
    try:
        token = auth.mint_app_token(server._secret, app or server.app_id)
        stub = logs_pb2_grpc.LogsServiceStub(channel)
        return stub.Query(logs_pb2.QueryRequest(**fields), metadata=(("authorization", f"Bearer {token}"),))
    finally:
        channel.close()


def request_id_of(server, path):
    before = {r.request_id for r in query(server, page_size=1000).logs}
    status, _ = fetch(server, path)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new = [r for r in query(server, page_size=1000, include_app_logs=True).logs
               if r.request_id not in before and r.resource == path]
        if new:
            return new[0], status
        time.sleep(0.1)
    raise AssertionError(f"no log record for {path}")


def test_request_log_records_the_request_and_the_app_log_lines(server):
    record, status = request_id_of(server, "/noisy")
    assert status == 200 and record.status == 200 and record.method == "GET"
    assert record.version_id == "v1" and record.instance_id
    messages = [(line.level, line.message) for line in record.app_logs]
    assert (logs_pb2.LOG_LEVEL_DEBUG, "a debug line") in messages
    assert (logs_pb2.LOG_LEVEL_INFO, "an info line") in messages
    assert (logs_pb2.LOG_LEVEL_WARNING, "a warning line") in messages
    assert (logs_pb2.LOG_LEVEL_ERROR, "written to stderr") in messages


def test_uncaught_exception_is_logged_with_its_traceback(server):
    record, status = request_id_of(server, "/fails")
    assert status == 500 and record.status == 500
    text = "\n".join(line.message for line in record.app_logs)
    assert "about to fail" in text and "RuntimeError: boom in the app" in text and "Traceback" in text


def test_minimum_level_keeps_only_requests_with_such_lines(server):
    noisy, _ = request_id_of(server, "/noisy")
    quiet, _ = request_id_of(server, "/quiet")
    found = {r.request_id for r in query(server, page_size=1000,
                                         minimum_log_level=logs_pb2.LOG_LEVEL_WARNING).logs}
    assert noisy.request_id in found and quiet.request_id not in found


def test_pages_come_newest_first_and_resume_with_the_token(server):
    for _ in range(3):
        fetch(server, "/quiet")
    first = query(server, page_size=2)
    second = query(server, page_size=2, page_token=first.next_page_token)
    times = [r.start_time.ToMicroseconds() for r in list(first.logs) + list(second.logs)]
    assert times == sorted(times, reverse=True)
    assert not {r.request_id for r in first.logs} & {r.request_id for r in second.logs}


def test_an_app_cannot_read_another_apps_logs(server):
    with pytest.raises(grpc.RpcError) as err:
        query(server, app="intruder", app_id=server.app_id)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert query(server, app="intruder").logs == []
