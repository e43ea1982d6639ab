"""``kiln.pb.cron.v1.CronService``: an app's jobs with their next and last runs; running a job now; schedule
validation."""

from __future__ import annotations

import datetime
from typing import Any

import grpc

from kiln_platform import cronschedule as grammar
from cron_svc.scheduler import Firing, Scheduler
from kiln_platform.cronyaml import CronJob
from kiln_platform import grpcserver
from kiln.errors import BadRequestError, NotFoundError, PermissionDeniedError
from kiln.pb.cron.v1 import cron_pb2 as pb
from kiln.pb.cron.v1 import cron_pb2_grpc

MAX_UPCOMING = 100


class CronService(cron_pb2_grpc.CronServiceServicer):
    """Implements the contract."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def ListJobs(self, request: pb.ListJobsRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListJobsResponse:
        app = grpcserver.caller_app()
        if request.app_id and request.app_id != app:
            raise PermissionDeniedError("an app may list only its own cron jobs")
        out = pb.ListJobsResponse()
        for job in self._scheduler.jobs.get(app, []):
            item = out.jobs.add(url=job.url, schedule=job.schedule.text, timezone=job.timezone,
                                description=job.description, target=job.target, key=job.key)
            r = job.retry
            if r.retries:
                item.retry_parameters.min_backoff_seconds = r.min_backoff_seconds
                item.retry_parameters.max_backoff_seconds = r.max_backoff_seconds
                item.retry_parameters.max_doublings = r.max_doublings
                if r.job_retry_limit is not None:
                    item.retry_parameters.job_retry_limit = r.job_retry_limit
                if r.job_age_limit_seconds is not None:
                    item.retry_parameters.job_age_limit_seconds = r.job_age_limit_seconds
            upcoming = self._scheduler.next_run(app, job)
            if upcoming is not None:
                item.next_run.FromDatetime(upcoming)
            last = await self._scheduler.last_firing(app, job)
            if last is not None:
                _firing(item.last_firing, app, job, last)
        return out

    async def RunJob(self, request: pb.RunJobRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> pb.RunJobResponse:
        app = grpcserver.caller_app()
        if request.app_id and request.app_id != app:
            raise PermissionDeniedError("an app may run only its own cron jobs")
        job = next((j for j in self._scheduler.jobs.get(app, []) if j.key == request.key), None)
        if job is None:
            raise NotFoundError(f"key: app {app} has no cron job {request.key!r}")
        out = pb.RunJobResponse()
        _firing(out.firing, app, job, await self._scheduler.run_now(app, job))
        return out

    async def ValidateSchedule(self, request: pb.ValidateScheduleRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.ValidateScheduleResponse:
        if not 0 <= request.count <= MAX_UPCOMING:
            raise BadRequestError(f"count: must be between 0 and {MAX_UPCOMING}, got {request.count}")
        try:
            schedule = grammar.parse(request.schedule)
            zone = grammar.parse_timezone(request.timezone or "UTC")
        except grammar.ScheduleError as exc:
            raise BadRequestError(str(exc)) from None
        out = pb.ValidateScheduleResponse()
        t = datetime.datetime.now(datetime.timezone.utc)
        previous = None
        for _ in range(request.count or 5):
            try:
                t = previous = schedule.next_after(t, zone, previous)
            except grammar.ScheduleError as exc:  # never fires in this zone (a DST jump skips every occurrence)
                raise BadRequestError(str(exc)) from None
            out.next_runs.add().FromDatetime(t)
        return out


def _firing(out: pb.CronFiring, app: str, job: CronJob, firing: Firing) -> None:
    """Fill ``out`` from the record of ``job``'s ``firing``."""
    out.app_id = app
    out.version_id = job.target
    out.url = job.url
    out.scheduled_time.FromDatetime(datetime.datetime.fromtimestamp(firing.scheduled, datetime.timezone.utc))
    out.attempt = firing.attempt
    out.status = firing.status
    out.fired_at.FromDatetime(datetime.datetime.fromtimestamp(firing.fired_at, datetime.timezone.utc))
