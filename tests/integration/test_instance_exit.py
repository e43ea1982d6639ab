"""Requests in flight on an instance that dies get a 500 at once, whatever killed it, as on App Engine ("A problem was
encountered with the process that handled this request, causing it to exit"); the next request is served by a fresh
instance; an instance stopped normally (SIGTERM: it drains) answers its requests itself and no 500 is made up.

Through kiln dev's parts: router (waiting up to 120 s for an answer), NATS with a user per app, the instance manager
and the runtime, under ``--isolation none`` and ``user``. App code cannot signal its own process (the sandbox refuses
``os.kill``), so the test plays what kills an instance: it signals the runtime process (or its wrapper) while
requests are held in the app, which waits for a file the test writes."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import textwrap
import time
import urllib.error
import urllib.request

import grpc
import pytest

from kiln_platform import auth
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from runtime import inflight, isolation
from tests.integration import apps

pytestmark = pytest.mark.nats

# The router's deadline (kiln dev: the request deadline + 5 s): far longer than any answer the tests wait for.
ROUTER_TIMEOUT = 120.0
HELD = 3

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: true
automatic_scaling:
  max_instances: 1
handlers:
- url: /.*
  script: main.app
"""

MAIN = textwrap.dedent('''
    import os, threading, time

    HERE = os.path.dirname(os.path.abspath(__file__))
    LOCK = threading.Lock()
    HOLDING = [0]
    FORGED = [b"+kiln.http.other.v1\\n", b"+_INBOX_other.abc.def\\n", b"+$JS.API.STREAM.DELETE.KILN_LOGS\\n",
              b"+_INBOX.>\\n"]

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/hold":  # until the test writes the release file (or the instance dies)
            with LOCK:
                HOLDING[0] += 1
            try:
                deadline = time.monotonic() + 110
                while not os.path.exists(os.path.join(HERE, environ["QUERY_STRING"])) and time.monotonic() < deadline:
                    time.sleep(0.02)
            finally:
                with LOCK:
                    HOLDING[0] -= 1
            body = b"released"
        elif path == "/holding":
            body = str(HOLDING[0]).encode()
        elif path == "/forge":  # hostile code: the pipe to the manager is in its process too
            import sys
            fd = int(sys.argv[sys.argv.index("--inflight-fd") + 1])
            for line in FORGED:
                os.write(fd, line)
            body = b"forged"
        elif path == "/here":
            body = HERE.encode()
        else:
            body = os.environ["INSTANCE_ID"].encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
''')


@pytest.fixture(scope="module", params=["none", "user"])
def server(request, tmp_path_factory):
    mode = request.param
    if mode == "user" and (os.geteuid() != 0 or isolation.platform_blocked()):
        pytest.fail("--isolation user needs root and a platform app users can read (.ci/run runs the tests as root; "
                    f"python -m runtime.isolation prepare): {isolation.platform_blocked()}")
    with apps.running(tmp_path_factory.mktemp(f"exit-{mode}"), {"main.py": MAIN}, app_yaml=APP_YAML,
                      request_deadline=ROUTER_TIMEOUT - 5, isolation=mode) as srv:
        yield srv


def fetch(server, path):
    """status, body and seconds taken; the client itself would wait past the router's deadline."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=ROUTER_TIMEOUT + 30) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    return status, body, time.monotonic() - started


def serving_instance(server):
    status, body, _ = fetch(server, "/")
    return body.decode() if status == 200 else None


def holding(server):
    status, body, _ = fetch(server, "/holding")
    return int(body) if status == 200 else -1


def instance_pid(server, instance_id):
    """The manager's child for the instance: the wrapper outside the instance's PID namespace (once the manager has
    recorded it as ready, which may be a moment after it first serves)."""
    apps.wait_for(lambda: instance_id in server.instances(), 30)
    return server.instances()[instance_id]


def runtime_pid(server, instance_id):
    return apps.runtime_below(instance_pid(server, instance_id))


def manager_log(server):
    return (server.run_dir / "manager.log").read_text()


def held_requests_logged(server, instance_id):
    """The request-log records of the ``/hold`` requests answered for the instance ``instance_id``."""
    channel = grpc.insecure_channel(server.addresses["logs_svc"])
    try:
        token = auth.mint_app_token(server._secret, server.app_id)
        stub = logs_pb2_grpc.LogsServiceStub(channel)
        found = stub.Query(logs_pb2.QueryRequest(page_size=1000, include_app_logs=True),
                           metadata=(("authorization", f"Bearer {token}"),))
        return [r for r in found.logs if r.instance_id == instance_id and r.resource.startswith("/hold?")]
    finally:
        channel.close()


def hold_requests(server, pool, release):
    """HELD requests in flight in the app (each waiting for ``release``), once the app holds them all."""
    pending = [pool.submit(fetch, server, f"/hold?{release}") for _ in range(HELD)]
    apps.wait_for(lambda: holding(server) == HELD, 60)
    return pending


def victim(server, which, instance_id):
    return instance_pid(server, instance_id) if which == "wrapper" else runtime_pid(server, instance_id)


@pytest.mark.parametrize(("which", "sig"), [("runtime", signal.SIGKILL), ("runtime", signal.SIGSEGV),
                                            ("runtime", signal.SIGABRT), ("wrapper", signal.SIGKILL)])
def test_requests_held_by_an_instance_that_dies_get_a_500_at_once(server, which, sig):
    before = serving_instance(server)
    with concurrent.futures.ThreadPoolExecutor(HELD) as pool:
        pending = hold_requests(server, pool, f"never-{time.monotonic_ns()}")
        os.kill(victim(server, which, before), sig)
        results = [f.result() for f in pending]
    for status, body, seconds in results:
        assert status == 500 and b"Internal Server Error" in body
        assert b"did not finish in time" not in body  # not the router's deadline page
        assert seconds < ROUTER_TIMEOUT
    apps.wait_for(lambda: serving_instance(server) not in (before, None), 60)
    assert f"instance {before} was killed by {sig.name} while holding {HELD} request(s)" in manager_log(server)


def test_the_request_log_records_each_as_a_500_with_app_engines_message(server):
    before = serving_instance(server)
    with concurrent.futures.ThreadPoolExecutor(HELD) as pool:
        pending = hold_requests(server, pool, f"never-{time.monotonic_ns()}")
        os.kill(runtime_pid(server, before), signal.SIGKILL)
        assert [f.result()[0] for f in pending] == [500] * HELD
    apps.wait_for(lambda: len(held_requests_logged(server, before)) >= HELD, 30)
    failed = held_requests_logged(server, before)
    assert [r.status for r in failed] == [500] * HELD
    for record in failed:
        assert [line.message for line in record.app_logs] == [inflight.EXITED_MESSAGE]


def test_an_instance_stopped_with_sigterm_answers_what_it_holds_and_no_500_is_made_up(server):
    before = serving_instance(server)
    release = f"release-{time.monotonic_ns()}"
    here = pathlib.Path(fetch(server, "/here")[1].decode())
    with concurrent.futures.ThreadPoolExecutor(HELD) as pool:
        pending = hold_requests(server, pool, release)
        os.kill(instance_pid(server, before), signal.SIGTERM)
        logs = list(server.instances_dir.glob(f"instance-{before[:8]}*.log"))
        apps.wait_for(lambda: "stopping: draining requests" in logs[0].read_text(), 30)  # in flight while it drains
        (here / release).touch()
        results = [f.result() for f in pending]
    assert [(status, body) for status, body, _ in results] == [(200, b"released")] * HELD
    apps.wait_for(lambda: serving_instance(server) not in (before, None), 60)
    assert f"instance {before} exited with status 0; replacing it" in manager_log(server)
    assert f"instance {before} exited with status 0 while holding" not in manager_log(server)


def test_a_request_answered_before_the_instance_dies_is_not_answered_again(server):
    """The instance reports each answer: the manager answers only what was still held."""
    before = serving_instance(server)
    release = f"release-{time.monotonic_ns()}"
    here = pathlib.Path(fetch(server, "/here")[1].decode())
    with concurrent.futures.ThreadPoolExecutor(HELD + 1) as pool:
        answered = pool.submit(fetch, server, f"/hold?{release}")
        apps.wait_for(lambda: holding(server) == 1, 60)
        (here / release).touch()
        assert answered.result()[:2] == (200, b"released")
        pending = hold_requests(server, pool, f"never-{time.monotonic_ns()}")
        os.kill(runtime_pid(server, before), signal.SIGKILL)
        assert [f.result()[0] for f in pending] == [500] * HELD
    apps.wait_for(lambda: f"instance {before} was killed" in manager_log(server), 30)
    assert f"instance {before} was killed by SIGKILL while holding {HELD} request(s)" in manager_log(server)


def test_what_app_code_writes_into_the_pipe_is_refused_unless_it_is_a_routers_reply_inbox(server):
    """App code can write into the pipe; the manager answers only the router's inboxes, never another subject."""
    before = serving_instance(server)
    assert fetch(server, "/forge")[:2] == (200, b"forged")
    with concurrent.futures.ThreadPoolExecutor(HELD) as pool:
        pending = hold_requests(server, pool, f"never-{time.monotonic_ns()}")
        os.kill(runtime_pid(server, before), signal.SIGKILL)
        assert [f.result()[0] for f in pending] == [500] * HELD
    apps.wait_for(lambda: f"instance {before} wrote" in manager_log(server), 30)
    assert (f"instance {before} wrote 4 line(s) into its request pipe that were not its requests' reply subjects "
            "(ignored)") in manager_log(server)
    assert f"instance {before} was killed by SIGKILL while holding {HELD} request(s)" in manager_log(server)
