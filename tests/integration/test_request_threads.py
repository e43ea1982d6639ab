"""Threads an app starts during a request belong to it (App Engine's rule), through router, NATS and runtime."""

from __future__ import annotations

import textwrap
import time

import pytest

from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent('''
    import os, threading, time
    DONE = []

    def work(tag):
        time.sleep(0.6)
        DONE.append((tag, os.environ.get("PATH_INFO")))

    def app(environ, start_response):
        if environ["PATH_INFO"].startswith("/start/"):
            threading.Thread(target=work, args=(environ["PATH_INFO"],)).start()
            start_response("200 OK", [])
            return [b"started"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(DONE).encode()]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("threads"), {"main.py": MAIN}) as srv:
        yield srv


def fetch(server, path):
    return apps.fetch(server, path)[2]


def test_request_finishes_only_after_the_threads_it_started(server):
    started = time.monotonic()
    assert fetch(server, "/start/one") == b"started"
    assert time.monotonic() - started >= 0.6
    assert "('/start/one', '/start/one')" in fetch(server, "/done").decode()


def test_threads_see_the_environment_of_the_request_that_started_them(server):
    fetch(server, "/start/two")
    assert "('/start/two', '/start/two')" in fetch(server, "/done").decode()
