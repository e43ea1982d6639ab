"""The instance manager: minimum instances, replacement of a killed instance under load (only its
requests fail), scaling up under load and down when idle; through router, NATS and runtime."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import signal
import subprocess
import threading
import time

import pytest

from kiln_platform.supervisor import python_module
from tests.integration import apps
from tests.integration.conftest import service_env

pytestmark = pytest.mark.nats

HOST = "scaled.example.test"
MAIN = (
    "import os, time\n"
    "def app(environ, start_response):\n"
    "    if environ['PATH_INFO'] == '/slow':\n"
    "        time.sleep(1.5)\n"
    "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
    "    return [os.environ['INSTANCE_ID'].encode()]\n")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, supervisor, nats_url):
    app_dir = tmp_path_factory.mktemp("scaled")
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(MAIN)
    run = supervisor.run_dir
    env = service_env()
    router = supervisor.start("router-scaled", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", "scaled=v1", "--ready-file", str(run / "router-scaled.addr")), env=env,
        ready_file=run / "router-scaled.addr")
    supervisor.start("manager-scaled", python_module(
        "runtime.manager", "--app-dir", str(app_dir), "--app-id", "scaled", "--version-id", "v1",
        "--nats-url", nats_url, "--run-dir", str(run / "scaled-instances"), "--min-instances", "2",
        "--max-instances", "4", "--max-concurrent-requests", "2", "--idle-seconds", "2",
        "--ready-file", str(run / "manager-scaled.ready"), "--", "--listen", "127.0.0.1:0"),
        env=env, ready_file=run / "manager-scaled.ready")
    wait_until(lambda: len(instance_pids()) == 2 and len(serving(router.address)) == 2, 60)
    return router.address


def get(address, path="/"):
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Host": HOST})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def serving(address, tries=30):
    return {body for status, body in (get(address) for _ in range(tries)) if status == 200}


def instance_pids() -> dict[str, int]:
    out = subprocess.run(["pgrep", "-af", "runtime --app-dir"], capture_output=True, text=True).stdout
    pids = {}
    for line in out.splitlines():
        pid, _, cmd = line.partition(" ")
        if "--app-id scaled" in cmd and "--instance-id" in cmd:
            pids[cmd.split("--instance-id ")[1].split()[0]] = int(pid)
    return pids


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def test_minimum_instances_share_the_requests(stack):
    assert len(serving(stack)) == 2


def test_a_killed_instance_costs_only_the_requests_it_held(stack):
    before = instance_pids()
    victim_id, victim_pid = sorted(before.items())[0]
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                results.append(get(stack))
            except OSError:
                results.append((0, ""))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1)
    os.kill(victim_pid, signal.SIGKILL)
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    failed = [r for r in results if r[0] != 200]
    assert len(failed) <= len(threads), failed  # at most the requests in flight at the kill
    assert len(results) - len(failed) > 20
    wait_until(lambda: len(instance_pids()) == 2 and victim_id not in instance_pids(), 30)


def test_instances_are_added_under_load_and_removed_when_idle(stack, supervisor):
    statuses = set()
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(instance_pids()) < 4:
            statuses |= {status for status, _ in pool.map(lambda _: get(stack, "/slow"), range(10))}
        assert len(instance_pids()) >= 3
    wait_until(lambda: len(instance_pids()) == 2, 40)
    assert statuses == {200}
    # Each instance scaled down drained before it stopped: its manager saw it go and answered nothing for it.
    log = supervisor.run_dir / "manager-scaled.log"
    stopped = [line.split("stopping idle instance ")[1].split()[0] for line in log.read_text().splitlines()
               if "stopping idle instance " in line]
    assert stopped
    wait_until(lambda: all(f"stopped instance {i} exited with status 0" in log.read_text() for i in stopped), 30)
    assert not [i for i in stopped if f"instance {i} exited with status 0 while holding" in log.read_text()]


PATIENT_YAML = """
runtime: python27
api_version: 1
threadsafe: false
automatic_scaling:
  min_pending_latency: 10s
  max_instances: 3
handlers:
- url: /.*
  script: main.app
"""


def test_min_pending_latency_keeps_requests_queued_on_one_instance(tmp_path):
    """One request at a time per instance, and requests must wait 10 s before load may add an instance:
    three concurrent slow requests queue on the single instance instead of starting two more."""
    with apps.running(tmp_path / "patient", {"main.py": MAIN}, app_yaml=PATIENT_YAML) as server:
        seen_instances = set()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(apps.fetch, server, "/slow") for _ in range(3)]
            while not all(f.done() for f in pending):
                seen_instances |= set(server.instances())
                time.sleep(0.1)
            results = [f.result() for f in pending]
        assert [status for status, _, _ in results] == [200, 200, 200]
        assert len({body for _, _, body in results}) == 1  # all served by the one instance, in turn
        assert len(seen_instances) == 1


def test_requests_arriving_while_the_only_instance_is_replaced_wait_for_the_new_one(tmp_path):
    """App Engine's pending queue: with no instance listening, a request to the default version waits for
    the one the manager is starting, instead of failing."""
    with apps.running(tmp_path / "sole", {"main.py": MAIN}) as server:
        (old_pid,) = server.instances().values()
        status, _, before = apps.fetch(server, "/")
        os.kill(old_pid, signal.SIGKILL)
        # Once the manager has seen it die, NATS has too (its socket closed with it): no instance
        # listens until the replacement has started.
        apps.wait_for(lambda: old_pid not in server.instances().values(), 10)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: apps.fetch(server, "/"), range(4)))
        assert status == 200
        assert [r[0] for r in results] == [200] * 4
        assert all(r[2] != before for r in results)  # served by the replacement
