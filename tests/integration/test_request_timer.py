"""The request timer: DeadlineExceededError inside a handler past its deadline, through router, NATS and runtime."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent('''
    import json, os, time
    from kiln.runtime import DeadlineExceededError

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/handled":
            try:
                spin(30)
            except DeadlineExceededError:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"took too long, sorry"]
        if path == "/unhandled":
            spin(30)
        if path == "/stubborn":
            while True:
                try:
                    spin(30)
                except DeadlineExceededError:
                    pass  # ignores the deadline: the instance must be replaced
        if path == "/except-exception":
            try:
                spin(30)
            except Exception:
                start_response("200 OK", [])
                return [b"caught by except Exception"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"instance": os.environ["INSTANCE_ID"]}).encode()]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("timer"), {"main.py": MAIN}, request_deadline=1.0) as srv:
        yield srv


def fetch(server, path):
    status, _, body = apps.fetch(server, path)
    return status, body


def instance(server):
    status, body = fetch(server, "/whoami")
    assert status == 200
    return json.loads(body)["instance"]


def test_handler_can_catch_deadline_exceeded_and_answer(server):
    assert fetch(server, "/handled") == (503, b"took too long, sorry")


def test_unhandled_deadline_gives_500_and_the_instance_keeps_serving(server):
    before = instance(server)
    status, body = fetch(server, "/unhandled")
    assert status == 500 and b"Traceback" not in body
    assert instance(server) == before


def test_deadline_exceeded_is_not_caught_by_except_exception(server):
    status, _ = fetch(server, "/except-exception")
    assert status == 500


def test_handler_that_ignores_the_deadline_gets_500_and_its_instance_is_replaced(server):
    before = instance(server)
    status, _ = fetch(server, "/stubborn")
    assert status == 500
    import time
    deadline = time.monotonic() + 30
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            after = instance(server)
        except AssertionError:
            continue
    assert after != before
