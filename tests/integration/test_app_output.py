"""What an app prints (``print()``, ``sys.stdout``, ``sys.stderr``) is logged line by line as it is written, as on
Google's Python 3 runtime: into the request's log (stdout at INFO, stderr at ERROR), bounded, and into the instance's
log at once. Through router, NATS, runtime and logs_svc under ``kiln dev``."""

from __future__ import annotations

import threading
import uuid
import textwrap

import grpc
import pytest

from kiln_platform import auth, requestscope
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

INFO, ERROR, WARNING = logs_pb2.LOG_LEVEL_INFO, logs_pb2.LOG_LEVEL_ERROR, logs_pb2.LOG_LEVEL_WARNING

MAIN = textwrap.dedent('''
    import logging, sys, threading, urllib.parse
    from kiln.api import background_thread

    RELEASE = threading.Event()
    HANDLER = logging.StreamHandler()  # writes to sys.stderr, as logging.basicConfig's does

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        arg = urllib.parse.unquote(environ.get("QUERY_STRING", ""))
        if path == "/mixed":
            print("first line")
            print("second", "line")
            sys.stderr.write("to stderr\\n")
            sys.stdout.write("third ")
            sys.stdout.write("line, written in parts\\nand a fourth\\n")
            print("on stderr too", file=sys.stderr)
        elif path == "/unfinished":
            print("ended by a newline")
            sys.stdout.write("no newline at the end")
            sys.stderr.write("nor here")
        elif path == "/threads":
            child = threading.Thread(target=lambda: sys.stdout.write("from a request's thread, unfinished"))
            child.start()
            child.join()
        elif path == "/hold":
            print(arg)
            RELEASE.wait(30)
            RELEASE.clear()
        elif path == "/release":
            RELEASE.set()
        elif path == "/background":
            background_thread.start_new_background_thread(print, [arg])
        elif path == "/logged":
            logging.getLogger().addHandler(HANDLER)
            try:
                logging.warning("a record, through a handler writing to stderr")
            finally:
                logging.getLogger().removeHandler(HANDLER)
        elif path == "/huge":
            for n in range(3000):
                print(f"line {n}")
        elif path == "/long":
            print("x" * 100_000)
            sys.stdout.write("y" * 1_000_000)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
''')

YAML = ("runtime: python27\napi_version: 1\nthreadsafe: true\nmanual_scaling:\n  instances: 1\n"
        "handlers:\n- url: /.*\n  script: main.app\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Python buffers a file's output in blocks unless told otherwise: run the instance as a user's would be.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYTHONUNBUFFERED", raising=False)
        with running(tmp_path_factory.mktemp("printing"), {"main.py": MAIN}, app_yaml=YAML) as srv:
            yield srv


def query(server) -> list[logs_pb2.RequestLog]:
    channel = grpc.insecure_channel(server.addresses["logs_svc"])
    try:
        token = auth.mint_app_token(server._secret, server.app_id)
        found = logs_pb2_grpc.LogsServiceStub(channel).Query(
            logs_pb2.QueryRequest(page_size=1000, include_app_logs=True),
            metadata=(("authorization", f"Bearer {token}"),))
        return list(found.logs)
    finally:
        channel.close()


def app_log_of(server, path: str) -> list[tuple[int, str]]:
    """The app log lines of one new request to ``path`` (level, message)."""
    before = {r.request_id for r in query(server)}
    status, _, _ = apps.fetch(server, path)
    assert status == 200
    new: list[logs_pb2.RequestLog] = []

    def logged() -> list[logs_pb2.RequestLog]:
        new[:] = [r for r in query(server) if r.request_id not in before and r.resource == path]
        return new

    apps.wait_for(logged, 20)
    return [(line.level, line.message) for line in new[0].app_logs]


def instance_log(server) -> str:
    return "".join(p.read_text(errors="replace") for p in server.instances_dir.glob("instance-*.log"))


def test_printed_lines_reach_the_request_log_in_order_with_stdout_at_info_and_stderr_at_error(server):
    assert app_log_of(server, "/mixed") == [
        (INFO, "first line"), (INFO, "second line"), (ERROR, "to stderr"), (INFO, "third line, written in parts"),
        (INFO, "and a fourth"), (ERROR, "on stderr too")]


def test_a_line_left_unfinished_at_the_end_of_the_request_is_still_logged(server):
    assert app_log_of(server, "/unfinished") == [
        (INFO, "ended by a newline"), (INFO, "no newline at the end"), (ERROR, "nor here")]


def test_a_line_left_unfinished_by_a_requests_thread_is_logged_with_the_request(server):
    assert app_log_of(server, "/threads") == [(INFO, "from a request's thread, unfinished")]


def test_a_logging_record_written_to_stderr_by_a_handler_is_logged_once_at_its_own_level(server):
    assert app_log_of(server, "/logged") == [(WARNING, "a record, through a handler writing to stderr")]


def test_printed_lines_reach_the_instance_log_while_the_request_still_runs(server):
    marker = f"printed-{uuid.uuid4().hex}"
    holding = threading.Thread(target=apps.fetch, args=(server, f"/hold?{marker}"))
    holding.start()
    try:
        apps.wait_for(lambda: marker + "\n" in instance_log(server), 20)
        assert holding.is_alive()
    finally:
        apps.fetch(server, "/release")
        holding.join()


def test_output_outside_any_request_reaches_the_instance_log_at_once(server):
    marker = f"background-{uuid.uuid4().hex}"
    assert apps.fetch(server, f"/background?{marker}")[0] == 200
    apps.wait_for(lambda: marker + "\n" in instance_log(server), 20)


def test_a_request_logs_at_most_the_bounded_number_of_printed_lines(server):
    lines = app_log_of(server, "/huge")
    assert lines == [(INFO, f"line {n}") for n in range(requestscope.MAX_LOG_LINES)]


def test_a_printed_line_longer_than_the_bound_is_cut(server):
    assert app_log_of(server, "/long") == [(INFO, "x" * requestscope.MAX_LOG_LINE_CHARS),
                                           (INFO, "y" * requestscope.MAX_LOG_LINE_CHARS)]
