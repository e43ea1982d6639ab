"""The request timer's DeadlineExceededError reaches a handler blocked in a wait, not only one running Python code:
sleeps, threading waits and kiln.api calls, through router, NATS and runtime under ``kiln dev``.

Each handler blocks far longer than the request deadline and answers 503 naming the wait when it catches the
error; a handler the error does not reach within the grace gets the runtime's 500 instead (and its instance is
replaced), so a 503 proves the wait was interrupted in time.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.integration import apps, webservers
from tests.integration.apps import running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent('''
    import os, queue, threading, time, urllib.request
    from time import sleep as sleep_imported_by_name
    from kiln.api import _rpc, urlfetch
    from kiln.pb.urlfetch.v1 import urlfetch_pb2, urlfetch_pb2_grpc
    from kiln.runtime import DeadlineExceededError

    SLOW = os.environ["SLOW_URL"]  # answers after 30 s

    def fetch_request():
        return urlfetch_pb2.FetchRequest(method=urlfetch_pb2.METHOD_GET, url=SLOW, deadline_seconds=30)

    def stub():
        return _rpc.stub("URLFETCH", urlfetch_pb2_grpc.UrlFetchServiceStub)

    def condition():
        cond = threading.Condition()
        with cond:
            cond.wait(60)

    def joined():
        stop = threading.Event()
        child = threading.Thread(target=stop.wait, args=(30,))
        child.start()
        try:
            child.join()
        finally:
            stop.set()  # let the request's thread end once the handler has answered

    WAITS = {
        "sleep": lambda: time.sleep(60),
        "sleep-imported-by-name": lambda: sleep_imported_by_name(60),
        "event": lambda: threading.Event().wait(60),
        "event-forever": lambda: threading.Event().wait(),
        "condition": condition,
        "semaphore": lambda: threading.Semaphore(0).acquire(timeout=60),
        "queue": lambda: queue.Queue().get(),
        "join": joined,
        "urlfetch": lambda: urlfetch.fetch(SLOW, deadline=30),
        "urlfetch-rpc": lambda: urlfetch.make_fetch_call(urlfetch.create_rpc(deadline=30), SLOW).get_result(),
        "urllib": lambda: urllib.request.urlopen(SLOW, timeout=30).read(),
        "blocking-call": lambda: _rpc.call(stub().Fetch, fetch_request(), timeout=40),
        "waited-call": lambda: _rpc.UserRPC(40).make_call(stub().Fetch, fetch_request(), now=True).get_result(),
    }

    def app(environ, start_response):
        name = environ["PATH_INFO"].strip("/")
        try:
            WAITS[name]()
        except DeadlineExceededError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"interrupted in {name}".encode()]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{name} returned".encode()]
''')

WAITS = ["sleep", "sleep-imported-by-name", "event", "event-forever", "condition", "semaphore", "queue", "join"]
API_CALLS = ["urlfetch", "urlfetch-rpc", "urllib", "blocking-call", "waited-call"]


@pytest.fixture(scope="module")
def slow_site():
    with webservers.serving("127.0.0.2") as site:
        yield site


@pytest.fixture(scope="module")
def server(tmp_path_factory, slow_site):
    yaml = apps.THREADSAFE_YAML + f"env_variables:\n  SLOW_URL: '{slow_site.base}/slow?s=30'\n"
    with running(tmp_path_factory.mktemp("waits"), {"main.py": MAIN}, app_yaml=yaml, request_deadline=1.0,
                 urlfetch_allow_internal="127.0.0.2/32") as srv:
        yield srv


@pytest.mark.parametrize("wait", WAITS)
def test_a_handler_blocked_in_a_wait_gets_deadline_exceeded_within_the_grace(server, wait):
    status, _, body = apps.fetch(server, f"/{wait}")
    assert (status, body) == (503, f"interrupted in {wait}".encode())


@pytest.mark.parametrize("call", API_CALLS)
def test_a_handler_blocked_in_an_api_call_gets_deadline_exceeded_within_the_grace(server, call):
    status, _, body = apps.fetch(server, f"/{call}")
    assert (status, body) == (503, f"interrupted in {call}".encode())
