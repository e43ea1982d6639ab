"""Versions with resident instances (min_instances) are placed by capacity across runtime hosts, not run on every
host, and placed again when a host dies (runtime/host.py), with a real control plane, nats-server and three runtime
hosts on loopback. Each host gives instances 800 MB: two F1 instances (384 MB)."""

from __future__ import annotations

import json
import os
import pathlib
import textwrap

import pytest

from deploy import cli
from kiln_platform.supervisor import python_module
from tests.integration import apps
from tests.integration.conftest import service_env
from tests.integration.test_control_plane import start_control, token, wait_for_host

pytestmark = pytest.mark.nats

CAPACITY_MB = 800
HOSTS = ("keep-host-a", "keep-host-b", "keep-host-c")


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory):
    # A nats-server of its own, so that no other test's runtime host takes these versions.
    nats_url = f"nats://{supervisor.start_nats(tmp_path_factory.mktemp('nats-keep'), name='nats-keep').address}"
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-keep")
    env = {**service_env(), "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url}
    hosts = {}
    for name in HOSTS:
        root = tmp_path_factory.mktemp(name)
        hosts[name] = (root, supervisor.spawn(name, python_module(
            "runtime.host", "--control-plane", control, "--name", name, "--capacity-mb", str(CAPACITY_MB),
            "--resync-seconds", "1", "--run-dir", str(root), "--cache-dir",
            str(pathlib.Path.home() / ".cache" / "kiln"), "--manager-arg=--isolation=none", "--",
            "--listen", "127.0.0.1:0"), env=env))
    wait_for_host(control, "python27")
    return {"control": control, "hosts": hosts, "run_dir": supervisor.run_dir, "tmp": tmp_path_factory.mktemp("keep")}


def deploy(cluster, app: str, scaling: str) -> None:
    app_dir = cluster["tmp"] / app
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n" + scaling +
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(textwrap.dedent("""\
        def app(environ, start_response):
            start_response('200 OK', [('Content-Type', 'text/plain')])
            return [b'ok']
        """))
    assert cli.main(["deploy", str(app_dir), "--app", app, "--version", "v1", "--control-plane", cluster["control"],
                     "--token", token(app, "admin", "dev")]) == 0


def live_hosts(cluster) -> dict[str, pathlib.Path]:
    return {name: root for name, (root, child) in cluster["hosts"].items() if child.proc.poll() is None}


def managers(cluster, app: str, live: dict[str, pathlib.Path] | None = None) -> list[str]:
    """The live host (of ``live``, by default those live now) of every runtime.manager process of ``app``
    (from /proc)."""
    live = live_hosts(cluster) if live is None else live
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "runtime.manager" not in argv or "--app-id" not in argv or argv[argv.index("--app-id") + 1] != app:
            continue
        run_dir = argv[argv.index("--run-dir") + 1]
        found += [host for host, root in live.items() if run_dir.startswith(str(root))]
    return found


def serving_instances(cluster, app: str) -> dict[str, int]:
    """Per live host running a manager of ``app``: its instances that serve (the manager's instances.json)."""
    counts = {}
    live = live_hosts(cluster)  # once: a host killed meanwhile is still read from its own directory
    for host in managers(cluster, app, live):
        try:
            state = json.loads((live[host] / app / "v1.1" / "instances.json").read_text())
        except (OSError, ValueError):
            state = []
        counts[host] = sum(1 for instance in state if instance["ready"])
    return counts


def host_log(cluster, host: str) -> str:
    return (cluster["run_dir"] / f"{host}.log").read_text(errors="replace")


F1_MIN_3 = "automatic_scaling:\n  min_instances: 3\n"


def test_a_resident_version_gets_its_min_instances_on_as_many_hosts_as_they_need_not_on_every_host(cluster):
    deploy(cluster, "keep3", F1_MIN_3)
    apps.wait_for(lambda: sum(serving_instances(cluster, "keep3").values()) == 3, 240)
    placed = serving_instances(cluster, "keep3")
    assert sorted(placed.values()) == [1, 2]  # two on the host that placed it (all it has room for), one elsewhere


def test_a_dead_hosts_resident_instances_are_placed_again_on_hosts_with_room(cluster):
    placed = serving_instances(cluster, "keep3")
    first = next(host for host in placed if "keep3: version v1 placed here" in host_log(cluster, host))
    host = cluster["hosts"][first][1].proc
    host.kill()  # its managers and instances die with it; its placement keys expire
    # Until the host is reaped it still counts as live, and its instances with it: sum == 3 would hold at once.
    host.wait(timeout=60)
    apps.wait_for(lambda: sum(serving_instances(cluster, "keep3").values()) == 3, 240)
    assert first not in serving_instances(cluster, "keep3")
