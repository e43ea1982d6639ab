"""Wiring of taskqueue_svc: the apps' queues (queue.yaml), the task store on JetStream
(:mod:`taskqueue_svc.store`; pull tasks in :mod:`taskqueue_svc.pullstore`), a delivery loop per push queue
(:mod:`taskqueue_svc.delivery`) whose requests go through the router signed as the platform caller ``taskqueue``,
and the gRPC service."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import socket
import time

import aiohttp

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth, bus, grpcserver, httpfields, queueyaml
from kiln_platform.queueyaml import Queue
from taskqueue_svc.config import TaskQueueConfig
from taskqueue_svc.delivery import QueueRunner, QueueState
from taskqueue_svc.pullstore import PullStore
from taskqueue_svc.service import TaskQueueService
from taskqueue_svc.shared import SharedQueues
from taskqueue_svc.store import TaskStore

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TaskQueueService"].full_name


class RouterSender:
    """Sends one attempt of a push task through the router to its app and version, signed as ``taskqueue``, with
    App Engine's task headers (which the router passes on only with that signature)."""

    def __init__(self, cfg: TaskQueueConfig, session: aiohttp.ClientSession) -> None:
        self._router = cfg.router_url.rstrip("/")
        self._domain = cfg.apps_domain
        self._secret = cfg.platform_secret.get()
        self._timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_seconds)
        self._http = session

    def headers(self, task: pb.StoredTask, now: float) -> dict[str, str]:
        """The request's headers: the task's own, then the router's Host and the signed task headers."""
        host = f"{task.target}-dot-{task.app_id}.{self._domain}" if task.target else f"{task.app_id}.{self._domain}"
        out = {h.name: httpfields.text(h.value) for h in task.headers}
        eta = task.eta.ToDatetime(datetime.timezone.utc).timestamp()
        values = [task.queue, task.name, str(task.retry_count), str(task.execution_count), f"{eta:.6f}",
                  str(task.previous_response) if task.previous_response else ""]
        out.update({name: value for name, value in zip(auth.TASK_HEADERS, values) if value})
        out["Host"] = host
        out[auth.PLATFORM_HEADER] = "taskqueue"
        out[auth.PLATFORM_SIGNATURE_HEADER] = auth.sign_platform(
            self._secret, "taskqueue", task.method, host, task.url, now, auth.task_header_values(out))
        return out

    async def __call__(self, task: pb.StoredTask) -> int:
        started = time.time()
        try:
            async with self._http.request(task.method, self._router + task.url, headers=self.headers(task, started),
                                          data=task.payload if task.payload else None, allow_redirects=False,
                                          timeout=self._timeout, skip_auto_headers=("Content-Type",)) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("taskqueue %s/%s: task %s %s %s: no answer: %s", task.app_id, task.queue, task.name,
                        task.method, task.url, exc)
            return 0
        log.info("taskqueue %s/%s: task %s %s %s (retry %d): %d in %.0f ms", task.app_id, task.queue, task.name,
                 task.method, task.url, task.retry_count, status, (time.time() - started) * 1000)
        return status


class Queues:
    """Every app's queues and the delivery loops of its push queues."""

    def __init__(self, cfg: TaskQueueConfig, store: TaskStore, send: RouterSender, shared: SharedQueues) -> None:
        self._cfg = cfg
        self._store = store
        self._send = send
        self._shared = shared
        self._queues: dict[str, dict[str, Queue]] = {}
        self._runners: dict[tuple[str, str], tuple[QueueRunner, asyncio.Task[None]]] = {}

    def of(self, app_id: str) -> dict[str, Queue]:
        """``app_id``'s queues; an app not seen yet has the default queue (and its loop starts now)."""
        found = self._queues.get(app_id)
        if found is None:
            found = self._queues[app_id] = {queueyaml.DEFAULT_QUEUE: queueyaml.DEFAULT}
            self._start_missing(app_id)
        return found

    def running(self, app_id: str, queue: str) -> QueueState | None:
        found = self._runners.get((app_id, queue))
        return found[0].state if found else None

    async def set(self, app_id: str, parsed: queueyaml.QueueYaml) -> None:
        """Make ``app_id``'s queues those of ``parsed``: loops start for new or changed push queues, stop for
        removed ones (their tasks stay stored)."""
        self._queues[app_id] = parsed.queues
        for (app, name), (runner, _) in list(self._runners.items()):
            if app == app_id and parsed.queues.get(name) != runner.queue:
                await self._stop((app, name))
        self._start_missing(app_id)

    def _start_missing(self, app_id: str) -> None:
        for queue in self._queues[app_id].values():
            if queue.mode == "push" and (app_id, queue.name) not in self._runners:
                runner = QueueRunner(app_id, queue, self._store, self._send, self._shared,
                                     default_max_concurrent=self._cfg.default_max_concurrent)
                self._runners[(app_id, queue.name)] = (runner, asyncio.create_task(runner.run()))

    async def _stop(self, key: tuple[str, str]) -> None:
        runner, task = self._runners.pop(key)
        await runner.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        for key in list(self._runners):
            await self._stop(key)


async def serve(cfg: TaskQueueConfig) -> None:
    """Run the task queue service until SIGTERM."""
    files = {app: queueyaml.load(path) for app, path in cfg.queue_files().items()}  # malformed: stops here
    nc = await bus.connect(cfg.nats_url, name="taskqueue_svc")
    store = TaskStore(nc.jetstream(), replicas=cfg.stream_replicas)
    await store.open()
    # This process's name in the shared leases: unique per start, readable in `kiln taskqueue list --json`.
    replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    shared = SharedQueues(nc.jetstream(), replica, replicas=cfg.stream_replicas, lease_seconds=cfg.lease_seconds,
                          clock=time.time)
    await shared.open()
    pull = PullStore(store.js, store, replicas=cfg.stream_replicas)
    await pull.open()
    http = aiohttp.ClientSession()
    queues = Queues(cfg, store, RouterSender(cfg, http), shared)
    for app, parsed in files.items():
        await queues.set(app, parsed)
        log.info("taskqueue %s: queues %s", app, ", ".join(sorted(parsed.queues)))

    follower, source = None, None
    if cfg.control_plane:
        from kiln_platform.deployclient import VersionSource
        from taskqueue_svc.deployed import DeployedQueues
        source = VersionSource(str(cfg.control_plane), cfg.control_token.get())
        follower = asyncio.create_task(DeployedQueues(source, queues.set).follow(nc, cfg.resync_seconds))

    async def stop() -> None:
        if follower is not None and source is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await source.close()
        await queues.stop()
        await http.close()
        await bus.shutdown(nc)

    service = TaskQueueService(store, shared, queues.of, queues.running, pull=pull)
    registration = grpcserver.Registration(SERVICE_NAME, taskqueue_pb2_grpc.add_TaskQueueServiceServicer_to_server,
                                           service)
    await grpcserver.serve(cfg, [registration], on_stop=stop)
