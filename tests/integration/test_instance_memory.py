"""An instance's memory is bounded by its instance class, as on App Engine: past the limit after a request the
instance is replaced, past the hard limit it stops at once; either way the app keeps serving from a new instance.
Through router, NATS, the instance manager and the runtime."""

from __future__ import annotations

import textwrap

import pytest

from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: true
instance_class: F1
handlers:
- url: /.*
  script: main.app
"""

MAIN = textwrap.dedent('''
    import os
    KEPT = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/keep":  # 360 MB held after the request: over F1's 384 MB with the runtime, under 1.25x
            KEPT.extend(b"x" * (1 << 20) for _ in range(360))
        elif path == "/hog":  # without bound
            while True:
                KEPT.append(b"x" * (8 << 20))
        elif path == "/huge":  # one allocation far beyond the limit (1.2 GB against F1's 480 MB hard limit)
            KEPT.append(bytearray(1200 << 20))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [os.environ["INSTANCE_ID"].encode()]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("memory"), {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


def instance_log(server, instance_id=""):
    return "".join(p.read_text() for p in server.instances_dir.glob(f"instance-{instance_id[:8]}*.log"))


def serving_instance(server):
    """The id of the instance that answered, or None while none answers."""
    status, _, body = apps.fetch(server, "/")
    return body.decode() if status == 200 else None


def test_memory_kept_past_the_soft_limit_finishes_the_request_then_replaces_the_instance(server):
    before = serving_instance(server)
    status, _, body = apps.fetch(server, "/keep")
    assert (status, body.decode()) == (200, before)
    apps.wait_for(lambda: serving_instance(server) not in (before, None), 30)
    assert "Exceeded soft memory limit of 384 MB" in instance_log(server)


def test_allocating_without_bound_gives_500_and_a_fresh_instance_serves_next(server):
    """Whichever stops the instance first, its watchdog (past 480 MB) or the kernel (its cgroup's 576 MB), the request
    gets a 500 at once: from the instance, or from its manager when the kernel killed it."""
    before = serving_instance(server)
    status, _, body = apps.fetch(server, "/hog")
    assert status == 500 and b"Internal Server Error" in body
    apps.wait_for(lambda: serving_instance(server) not in (before, None), 30)
    apps.wait_for(lambda: f"instance {before} " in manager_log(server), 30)
    by_watchdog = "Exceeded hard memory limit of 480 MB" in instance_log(server, before)
    by_kernel = (f"instance {before} was killed by the kernel for passing its memory limit of 576 MB"
                 in manager_log(server))
    assert by_watchdog or by_kernel


def test_one_allocation_far_beyond_the_limit_is_refused_gives_500_and_a_fresh_instance_serves_next(server):
    before = serving_instance(server)
    status, _, _ = apps.fetch(server, "/huge")
    assert status == 500
    assert "MemoryError" in instance_log(server)
    # The instance checks its memory after it has answered (so the 500 may arrive before the line is written).
    apps.wait_for(lambda: "an allocation was refused" in instance_log(server), 30)
    apps.wait_for(lambda: serving_instance(server) not in (before, None), 30)
    # The manager's record of the instance's memory (its cgroup's peak): never past the hard limit.
    line = f"instance {before} used at most "
    apps.wait_for(lambda: line in manager_log(server), 30)
    assert int(manager_log(server).split(line)[1].split()[0]) <= 480


def manager_log(server):
    return (server.run_dir / "manager.log").read_text()
