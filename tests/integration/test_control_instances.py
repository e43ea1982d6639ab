"""The control plane's ListInstances and StopInstance on a real nats-server, with a real instance manager running
a version: the instances are listed from their heartbeats (memory, start time), and a stop reaches the manager,
which stops the instance and starts another (the version keeps its one instance)."""

from __future__ import annotations

import http.client
import json

import grpc
import pytest

from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration import apps
from tests.integration.conftest import service_env
from tests.integration.test_control_plane import auth, code_of, start_control, start_one_instance_manager, token

pytestmark = pytest.mark.nats

APP = "listed"


@pytest.fixture(scope="module")
def control(supervisor, tmp_path_factory, nats_url):
    return start_control(supervisor, tmp_path_factory, nats_url, "control-instances")


@pytest.fixture(scope="module")
def router(supervisor, nats_url):
    ready = supervisor.run_dir / "router-listed.addr"
    return supervisor.start("router-listed", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", f"{APP}=v1", "--ready-file", str(ready)), env=service_env(), ready_file=ready).address


@pytest.fixture(scope="module")
def manager_state(supervisor, tmp_path_factory, nats_url, control):
    """A manager keeping one instance of listed/v1; the file where it records its instances."""
    return start_one_instance_manager(supervisor, tmp_path_factory, nats_url, APP, "listed")


@pytest.fixture
def stub(control):
    with grpc.insecure_channel(control) as channel:
        yield deploy_pb2_grpc.DeployServiceStub(channel)


def running(state_file) -> set[str]:
    return {i["instance_id"] for i in json.loads(state_file.read_text()) if i["ready"]}


def listed(stub) -> list[pb.Instance]:
    return list(stub.ListInstances(pb.ListInstancesRequest(app_id=APP), metadata=auth(token(APP))).instances)


def test_a_running_instance_is_listed_with_its_memory_and_start_time(stub, manager_state):
    apps.wait_for(lambda: len(running(manager_state)) == 1, 60)
    [instance_id] = running(manager_state)
    apps.wait_for(lambda: [i.instance_id for i in listed(stub)] == [instance_id], 30)
    [instance] = listed(stub)
    assert (instance.version_id, instance.deployment_id, instance.stopping) == ("v1", "v1.1", False)
    assert instance.memory_bytes > 1 << 20 and instance.started_at.seconds > 0


def test_an_instance_reports_the_requests_it_served_and_their_average_latency(stub, manager_state, router):
    apps.wait_for(lambda: len(running(manager_state)) == 1, 60)
    for _ in range(3):
        assert get(router) == 200
    apps.wait_for(lambda: [i.requests_served for i in listed(stub) if not i.stopping] == [3], 30)
    [instance] = [i for i in listed(stub) if not i.stopping]
    assert instance.average_latency_ms > 0


def get(address: str) -> int:
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.request("GET", "/", headers={"Host": f"{APP}.example.test"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_stopping_an_instance_stops_it_at_its_manager_which_starts_another(stub, manager_state):
    apps.wait_for(lambda: len(running(manager_state)) == 1, 60)
    [victim] = running(manager_state)
    apps.wait_for(lambda: victim in {i.instance_id for i in listed(stub)}, 30)
    stub.StopInstance(pb.StopInstanceRequest(app_id=APP, instance_id=victim), metadata=auth(token(APP)))
    assert [i.stopping for i in listed(stub) if i.instance_id == victim] in ([True], [])
    apps.wait_for(lambda: running(manager_state) and victim not in running(manager_state), 60)
    apps.wait_for(lambda: len(running(manager_state)) == 1, 60)  # its replacement


def test_stopping_an_instance_the_app_does_not_have_is_not_found(stub):
    code, details = code_of(lambda: stub.StopInstance(pb.StopInstanceRequest(app_id=APP, instance_id="f" * 32),
                                                      metadata=auth(token(APP))))
    assert code == grpc.StatusCode.NOT_FOUND and "no running instance" in details


def test_instances_are_an_admins_to_list_and_stop(stub):
    read = auth(token(APP, scope="read"))
    other = auth(token("another"))
    for call in (lambda: stub.ListInstances(pb.ListInstancesRequest(app_id=APP), metadata=read),
                 lambda: stub.StopInstance(pb.StopInstanceRequest(app_id=APP, instance_id="f" * 32), metadata=read),
                 lambda: stub.ListInstances(pb.ListInstancesRequest(app_id=APP), metadata=other)):
        code, _ = code_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
