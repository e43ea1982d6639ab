"""queue.yaml with ``kiln deploy``: the control plane refuses an invalid one naming its line, and taskqueue_svc
(``--control-plane``) serves each app the queues of its default version's queue.yaml, following default changes."""

from __future__ import annotations

import uuid

import grpc
import pytest

from deploy import upload
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth as app_auth
from kiln_platform.supervisor import python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, service_env
from tests.integration.test_control_plane import start_control, token, write_app

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def control(supervisor, tmp_path_factory, nats_url):
    return start_control(supervisor, tmp_path_factory, nats_url, "control-taskqueue")


@pytest.fixture(scope="module")
def taskqueue_addr(supervisor, nats_url, control):
    ready = supervisor.run_dir / "taskqueue-deployed.addr"
    env = {**service_env(), "KILN_TASKQUEUE_SERVICE_SECRET": SECRET, "KILN_TASKQUEUE_PLATFORM_SECRET": "p" * 32,
           "KILN_TASKQUEUE_CONTROL_TOKEN": token("*", "read", "taskqueue")}
    child = supervisor.start("taskqueue-deployed", python_module(
        "taskqueue_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", nats_url,
        "--control-plane", control, "--resync-seconds", "30", "--router-url", "http://127.0.0.1:9",
        "--apps-domain", "apps.test"), env=env, ready_file=ready)
    return child.address


def queues_of(address: str, app_id: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stats = taskqueue_pb2_grpc.TaskQueueServiceStub(channel).QueueStats(
            pb.QueueStatsRequest(), metadata=(("authorization", f"Bearer {app_auth.mint_app_token(SECRET, app_id)}"),),
            timeout=30)
    return [q.queue for q in stats.queues]


def test_an_invalid_queue_yaml_is_refused_at_deploy_naming_its_line(control, tmp_path):
    app_id = f"tq-{uuid.uuid4().hex[:8]}"
    app = write_app(tmp_path / "app", {"queue.yaml": "queue:\n- name: mail\n  rate: 5/fortnight\n"})
    with grpc.insecure_channel(control) as channel, pytest.raises(grpc.RpcError) as info:
        upload.deploy(channel, token(app_id), app, app_id, "v1", promote=True, host_check=False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "queue.yaml:3" in info.value.details() and "rate" in info.value.details()


def test_the_default_versions_queue_yaml_gives_the_apps_queues(control, taskqueue_addr, tmp_path):
    app_id = f"tq-{uuid.uuid4().hex[:8]}"
    first = write_app(tmp_path / "v1", {"queue.yaml": "queue:\n- name: mail\n  rate: 2/s\n"})
    second = write_app(tmp_path / "v2", {"queue.yaml": "queue:\n- name: reports\n  rate: 1/m\n"})
    with grpc.insecure_channel(control) as channel:
        upload.deploy(channel, token(app_id), first, app_id, "v1", promote=True, host_check=False)
        wait_for(lambda: queues_of(taskqueue_addr, app_id) == ["default", "mail"], 30)
        upload.deploy(channel, token(app_id), second, app_id, "v2", promote=False, host_check=False)
        assert queues_of(taskqueue_addr, app_id) == ["default", "mail"]  # v2 is not the default
        upload.deploy(channel, token(app_id), second, app_id, "v2", promote=True, host_check=False)
    wait_for(lambda: queues_of(taskqueue_addr, app_id) == ["default", "reports"], 30)
