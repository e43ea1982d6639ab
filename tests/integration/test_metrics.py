"""Prometheus metrics (kiln_platform/metrics.py), scraped from real processes before and after a small load:
a datastore_svc, a router and an instance manager, each started with ``--metrics-listen``."""

from __future__ import annotations

import http.client
import json
import pathlib
import threading
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln.pb.datastore.v1 import datastore_pb2, datastore_pb2_grpc
from kiln_platform.supervisor import free_port, python_module
from runtime.cgroups import InstanceGroup
from runtime.memory import resident_bytes
from tests.integration.apps import wait_for
from tests.integration.conftest import app_metadata, service_env

pytestmark = pytest.mark.nats

APP = "metered"
IDLE = "idle"  # a version with files but no instance: its requests wait, then get a 503
HOST = f"{APP}.example.test"
MAIN = ("def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'ok']\n")
APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """Every sample of the /metrics page at ``address``, parsed by prometheus_client's own text parser."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when the series has not appeared yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def present(samples: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in samples




# ------------------------------------------------------------------ gRPC services

@pytest.fixture(scope="module")
def datastore(supervisor, tmp_path_factory):
    """A datastore_svc serving metrics: (gRPC address, metrics address)."""
    run = supervisor.run_dir
    metrics_address = f"127.0.0.1:{free_port()}"
    child = supervisor.start("datastore_svc-metered", python_module(
        "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(run / "datastore-metered.addr"),
        "--data-dir", str(tmp_path_factory.mktemp("datastore-metered")), "--metrics-listen", metrics_address),
        env=service_env(), ready_file=run / "datastore-metered.addr")
    return child.address, metrics_address


def list_indexes(address: str, metadata) -> None:
    with grpc.insecure_channel(address) as channel:
        datastore_pb2_grpc.DatastoreServiceStub(channel).ListIndexes(
            datastore_pb2.ListIndexesRequest(), metadata=metadata, timeout=30)


GRPC = {"service": "kiln.pb.datastore.v1.DatastoreService", "method": "ListIndexes"}


def test_grpc_calls_are_counted_by_the_status_they_ended_with(datastore):
    address, metrics_address = datastore
    before = scrape(metrics_address)
    for _ in range(20):
        list_indexes(address, app_metadata(APP))
    with pytest.raises(grpc.RpcError) as refused:
        list_indexes(address, ())  # no credentials
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = scrape(metrics_address)
    moved = {code: value(after, "kiln_grpc_requests_total", **GRPC, code=code)
             - value(before, "kiln_grpc_requests_total", **GRPC, code=code) for code in ("OK", "UNAUTHENTICATED")}
    assert moved == {"OK": 20, "UNAUTHENTICATED": 1}


def test_a_malformed_grpc_request_is_counted_as_invalid_argument(datastore):
    address, metrics_address = datastore
    before = scrape(metrics_address)
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/kiln.pb.datastore.v1.DatastoreService/ListIndexes")
        with pytest.raises(grpc.RpcError) as bad:
            call(b"\xff\xff\xff", metadata=app_metadata(APP), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(metrics_address)
    labels = {**GRPC, "code": "INVALID_ARGUMENT"}
    assert value(after, "kiln_grpc_requests_total", **labels) - value(before, "kiln_grpc_requests_total", **labels) == 1


def test_grpc_latency_histogram_counts_every_call(datastore):
    address, metrics_address = datastore
    before = scrape(metrics_address)
    for _ in range(20):
        list_indexes(address, app_metadata(APP))
    with pytest.raises(grpc.RpcError):
        list_indexes(address, ())
    after = scrape(metrics_address)
    name = "kiln_grpc_request_seconds_count"
    assert value(after, name, **GRPC) - value(before, name, **GRPC) == 21
    assert present(after, "kiln_grpc_request_seconds_bucket", **GRPC, le="+Inf")


def test_grpc_in_flight_gauge_is_back_to_zero_once_calls_end(datastore):
    address, metrics_address = datastore
    for _ in range(5):
        list_indexes(address, app_metadata(APP))
    after = scrape(metrics_address)
    assert present(after, "kiln_grpc_requests_in_flight", **GRPC)
    assert value(after, "kiln_grpc_requests_in_flight", **GRPC) == 0


# ------------------------------------------------------------------ the router and the instance manager

@pytest.fixture(scope="module")
def stack(supervisor, nats_url, tmp_path_factory):
    """A router serving APP (with a manager running its instance) and IDLE (no instance): the addresses of the
    router, its metrics and the manager's metrics."""
    dirs = {}
    for app in (APP, IDLE):
        app_dir = dirs[app] = tmp_path_factory.mktemp(app)
        (app_dir / "app.yaml").write_text(APP_YAML)
        (app_dir / "main.py").write_text(MAIN)
    run = supervisor.run_dir
    env = service_env()
    router_metrics, manager_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    router = supervisor.start("router-metered", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", f"{APP}=v1,{IDLE}=v1", "--app-dirs", f"{APP}/v1={dirs[APP]},{IDLE}/v1={dirs[IDLE]}",
        "--pending-timeout-seconds", "3", "--metrics-listen", router_metrics,
        "--ready-file", str(run / "router-metered.addr")), env=env, ready_file=run / "router-metered.addr")
    supervisor.start("manager-metered", python_module(
        "runtime.manager", "--app-dir", str(dirs[APP]), "--app-id", APP, "--version-id", "v1",
        "--nats-url", nats_url, "--run-dir", str(run / "metered-instances"), "--metrics-listen", manager_metrics,
        "--ready-file", str(run / "manager-metered.ready"), "--", "--listen", "127.0.0.1:0"),
        env=env, ready_file=run / "manager-metered.ready")
    wait_for(lambda: get(router.address)[0] == 200, 60)
    return router.address, router_metrics, manager_metrics, run / "metered-instances"


def get(address: str, host: str = HOST) -> tuple[int, bytes]:
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.request("GET", "/anything", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


VERSION = {"app": APP, "version": "v1"}


def test_router_requests_are_counted_by_version_and_status_class(stack):
    router, router_metrics, *_ = stack
    before = scrape(router_metrics)
    statuses = [get(router)[0] for _ in range(20)]
    after = scrape(router_metrics)
    assert statuses == [200] * 20
    name = "kiln_router_requests_total"
    assert value(after, name, **VERSION, status_class="2xx") - value(before, name, **VERSION, status_class="2xx") == 20


def test_router_latency_histogram_counts_every_request(stack):
    router, router_metrics, *_ = stack
    before = scrape(router_metrics)
    for _ in range(20):
        get(router)
    after = scrape(router_metrics)
    name = "kiln_router_request_seconds_count"
    assert value(after, name, **VERSION) - value(before, name, **VERSION) == 20


def test_a_request_for_an_unknown_host_is_counted_without_an_app_label(stack):
    router, router_metrics, *_ = stack
    before = scrape(router_metrics)
    status, _ = get(router, host="nothing-here.example.org")
    after = scrape(router_metrics)
    assert status == 404
    labels = {"app": "", "version": "", "status_class": "4xx"}
    assert value(after, "kiln_router_requests_total", **labels) - value(before, "kiln_router_requests_total",
                                                                        **labels) == 1


def test_a_request_waiting_for_an_instance_is_counted_until_it_is_answered(stack):
    router, router_metrics, *_ = stack
    idle = {"app": IDLE, "version": "v1"}
    before = scrape(router_metrics)
    answered: list[int] = []
    waiter = threading.Thread(target=lambda: answered.append(get(router, host=f"{IDLE}.example.test")[0]))
    waiter.start()
    try:
        wait_for(lambda: value(scrape(router_metrics), "kiln_router_requests_waiting", **idle) == 1, 30)
    finally:
        waiter.join(60)
    after = scrape(router_metrics)
    assert answered == [503]  # no instance came within the pending timeout
    assert value(after, "kiln_router_requests_waiting", **idle) == 0
    name = "kiln_router_requests_total"
    assert value(after, name, **idle, status_class="5xx") - value(before, name, **idle, status_class="5xx") == 1


def test_the_manager_counts_its_instances_by_state(stack):
    _, _, manager_metrics, _ = stack
    samples = scrape(manager_metrics)
    counts = {state: value(samples, "kiln_runtime_instances", **VERSION, state=state)
              for state in ("starting", "serving", "stopping")}
    assert counts == {"starting": 0, "serving": 1, "stopping": 0}


def test_the_manager_reports_its_instances_memory(stack):
    _, _, manager_metrics, instances_dir = stack
    instances = json.loads((instances_dir / "instances.json").read_text())
    assert len(instances) == 1
    # Read here from the kernel: the instance's cgroup's usage (what its memory limit holds) where it has one,
    # else its processes' resident set.
    group = instances[0]["cgroup"]
    if group is not None:
        path = pathlib.Path(group)
        v2 = (path / "memory.current").exists()
        own = InstanceGroup(path, v2).current_bytes() or 0
    else:
        own = resident_bytes(instances[0]["pid"])
    reported = value(scrape(manager_metrics), "kiln_runtime_instance_memory_bytes", **VERSION)
    assert own > 5 << 20
    assert 0.8 * own <= reported <= 1.25 * own  # the same memory read a moment apart


def test_the_manager_counts_the_requests_its_instances_served(stack):
    router, _, manager_metrics, _ = stack
    name = "kiln_runtime_requests_served_total"
    # The count arrives with heartbeats: wait until the earlier tests' requests are all counted (none is running).
    last: list[float] = []

    def settled() -> bool:
        last.append(value(scrape(manager_metrics), name, **VERSION))
        return len(last) > 15 and last[-1] == last[-15]  # unchanged over 1.5 s: more than one heartbeat
    wait_for(settled, 60)
    before = last[-1]
    for _ in range(20):
        assert get(router)[0] == 200
    wait_for(lambda: value(scrape(manager_metrics), name, **VERSION) >= before + 20, 30)
    assert value(scrape(manager_metrics), name, **VERSION) == before + 20


# ------------------------------------------------------------------ kiln dev --metrics-port

# The metric families each part's page carries (a labelled metric is listed before its first sample).
FAMILIES = {"router": "kiln_router_requests", "manager": "kiln_runtime_instances"}


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    from deploy.dev import DevOptions, DevServer
    root = tmp_path_factory.mktemp("dev-metrics")
    app_dir = root / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(MAIN)
    srv = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=root / "data", metrics_port=0))
    srv.start()
    yield srv
    srv.stop()


def test_kiln_dev_with_metrics_port_gives_every_part_a_metrics_page(dev):
    from deploy.dev import METRICS_PARTS
    assert set(dev.metrics_addresses) == set(METRICS_PARTS)
    for part, address in dev.metrics_addresses.items():
        names = {family.name for family in text_string_to_metric_families(
            urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode())}
        assert FAMILIES.get(part, "kiln_grpc_requests") in names, part


def test_kiln_dev_router_metrics_count_the_app_s_requests(dev):
    router = dev.url.removeprefix("http://").rstrip("/")
    before = scrape(dev.metrics_addresses["router"])
    assert get(router, host="localhost")[0] == 200
    after = scrape(dev.metrics_addresses["router"])
    labels = {"app": dev.app_id, "version": dev.version_id, "status_class": "2xx"}
    assert value(after, "kiln_router_requests_total", **labels) - value(before, "kiln_router_requests_total",
                                                                        **labels) == 1
