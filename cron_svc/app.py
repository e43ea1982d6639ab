"""Wiring of cron_svc: the scheduler (:mod:`cron_svc.scheduler`), the requests it makes through the router,
and the gRPC service that lists jobs with their next and last runs."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time

import aiohttp

from kiln_platform import cronyaml
from cron_svc.config import CronConfig
from kiln_platform.cronyaml import CronJob
from cron_svc.scheduler import Scheduler, Store
from cron_svc.service import CronService
from kiln_platform import auth, bus, grpcserver
from kiln.pb.cron.v1 import cron_pb2, cron_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = cron_pb2.DESCRIPTOR.services_by_name["CronService"].full_name


class RouterFirer:
    """Sends a job's request through the router, signed as the cron service."""

    def __init__(self, cfg: CronConfig, session: aiohttp.ClientSession) -> None:
        self._router = cfg.router_url.rstrip("/")
        self._domain = cfg.apps_domain
        self._secret = cfg.platform_secret.get()
        self._timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_seconds)
        self._http = session

    async def __call__(self, app_id: str, job: CronJob, scheduled: datetime.datetime, attempt: int) -> int:
        host = f"{job.target}-dot-{app_id}.{self._domain}" if job.target else f"{app_id}.{self._domain}"
        headers = {"Host": host, auth.PLATFORM_HEADER: "cron",
                   auth.PLATFORM_SIGNATURE_HEADER: auth.sign_platform(self._secret, "cron", "GET", host, job.url,
                                                                      time.time())}
        started = time.time()
        try:
            async with self._http.get(self._router + job.url, headers=headers, allow_redirects=False,
                                      timeout=self._timeout) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("cron %s %s (%s, attempt %d): no answer: %s", app_id, job.url, scheduled.isoformat(),
                        attempt, exc)
            return 0
        log.info("cron %s %s (%s, attempt %d): %d in %.0f ms, %.0f ms after its time", app_id, job.url,
                 scheduled.isoformat(), attempt, status, (time.time() - started) * 1000,
                 (started - scheduled.timestamp()) * 1000)
        return status


def load_jobs(cfg: CronConfig) -> dict[str, list[CronJob]]:
    """Every app's jobs (a malformed cron.yaml stops the service with the file, line and field)."""
    return {app: cronyaml.load(path) for app, path in cfg.cron_files().items()}


async def serve(cfg: CronConfig) -> None:
    """Run the cron service until SIGTERM."""
    jobs = load_jobs(cfg)
    nc = await bus.connect(cfg.nats_url, name="cron_svc")
    store = Store(nc.jetstream(), replicas=cfg.kv_replicas, liveness_seconds=cfg.liveness_seconds)
    await store.open_buckets()
    http = aiohttp.ClientSession()
    scheduler = Scheduler(store, jobs, RouterFirer(cfg, http), replica=cfg.replica_id)
    loop = asyncio.create_task(scheduler.run())
    log.info("cron: %d jobs of %d apps; replica %s", sum(map(len, jobs.values())), len(jobs), cfg.replica_id)
    follower, source = None, None
    if cfg.control_plane:
        from cron_svc.deployed import DeployedJobs
        from kiln_platform.deployclient import VersionSource
        source = VersionSource(str(cfg.control_plane), cfg.control_token.get())
        follower = asyncio.create_task(DeployedJobs(source, scheduler).follow(nc, cfg.resync_seconds))

    async def stop() -> None:
        if follower is not None and source is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await source.close()
        await scheduler.stop()
        await asyncio.gather(loop, return_exceptions=True)
        await http.close()
        await bus.shutdown(nc)

    service = CronService(scheduler)
    registration = grpcserver.Registration(SERVICE_NAME, cron_pb2_grpc.add_CronServiceServicer_to_server, service)
    await grpcserver.serve(cfg, [registration], on_stop=stop)
