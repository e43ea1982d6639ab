"""Push queues across three taskqueue_svc replicas (kiln dev's and two more on the same NATS and router): a queue's rate
and max_concurrent_requests hold for the sum of the replicas, a replica killed (SIGKILL) mid-delivery loses no task
and its in-flight work is taken over, with duplicate runs bounded by what it had in flight; pause and resume hold on
every replica."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import textwrap

import grpc
import nats
import pytest

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from kiln_platform.supervisor import Supervisor, python_module
from taskqueue_svc import shared
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

LEASE_SECONDS = 3  # every replica's: a dead replica's tasks are redelivered, and its slots freed, after this
SLOW_LIMIT = 6

APP_YAML = textwrap.dedent("""\
    application: tqrep
    runtime: python27
    api_version: 1
    threadsafe: true
    handlers:
    - url: /work/.*
      script: main.app
      login: admin
    - url: /.*
      script: main.app
""")

QUEUE_YAML = textwrap.dedent(f"""\
    queue:
    - name: slow
      rate: 100/s
      bucket_size: 20
      max_concurrent_requests: {SLOW_LIMIT}
    - name: rated
      rate: 5/s
      bucket_size: 5
    - name: switch
      rate: 50/s
""")

MAIN = textwrap.dedent('''
    import json, time
    from kiln.api import memcache

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        name = environ.get("HTTP_X_APPENGINE_TASKNAME", "")
        body = b""
        if path == "/work/slow":
            memcache.incr("ran-" + name, initial_value=0)
            running = memcache.incr("running", initial_value=0)
            memcache.set("together-%d" % running, 1)
            time.sleep(1.0)
            memcache.decr("running")
        elif path == "/work/long":
            memcache.incr("ran-" + name, initial_value=0)
            time.sleep(float(environ["QUERY_STRING"]))
        elif path.startswith("/work/"):
            memcache.incr("ran-" + name, initial_value=0)
            memcache.set("at-" + name, time.time())
        elif path == "/get":
            keys = environ["QUERY_STRING"].split(",")
            body = json.dumps(memcache.get_multi(keys)).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("tqrep")
    (app_dir / "queue.yaml").write_text(QUEUE_YAML)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KILN_TASKQUEUE_LEASE_SECONDS", str(LEASE_SECONDS))  # kiln dev's taskqueue_svc reads it too
        with running(app_dir, {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
            yield srv


@pytest.fixture
def replicas(server, tmp_path):
    """Two more taskqueue_svc replicas of kiln dev's: same NATS, router, queue.yaml and secrets. Yields the
    supervisor's children: kiln dev's replica first."""
    sup = Supervisor(tmp_path / "run")
    secrets = {"KILN_TASKQUEUE_SERVICE_SECRET": server._secret, "KILN_TASKQUEUE_NATS_URL": server.nats_url,
               "KILN_TASKQUEUE_PLATFORM_SECRET": server.secrets["platform"]}
    extra = []
    for n in (2, 3):
        ready = sup.run_dir / f"taskqueue-{n}.addr"
        extra.append(sup.start(f"taskqueue-{n}", python_module(
            "taskqueue_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
            "--queue-yaml", f"{server.app_id}={server.opts.app_dir / 'queue.yaml'}",
            "--router-url", f"http://{server.addresses['router']}", "--apps-domain", "localhost",
            "--lease-seconds", str(LEASE_SECONDS)), secrets=secrets, ready_file=ready))
    yield [server.supervisor.children[[c.name for c in server.supervisor.children].index("taskqueue_svc")], *extra]
    sup.stop_all()


def call(server, address: str, method: str, request):
    """One TaskQueueService call to the replica at ``address``, as the app."""
    with grpc.insecure_channel(address) as channel:
        return getattr(taskqueue_pb2_grpc.TaskQueueServiceStub(channel), method)(
            request, metadata=(("authorization", f"Bearer {auth.mint_app_token(server._secret, server.app_id)}"),),
            timeout=30)


def add(server, queue: str, names: list[str], url: str) -> None:
    for start in range(0, len(names), 100):
        call(server, server.addresses["taskqueue_svc"], "Add", pb.AddRequest(
            tasks=[pb.Task(queue=queue, name=n, url=url) for n in names[start:start + 100]]))


def app_values(server, keys: list[str]) -> dict:
    out = {}
    for start in range(0, len(keys), 100):
        out.update(json.loads(apps.fetch(server, "/get?" + ",".join(keys[start:start + 100]))[2] or b"{}"))
    return out


def stats(server, address: str, queue: str) -> pb.QueueStats:
    return call(server, address, "QueueStats", pb.QueueStatsRequest(queues=[queue])).queues[0]


def waiting(server, queue: str) -> int:
    return stats(server, server.addresses["taskqueue_svc"], queue).tasks


def leases(server, queue: str) -> pb.SlotLeases:
    async def read() -> pb.SlotLeases:
        nc = await nats.connect(server.nats_url)
        try:
            value = (await (await nc.jetstream().key_value(shared.BUCKET)).get(
                shared.slots_key(server.app_id, queue))).value
        finally:
            await nc.close()
        return pb.SlotLeases.FromString(value or b"")
    return asyncio.run(read())


def held_by(found: pb.SlotLeases, pid: int) -> int:
    prefix = f"{socket.gethostname()}-{pid}-"
    return sum(lease.held for replica, lease in found.replicas.items() if replica.startswith(prefix))


def sent_by(child, queue: str) -> int:
    """Task requests a replica sent for ``queue`` (its log has one line per answered attempt)."""
    return child.log_path.read_text(errors="replace").count(f"taskqueue tqrep/{queue}: task ")


def test_a_replica_killed_mid_delivery_loses_no_task_and_only_its_in_flight_tasks_run_twice(server, replicas):
    names = [f"s-{i}" for i in range(60)]
    add(server, "slow", names, "/work/slow")
    victim = replicas[2]
    apps.wait_for(lambda: held_by(leases(server, "slow"), victim.proc.pid) > 0, 30)
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    in_flight = held_by(leases(server, "slow"), victim.proc.pid)  # a dead replica's lease stays until it expires
    assert 1 <= in_flight <= SLOW_LIMIT

    def runs() -> dict:
        return app_values(server, [f"ran-{n}" for n in names])

    apps.wait_for(lambda: len(runs()) == len(names) and waiting(server, "slow") == 0, 120)
    counts = runs()
    assert all(counts[f"ran-{n}"] >= 1 for n in names)
    duplicates = sum(count - 1 for count in counts.values())
    assert duplicates <= in_flight
    # The replicas together never ran more than max_concurrent_requests at once, the dead one's included.
    together = app_values(server, [f"together-{n}" for n in range(1, 2 * SLOW_LIMIT)])
    assert max(int(key.split("-")[1]) for key in together) <= SLOW_LIMIT
    assert sent_by(replicas[0], "slow") + sent_by(replicas[1], "slow") > 0


def test_a_queue_at_5_per_second_delivers_300_a_minute_across_three_replicas(server, replicas):
    names = [f"r-{i}" for i in range(420)]
    add(server, "rated", names, "/work/rated")
    keys = [f"at-{n}" for n in names]
    first: list[float] = []

    def minute_passed() -> bool:
        times = sorted(app_values(server, keys).values())
        first[:] = times[:1]
        return bool(times) and times[-1] >= times[0] + 60

    apps.wait_for(minute_passed, 120)
    times = sorted(app_values(server, keys).values())
    in_minute = sum(1 for t in times if t < first[0] + 60)
    print(f"delivered in the first minute: {in_minute}")
    assert abs(in_minute - 300) <= 30, in_minute  # 5/s for 60 s (plus the 5 of the full bucket at the start)
    assert all(sent_by(child, "rated") > 0 for child in replicas)  # every replica sent some: the rate is shared
    call(server, server.addresses["taskqueue_svc"], "Purge", pb.PurgeRequest(queue="rated"))


def test_a_queue_paused_on_one_replica_is_paused_on_all_and_resumed_from_another(server, replicas):
    addresses = [child.address for child in replicas]
    call(server, addresses[1], "Pause", pb.PauseRequest(queue="switch"))
    names = [f"w-{i}" for i in range(20)]
    add(server, "switch", names, "/work/switch")
    add(server, "rated", ["after-pause"], "/work/rated")  # another queue still flows meanwhile
    apps.wait_for(lambda: app_values(server, ["ran-after-pause"]), 30)
    assert [(s.paused, s.tasks) for s in (stats(server, a, "switch") for a in addresses)] == [(True, 20)] * 3
    assert app_values(server, [f"ran-{n}" for n in names]) == {}
    call(server, addresses[2], "Resume", pb.ResumeRequest(queue="switch"))
    apps.wait_for(lambda: len(app_values(server, [f"ran-{n}" for n in names])) == 20, 60)
    assert not any(stats(server, a, "switch").paused for a in addresses)


def test_a_task_running_several_leases_long_is_kept_by_its_replica_and_runs_once(server, replicas):
    # JetStream would hand the task to another replica after one lease without the replica's in-progress acks.
    add(server, "switch", ["long-1", "long-2"], f"/work/long?{LEASE_SECONDS * 2.5}")
    apps.wait_for(lambda: waiting(server, "switch") == 0, 60)
    assert app_values(server, ["ran-long-1", "ran-long-2"]) == {"ran-long-1": 1, "ran-long-2": 1}


def test_every_replica_reports_the_tasks_in_flight_on_all_of_them_and_zero_once_done(server, replicas):
    addresses = [child.address for child in replicas]
    add(server, "slow", [f"f-{i}" for i in range(24)], "/work/slow")
    seen: list[list[int]] = []

    def all_see_several() -> bool:
        seen.append([stats(server, a, "slow").in_flight for a in addresses])
        return min(seen[-1]) >= 2

    apps.wait_for(all_see_several, 30)
    assert max(max(row) for row in seen) <= SLOW_LIMIT
    apps.wait_for(lambda: waiting(server, "slow") == 0, 60)
    apps.wait_for(lambda: all(stats(server, a, "slow").in_flight == 0 for a in addresses), 10)
