"""``kiln taskqueue list|purge|pause|resume --app APP`` against a control plane and two taskqueue_svc replicas serving a
deployed app's queue.yaml: list shows each queue's rate, state, waiting tasks, tasks in flight and oldest ETA; pause
and resume hold on both replicas; purge empties a queue; a missing or wrong credential, an unknown queue and a pull
queue are refused with one line."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import uuid

import grpc
import pytest

from deploy import cli, upload
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth as app_auth
from kiln_platform.supervisor import free_port, python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, service_env
from tests.integration.test_control_plane import start_control, token, write_app

pytestmark = pytest.mark.nats

QUEUE_YAML = """\
queue:
- name: mail
  rate: 2/s
  bucket_size: 3
  max_concurrent_requests: 4
- name: reports
  rate: 30/h
- name: frozen
  rate: 0
- name: pulled
  mode: pull
"""


@pytest.fixture(scope="module")
def ports():
    """The two taskqueue_svc replicas' ports, chosen first: the control planes are told them before they start."""
    return [free_port(), free_port()]


@pytest.fixture(scope="module")
def control(supervisor, tmp_path_factory, nats_url, ports):
    """The control plane deploys go to; developers' calls to the first replica go through it."""
    return start_control(supervisor, tmp_path_factory, nats_url, "control-taskqueue-cli",
                         "--taskqueue-addr", f"127.0.0.1:{ports[0]}")


@pytest.fixture(scope="module")
def gateways(supervisor, tmp_path_factory, nats_url, control, ports):
    """For each replica, a control plane whose gateway forwards to it: the first is ``control``, the second one of
    its own (a gateway needs no store of its own: it checks the deploy token and forwards)."""
    return [control, start_control(supervisor, tmp_path_factory, nats_url, "control-taskqueue-cli-2",
                                   "--taskqueue-addr", f"127.0.0.1:{ports[1]}")]


@pytest.fixture(scope="module")
def replicas(supervisor, nats_url, control, ports):
    """Two taskqueue_svc replicas following the control plane (tasks go to a router that is not there: the tests
    use tasks that are not due)."""
    out = []
    for n, port in enumerate(ports, 1):
        ready = supervisor.run_dir / f"taskqueue-cli-{n}.addr"
        env = {**service_env(), "KILN_TASKQUEUE_SERVICE_SECRET": SECRET, "KILN_TASKQUEUE_PLATFORM_SECRET": "p" * 32,
               "KILN_TASKQUEUE_CONTROL_TOKEN": token("*", "read", "taskqueue")}
        out.append(supervisor.start(f"taskqueue-cli-{n}", python_module(
            "taskqueue_svc", "--listen", f"127.0.0.1:{port}", "--ready-file", str(ready), "--nats-url", nats_url,
            "--control-plane", control, "--router-url", "http://127.0.0.1:9", "--apps-domain", "apps.test"),
            env=env, ready_file=ready).address)
    return out


@pytest.fixture
def app_id(control, replicas, gateways, tmp_path):
    app_id = f"tqcli-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(control) as channel:
        upload.deploy(channel, token(app_id), write_app(tmp_path / "app", {"queue.yaml": QUEUE_YAML}), app_id, "v1",
                      promote=True, host_check=False)
    for gateway in gateways:
        wait_for(lambda: "mail" in [q["queue"] for q in listed(gateway, app_id)], 30)
    return app_id


def kiln(gateway: str, app_id: str, *args: str, tok: str | None = None) -> int:
    """``kiln taskqueue`` with only a control plane's address and the app's deploy token."""
    return cli.main(["taskqueue", *args, "--app", app_id, "--control-plane", gateway,
                     "--token", token(app_id) if tok is None else tok])


def listed(gateway: str, app_id: str) -> list[dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert kiln(gateway, app_id, "list", "--json") == 0
    return json.loads(out.getvalue())


def add(address: str, app_id: str, queue: str, *countdowns: float) -> None:
    with grpc.insecure_channel(address) as channel:
        taskqueue_pb2_grpc.TaskQueueServiceStub(channel).Add(
            pb.AddRequest(tasks=[pb.Task(queue=queue, url="/later", countdown_seconds=c) for c in countdowns]),
            metadata=(("authorization", f"Bearer {app_auth.mint_app_token(SECRET, app_id)}"),), timeout=30)


def by_queue(rows: list[dict]) -> dict[str, dict]:
    return {row["queue"]: row for row in rows}


def test_list_shows_each_queues_rate_state_tasks_in_flight_and_oldest_eta(replicas, gateways, app_id):
    now = datetime.datetime.now(datetime.timezone.utc)
    add(replicas[0], app_id, "mail", 7200, 3600, 5400)
    rows = by_queue(listed(gateways[1], app_id))
    assert list(rows) == ["default", "frozen", "mail", "pulled", "reports"]
    mail = rows["mail"]
    assert (mail["state"], mail["rate"], mail["bucket_size"], mail["max_concurrent_requests"], mail["tasks"],
            mail["in_flight"]) == ("running", "2/s", 3, 4, 3, 0)
    oldest = datetime.datetime.strptime(mail["oldest_eta"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    assert abs((oldest - now).total_seconds() - 3600) < 60
    assert (rows["default"]["rate"], rows["default"]["tasks"], rows["default"]["oldest_eta"]) == ("5/s", 0, None)
    assert rows["reports"]["rate"] == "30/h"
    assert rows["frozen"]["state"] == "paused (rate 0 in queue.yaml)"
    assert rows["pulled"]["state"] == "pull"


def test_list_prints_a_table_with_a_line_per_queue(replicas, gateways, app_id, capsys):
    capsys.readouterr()
    assert kiln(gateways[0], app_id, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["QUEUE", "STATE", "RATE"] and "OLDEST ETA (UTC)" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["default", "frozen", "mail", "pulled", "reports"]


def test_pause_on_one_replica_shows_on_the_other_and_resume_undoes_it(replicas, gateways, app_id, capsys):
    assert kiln(gateways[0], app_id, "pause", "mail") == 0
    assert f"queue mail of {app_id}: paused" in capsys.readouterr().out
    assert by_queue(listed(gateways[1], app_id))["mail"]["state"] == "paused"
    assert by_queue(listed(gateways[0], app_id))["reports"]["state"] == "running"
    assert kiln(gateways[1], app_id, "resume", "mail") == 0
    assert all(by_queue(listed(g, app_id))["mail"]["state"] == "running" for g in gateways)


def test_purge_drops_the_waiting_tasks_of_one_queue(replicas, gateways, app_id):
    add(replicas[0], app_id, "mail", 3600, 3600)
    add(replicas[0], app_id, "reports", 3600)
    assert kiln(gateways[1], app_id, "purge", "mail") == 0
    wait_for(lambda: by_queue(listed(gateways[0], app_id))["mail"]["tasks"] == 0, 30)
    assert by_queue(listed(gateways[0], app_id))["reports"]["tasks"] == 1


@pytest.mark.parametrize("args, message", [
    (("pause", "nosuch"), "nosuch"),
    (("purge", "nosuch"), "nosuch"),
    (("pause", "pulled"), "pull queue"),
    (("resume", "bad name!"), "queue name"),
])
def test_a_queue_that_cannot_be_acted_on_is_refused_on_one_line(replicas, gateways, app_id, capsys, args, message):
    capsys.readouterr()
    assert kiln(gateways[0], app_id, *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kiln taskqueue {args[0]}: ") and message in err[0]


@pytest.mark.parametrize("tok, status", [("", 2), ("not-a-token", 1), (None, 1)])
def test_without_the_apps_deploy_token_nothing_is_listed_or_paused(replicas, gateways, app_id, capsys, tok, status):
    other = token(f"other-{uuid.uuid4().hex[:6]}") if tok is None else tok  # a real token, for another app
    capsys.readouterr()
    assert kiln(gateways[0], app_id, "pause", "mail", tok=other) == status
    assert kiln(gateways[0], app_id, "list", tok=other) == status
    assert "kiln taskqueue" in capsys.readouterr().err
    assert by_queue(listed(gateways[0], app_id))["mail"]["state"] == "running"
