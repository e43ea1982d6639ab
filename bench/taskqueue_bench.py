"""Task queue benchmark: push tasks delivered per second through ``taskqueue_svc`` → router → an app that answers 200
at once, against a baseline of the same number of POSTs sent by one asyncio loop straight to the router; and the
lateness of countdown tasks (delivered minus scheduled time).

In one run on one machine, under ``kiln dev`` (real nats-server, router, runtime instances, taskqueue_svc):

- throughput: ``--tasks`` tasks are added to a paused queue (rate 500/s and bucket 500, App Engine's highest;
  no ``max_concurrent_requests``, so each replica sends up to 100 at once), then the queue is resumed; the time
  from resume until the queue is empty (every task answered and acknowledged) gives tasks per second;
- baseline: the same number of POSTs to the same app through the router from one asyncio loop (100 at once over
  one aiohttp session): what the router and the app do without the task queue;
- lateness: ``--late`` tasks with countdowns spread over ``--spread`` seconds (well under the queue's rate); the
  app notes, for each, its arrival time minus the ETA the task queue sent with it (``X-AppEngine-TaskETA``);
- the cost of the shared state: the time of one compare-and-set take from the shared token bucket in NATS KV.

Usage::

    .venv/bin/python bench/taskqueue_bench.py [--tasks 3000] [--late 1000] [--spread 10] [--replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import textwrap
import time
import urllib.request
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import nats  # noqa: E402

from deploy.dev import DevOptions, DevServer  # noqa: E402
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb  # noqa: E402
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc  # noqa: E402
from kiln_platform import auth  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402
from taskqueue_svc.shared import SharedQueues  # noqa: E402

APP_YAML = "application: tqbench\nruntime: python27\napi_version: 1\nthreadsafe: true\n" \
           "handlers:\n- url: /.*\n  script: main.app\n"
QUEUE_YAML = "queue:\n- name: bench\n  rate: 500/s\n  bucket_size: 500\n- name: late\n  rate: 500/s\n" \
             "  bucket_size: 500\n"
MAIN = textwrap.dedent('''
    import json, time
    from kiln.api import memcache

    def app(environ, start_response):
        path, body = environ["PATH_INFO"], b""
        if path == "/late":
            eta = float(environ["HTTP_X_APPENGINE_TASKETA"])
            memcache.set("late-" + environ["HTTP_X_APPENGINE_TASKNAME"], time.time() - eta)
        elif path == "/get":
            body = json.dumps(memcache.get_multi(environ["QUERY_STRING"].split(","))).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
''')


class Client:
    """TaskQueueService calls as the app."""

    def __init__(self, server: DevServer) -> None:
        self._channel = grpc.insecure_channel(server.addresses["taskqueue_svc"])
        self._stub = taskqueue_pb2_grpc.TaskQueueServiceStub(self._channel)
        self._md = (("authorization", f"Bearer {auth.mint_app_token(server._secret, server.app_id)}"),)

    def __call__(self, method: str, request: object) -> Any:
        return getattr(self._stub, method)(request, metadata=self._md, timeout=60)

    def add(self, tasks: list[pb.Task]) -> None:
        for start in range(0, len(tasks), 100):
            self("Add", pb.AddRequest(tasks=tasks[start:start + 100]))

    def waiting(self, queue: str) -> int:
        return int(self("QueueStats", pb.QueueStatsRequest(queues=[queue])).queues[0].tasks)


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(client: Client, tasks: int, pids: list[int]) -> tuple[float, float]:
    """Tasks per second, and taskqueue_svc CPU seconds per task (every replica's)."""
    client("Pause", pb.PauseRequest(queue="bench"))
    client.add([pb.Task(queue="bench", url="/fast", payload=b"x") for _ in range(tasks)])
    while client.waiting("bench") != tasks:
        time.sleep(0.05)
    cpu = sum(cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    client("Resume", pb.ResumeRequest(queue="bench"))
    while client.waiting("bench"):
        time.sleep(0.02)
    return tasks / (time.perf_counter() - started), (sum(cpu_seconds(pid) for pid in pids) - cpu) / tasks


async def baseline(router: str, tasks: int, concurrency: int = 100) -> float:
    host = router.rpartition(":")[2]
    pending = iter(range(tasks))

    async def worker(http: aiohttp.ClientSession) -> None:
        for _ in pending:
            async with http.post(f"http://{router}/fast", data=b"x", headers={"Host": f"localhost:{host}"}) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return tasks / (time.perf_counter() - started)


def lateness(server: DevServer, client: Client, count: int, spread: float) -> list[float]:
    names = [f"late-{i}" for i in range(count)]
    client.add([pb.Task(queue="late", name=n, url="/late", countdown_seconds=2 + spread * i / count)
                for i, n in enumerate(names)])
    deadline = time.monotonic() + spread + 120
    while client.waiting("late") and time.monotonic() < deadline:
        time.sleep(0.2)
    found: dict[str, float] = {}
    router = server.addresses["router"]
    for start in range(0, count, 100):
        keys = ",".join(f"late-{n}" for n in names[start:start + 100])
        found.update(json.loads(get(router, f"/get?{keys}")))
    return sorted(found.values())


def get(router: str, path: str) -> bytes:
    req = urllib.request.Request(f"http://{router}{path}", headers={"Host": f"localhost:{router.rpartition(':')[2]}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return bytes(resp.read())


async def kv_take_cost(nats_url: str, takes: int = 500) -> float:
    """Seconds per compare-and-set take of one token from a shared bucket (no contention)."""
    nc = await nats.connect(nats_url)
    try:
        shared = SharedQueues(nc.jetstream(), "bench", clock=time.time)
        await shared.open()
        started = time.perf_counter()
        for _ in range(takes):
            await shared.take_tokens("tqbench", "cost", 1e9, 500, 1)
        return (time.perf_counter() - started) / takes
    finally:
        await nc.close()


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--late", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=10.0)
    parser.add_argument("--replicas", type=int, default=1, help="taskqueue_svc replicas (kiln dev's and more)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-taskqueue-bench-") as tmp:
        app_dir = pathlib.Path(tmp) / "app"
        app_dir.mkdir()
        for name, text in {"app.yaml": APP_YAML, "queue.yaml": QUEUE_YAML, "main.py": MAIN}.items():
            (app_dir / name).write_text(text)
        server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data"))
        server.start()
        extra = Supervisor(pathlib.Path(tmp) / "run")
        try:
            for n in range(1, args.replicas):
                ready = extra.run_dir / f"taskqueue-{n}.addr"
                extra.start(f"taskqueue-{n}", python_module(
                    "taskqueue_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                    "--queue-yaml", f"{server.app_id}={app_dir / 'queue.yaml'}",
                    "--router-url", f"http://{server.addresses['router']}", "--apps-domain", "localhost"),
                    secrets={"KILN_TASKQUEUE_SERVICE_SECRET": server._secret,
                             "KILN_TASKQUEUE_NATS_URL": server.nats_url,
                             "KILN_TASKQUEUE_PLATFORM_SECRET": server.secrets["platform"]}, ready_file=ready)
            client = Client(server)
            asyncio.run(baseline(server.addresses["router"], 200))  # warm: instances started
            base = asyncio.run(baseline(server.addresses["router"], args.tasks))
            pids = [c.proc.pid for c in [*server.supervisor.children, *extra.children] if "taskqueue" in c.name]
            kiln, cpu = throughput(client, args.tasks, pids)
            late = lateness(server, client, args.late, args.spread)
            cost = asyncio.run(kv_take_cost(server.nats_url))
        finally:
            extra.stop_all()
            server.stop()
    print(f"push tasks through taskqueue_svc ({args.replicas} replica(s)) -> router -> app: {kiln:7.0f} tasks/s "
          f"({args.tasks} tasks, queue at 500/s, bucket 500)")
    print(f"baseline, POSTs from one asyncio loop to the router:          {base:7.0f} requests/s")
    print(f"ratio kiln/baseline: {kiln / base:.2f}; taskqueue_svc CPU per task {cpu * 1000:.2f} ms")
    print(f"countdown lateness over {len(late)} tasks (of {args.late}): p50 {pct(late, 0.5) * 1000:.0f} ms, "
          f"p99 {pct(late, 0.99) * 1000:.0f} ms, max {late[-1] * 1000:.0f} ms")
    print(f"shared token bucket: one compare-and-set take {cost * 1e6:.0f} us")


if __name__ == "__main__":
    main()
