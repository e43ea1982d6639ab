"""Deployed versions scale to zero and come back on demand, placed on runtime hosts by capacity (runtime/host.py,
router/demand.py), with a real control plane, router, nats-server and two runtime hosts on loopback.

Each host gives instances 800 MB: one B2 instance (768 MB), or two B1/F1 (384 MB). The tests run in file order:
the last fills both hosts on purpose.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import pathlib
import textwrap
import threading

import pytest

from deploy import cli
from kiln_platform.supervisor import python_module
from tests.integration import apps
from tests.integration.conftest import service_env
from tests.integration.test_control_plane import start_control, token, wait_for_host

pytestmark = pytest.mark.nats

DOMAIN = "example.test"
CAPACITY_MB = 800
PENDING_SECONDS = 30


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory):
    # A nats-server of its own: the session's carries other tests' runtime hosts, which would hear these deploys,
    # take these demands and count as the live host deploys wait for.
    nats_url = f"nats://{supervisor.start_nats(tmp_path_factory.mktemp('nats-zero'), name='nats-zero').address}"
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-zero")
    run = supervisor.run_dir
    env = {**service_env(), "KILN_ROUTER_CONTROL_TOKEN": token("*", "read", "router"),
           "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url}
    router = supervisor.start("router-zero", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", DOMAIN, "--control-plane", control,
        "--cache-dir", str(tmp_path_factory.mktemp("router-zero-cache")), "--pending-timeout-seconds",
        str(PENDING_SECONDS), "--ready-file", str(run / "router-zero.addr")), env=env,
        ready_file=run / "router-zero.addr")
    hosts = {}
    for name in ("zero-host-a", "zero-host-b"):
        hosts[name] = tmp_path_factory.mktemp(name)
        supervisor.spawn(name, python_module(
            "runtime.host", "--control-plane", control, "--name", name, "--capacity-mb", str(CAPACITY_MB),
            "--run-dir", str(hosts[name]), "--cache-dir", str(pathlib.Path.home() / ".cache" / "kiln"),
            "--manager-arg=--isolation=none", "--", "--listen", "127.0.0.1:0"), env=env)
    wait_for_host(control, "python27")
    return {"control": control, "router": router.address, "hosts": hosts, "run_dir": run,
            "tmp": tmp_path_factory.mktemp("zero")}


def deploy(cluster, app: str, scaling: str = "", version: str = "v1", threadsafe: bool = True) -> None:
    app_dir = cluster["tmp"] / f"{app}-{version}"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(f"runtime: python27\napi_version: 1\nthreadsafe: {str(threadsafe).lower()}\n"
                                      + scaling + "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(textwrap.dedent("""\
        import os
        import time
        def app(environ, start_response):
            if environ['PATH_INFO'] == '/slow':
                time.sleep(0.5)
            start_response('200 OK', [('Content-Type', 'text/plain')])
            return [os.environ['CURRENT_VERSION_ID'].encode()]
        """))
    assert cli.main(["deploy", str(app_dir), "--app", app, "--version", version, "--control-plane",
                     cluster["control"], "--token", token(app, "admin", "dev")]) == 0


def get(cluster, app: str, path: str = "/") -> tuple[int, str]:
    name, _, port = cluster["router"].rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=PENDING_SECONDS + 60)
    try:
        conn.request("GET", path, headers={"Host": f"{app}.{DOMAIN}"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def first_get(cluster, app: str) -> tuple[int, str]:
    """The first answer for a just-deployed app: the router hears of a new app's default version on NATS a moment
    after the deploy returns (a 404 until then); after that the request waits in the pending queue for an
    instance."""
    answers: list[tuple[int, str]] = []

    def known() -> bool:
        answers.append(get(cluster, app))
        return answers[-1][0] != 404
    apps.wait_for(known, 60)
    return answers[-1]


def router_knows(cluster, app: str) -> bool:
    """Whether the router has heard of the app's default version (it logs it), without sending the app a request."""
    text = (cluster["run_dir"] / "router-zero.log").read_text(errors="replace")
    return f"app {app}: default version is now" in text


def managers(cluster) -> list[tuple[str, str]]:
    """(app, host) of every runtime.manager process of this cluster's hosts, from /proc."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "runtime.manager" not in argv or "--app-id" not in argv:
            continue
        run_dir = argv[argv.index("--run-dir") + 1]
        for host, root in cluster["hosts"].items():
            if run_dir.startswith(str(root)):
                found.append((argv[argv.index("--app-id") + 1], host))
    return found


def host_log(cluster, host: str) -> str:
    return (cluster["run_dir"] / f"{host}.log").read_text(errors="replace")


def test_twenty_deployed_versions_start_no_manager(cluster):
    for n in range(20):
        deploy(cluster, "idle-many", version=f"v{n}")
    for host in cluster["hosts"]:  # each host has heard of all twenty, and started none
        apps.wait_for(lambda: sum("app idle-many: version v" in line and "runs nothing until a request" in line
                                  for line in host_log(cluster, host).splitlines()) >= 20, 180)
    assert managers(cluster) == []


BASIC_B1_IDLE_1S = "instance_class: B1\nbasic_scaling:\n  max_instances: 1\n  idle_timeout: 1s\n"


def test_an_idle_version_scales_to_zero_and_its_next_request_starts_it_again(cluster):
    deploy(cluster, "zero-back", BASIC_B1_IDLE_1S)
    assert first_get(cluster, "zero-back")[0] == 200
    apps.wait_for(lambda: "zero-back" not in [app for app, _ in managers(cluster)], 60)  # idle, stopped, exited
    assert get(cluster, "zero-back")[0] == 200
    assert [app for app, _ in managers(cluster)].count("zero-back") == 1


def test_concurrent_first_requests_start_one_manager(cluster):
    deploy(cluster, "zero-burst", BASIC_B1_IDLE_1S)
    apps.wait_for(lambda: router_knows(cluster, "zero-burst"), 60)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: get(cluster, "zero-burst")[0], range(8)))
    assert answers == [200] * 8
    assert [app for app, _ in managers(cluster)].count("zero-burst") == 1


# One instance at a time each (threadsafe: false), two at most; a B2 instance (768 MB) is all one host has room for.
BASIC_B2_TWO_IDLE_1S = "instance_class: B2\nbasic_scaling:\n  max_instances: 2\n  idle_timeout: 1s\n"


def test_a_version_whose_load_outgrows_its_host_runs_on_another_too_and_back_on_none_when_idle(cluster):
    apps.wait_for(lambda: managers(cluster) == [], 60)  # the earlier tests' versions have gone idle
    deploy(cluster, "spread", BASIC_B2_TWO_IDLE_1S, threadsafe=False)
    assert first_get(cluster, "spread")[0] == 200
    answers: list[int] = []
    done = threading.Event()

    def load() -> None:  # requests one after another, four at a time: more than one instance holds
        while not done.is_set():
            answers.append(get(cluster, "spread", "/slow")[0])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(load) for _ in range(4)]
        try:
            apps.wait_for(lambda: sorted(host for app, host in managers(cluster) if app == "spread") ==
                          sorted(cluster["hosts"]), 120)
        finally:
            done.set()
        for client in clients:
            client.result()
    assert answers and set(answers) == {200}
    assert "asking another host" in host_log(cluster, "zero-host-a") + host_log(cluster, "zero-host-b")
    apps.wait_for(lambda: "spread" not in [app for app, _ in managers(cluster)], 60)  # idle: both scale to zero


BASIC_B2_IDLE_10M = "instance_class: B2\nbasic_scaling:\n  max_instances: 1\n  idle_timeout: 10m\n"


def test_a_host_at_capacity_leaves_the_next_version_to_another_and_none_takes_more_than_fits(cluster):
    apps.wait_for(lambda: managers(cluster) == [], 60)  # the earlier tests' versions have gone idle
    for app in ("full-b", "full-c", "full-d"):
        deploy(cluster, app, BASIC_B2_IDLE_10M)
    assert first_get(cluster, "full-b")[0] == 200
    assert first_get(cluster, "full-c")[0] == 200
    apps.wait_for(lambda: router_knows(cluster, "full-d"), 60)
    placed = dict(managers(cluster))
    assert set(placed) == {"full-b", "full-c"} and placed["full-b"] != placed["full-c"]  # one 768 MB each
    status, _ = get(cluster, "full-d")  # no host has room: it waits in the pending queue, then 503
    assert status == 503
    assert "full-d" not in dict(managers(cluster))
