"""A runtime host's managers serve their metrics (runtime/host.py ``--manager-metrics``): a real control plane,
router, nats-server and runtime host on loopback; the host's targets file is read as Prometheus would read it."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln_platform.supervisor import python_module
from tests.integration import apps
from tests.integration.conftest import service_env
from tests.integration.test_control_plane import start_control, token, wait_for_host
from tests.integration.test_scale_to_zero import DOMAIN, PENDING_SECONDS, deploy, first_get

pytestmark = pytest.mark.nats

APP = "gauged"


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory):
    """One host whose managers serve metrics on the ports FIRST..FIRST+2, of which FIRST is taken by another
    server: (the cluster as tests/integration/test_scale_to_zero.py's helpers take it, the taken port)."""
    nats_url = f"nats://{supervisor.start_nats(tmp_path_factory.mktemp('nats-gauged'), name='nats-gauged').address}"
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-gauged")
    run = supervisor.run_dir
    env = {**service_env(), "KILN_ROUTER_CONTROL_TOKEN": token("*", "read", "router"),
           "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url}
    router = supervisor.start("router-gauged", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", DOMAIN, "--control-plane", control,
        "--cache-dir", str(tmp_path_factory.mktemp("router-gauged-cache")), "--pending-timeout-seconds",
        str(PENDING_SECONDS), "--ready-file", str(run / "router-gauged.addr")), env=env,
        ready_file=run / "router-gauged.addr")
    taken = socket.create_server(("127.0.0.1", 0))  # a port of the range something else listens on
    first = taken.getsockname()[1]
    host_dir = tmp_path_factory.mktemp("gauged-host")
    supervisor.spawn("gauged-host", python_module(
        "runtime.host", "--control-plane", control, "--name", "gauged-host", "--capacity-mb", "800",
        "--run-dir", str(host_dir), "--manager-metrics", f"127.0.0.1:{first}-{first + 2}",
        "--manager-arg=--isolation=none", "--", "--listen", "127.0.0.1:0"), env=env)
    wait_for_host(control, "python27")
    yield {"control": control, "router": router.address, "run_dir": run, "host_dir": host_dir,
           "tmp": tmp_path_factory.mktemp("gauged")}, first
    taken.close()


def targets(cluster) -> list[str]:
    path = cluster["host_dir"] / "metrics-targets.json"
    if not path.exists():
        return []
    return [address for group in json.loads(path.read_text()) for address in group["targets"]]


def serving(address: str) -> list[float]:
    """The manager's count of the app's serving instances, scraped from its page."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return [s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "kiln_runtime_instances" and s.labels == {"app": APP, "version": "v1", "state": "serving"}]


def test_a_hosts_manager_serves_its_metrics_at_the_address_the_targets_file_lists(cluster):
    cluster, first = cluster
    deploy(cluster, APP)
    assert first_get(cluster, APP)[0] == 200
    apps.wait_for(lambda: len(targets(cluster)) == 1, 60)
    address = targets(cluster)[0]
    assert address == f"127.0.0.1:{first + 1}"  # the first port of the range is taken: the next one
    # The manager counts its instance as serving at its next tick after the instance says it is ready.
    apps.wait_for(lambda: serving(address) == [1.0], 30)
    labels = json.loads((cluster["host_dir"] / "metrics-targets.json").read_text())[0]["labels"]
    assert labels == {"kiln_host": "gauged-host"}
