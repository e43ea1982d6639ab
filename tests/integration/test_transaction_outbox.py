"""The datastore's outbox of transactional tasks (``datastore_svc/outbox.py``) against real processes: a commit whose
tasks could not be added at once (taskqueue_svc not running) keeps them, and the datastore's sweep adds them once
the task queue is back, once each; a commit that failed on contention leaves nothing to add. On both engines."""

from __future__ import annotations

import grpc
import pytest

from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform.supervisor import free_port, python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, app_metadata, service_env

pytestmark = pytest.mark.nats

QUEUE_YAML = "queue:\n- name: held\n  rate: 0\n"  # paused: added tasks stay, and are counted


@pytest.fixture(scope="module", params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def setup(request, supervisor, tmp_path_factory):
    """An app of its own, and a datastore that adds committed tasks to a task queue (on a port of its own) that is
    not running yet, sweeping every 0.2 s."""
    taskqueue_port = free_port()
    ready = supervisor.run_dir / f"outbox-datastore-{request.param}.addr"
    storage = ["--data-dir", str(tmp_path_factory.mktemp("outbox-datastore"))]
    if request.param == "cassandra":
        storage = ["--storage", "cassandra", "--cassandra-hosts", request.getfixturevalue("cassandra_hosts"),
                   "--cassandra-keyspace", "kiln_outbox_test"]
    child = supervisor.start(f"outbox-datastore-{request.param}", python_module(
        "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), *storage,
        "--taskqueue", f"127.0.0.1:{taskqueue_port}", "--tasks-sweep-seconds", "0.2",
        "--tasks-sweep-after-seconds", "0.5"), env=service_env(), ready_file=ready, timeout=180)
    channel = grpc.insecure_channel(child.address)
    yield f"outbox-{request.param}", datastore_pb2_grpc.DatastoreServiceStub(channel), taskqueue_port
    channel.close()


def start_taskqueue(supervisor, tmp_path, nats_url, port, name, app):
    (tmp_path / "queue.yaml").write_text(QUEUE_YAML)
    env = {**service_env(), "KILN_TASKQUEUE_SERVICE_SECRET": SECRET, "KILN_TASKQUEUE_PLATFORM_SECRET": "p" * 32}
    ready = supervisor.run_dir / f"{name}.addr"
    return supervisor.start(name, python_module(
        "taskqueue_svc", "--listen", f"127.0.0.1:{port}", "--ready-file", str(ready), "--nats-url", nats_url,
        "--queue-yaml", f"{app}={tmp_path / 'queue.yaml'}", "--router-url", "http://127.0.0.1:9"),
        env=env, ready_file=ready)


def held_tasks(port: int, app: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stats = taskqueue_pb2_grpc.TaskQueueServiceStub(channel).QueueStats(
            pb.QueueStatsRequest(queues=["held"]), metadata=app_metadata(app))
    return stats.queues[0].tasks


def begin(datastore, meta) -> bytes:
    return datastore.BeginTransaction(dpb.BeginTransactionRequest(), metadata=meta).transaction


def key(name: str) -> dpb.Key:
    return dpb.Key(path=[dpb.PathElement(kind="Thing", name=name)])


def test_tasks_of_a_commit_made_while_the_task_queue_was_down_are_added_by_the_sweep_once(
        setup, supervisor, tmp_path, nats_url):
    app, datastore, taskqueue_port = setup
    meta = app_metadata(app)
    tag = "t"
    # Contention: this transaction read the group, then another commit changed it; its tasks must never be added.
    lost = begin(datastore, meta)
    datastore.Get(dpb.GetRequest(keys=[key(tag)], read_options=dpb.ReadOptions(transaction=lost)), metadata=meta)
    datastore.Commit(dpb.CommitRequest(transaction=begin(datastore, meta),
                                       mutations=[dpb.Mutation(upsert=dpb.Entity(key=key(tag)))]), metadata=meta)
    with pytest.raises(grpc.RpcError) as caught:
        datastore.Commit(dpb.CommitRequest(transaction=lost, mutations=[dpb.Mutation(upsert=dpb.Entity(key=key(tag)))],
                                           tasks=[pb.Task(queue="held", url="/lost", name=f"{tag}-lost")]),
                         metadata=meta)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    # Committed while taskqueue_svc is not running: the commit succeeds, its tasks wait in the datastore.
    done = begin(datastore, meta)
    tasks = [pb.Task(queue="held", url=f"/work/{i}", name=f"{tag}-{i}") for i in range(3)]
    datastore.Commit(dpb.CommitRequest(transaction=done, mutations=[dpb.Mutation(upsert=dpb.Entity(key=key(tag)))],
                                       tasks=tasks), metadata=meta)
    start_taskqueue(supervisor, tmp_path, nats_url, taskqueue_port, f"taskqueue-{app}", app)
    wait_for(lambda: held_tasks(taskqueue_port, app) == 3, 60)
    # Added once: a later commit's tasks arrive after them, and the count is exactly theirs plus its own.
    datastore.Commit(dpb.CommitRequest(transaction=begin(datastore, meta), tasks=[pb.Task(queue="held", url="/later",
                                                                                    name=f"{tag}-later")]),
                     metadata=meta)
    wait_for(lambda: held_tasks(taskqueue_port, app) == 4, 60)
    with grpc.insecure_channel(f"127.0.0.1:{taskqueue_port}") as channel:
        deleted = taskqueue_pb2_grpc.TaskQueueServiceStub(channel).Delete(
            pb.DeleteRequest(queue="held", task_names=[f"{tag}-lost", f"{tag}-0", f"{tag}-later"]), metadata=meta)
    assert list(deleted.errors) == ["UNKNOWN_TASK", "", ""]
