"""Cron jobs of deployed apps: each app's default version's ``cron.yaml``, from the control plane.

At start and every ``resync_seconds`` every app's jobs are re-read; a
``kiln.deploy.default`` event (a new default) or a ``kiln.deploy.version``
event for the default version (a new minor of it) re-reads that app's at once.
A job that stays the same keeps its plan and history; removed jobs stop.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client

from cron_svc.scheduler import Scheduler
from kiln_platform import cronyaml
from kiln_platform.deployclient import VersionSource, follow, parse_event
from kiln.errors import KilnError

log = logging.getLogger(__name__)


class DeployedJobs:
    """Keeps the scheduler's jobs equal to the default versions' cron.yaml files."""

    def __init__(self, source: VersionSource, scheduler: Scheduler) -> None:
        self._source = source
        self._scheduler = scheduler
        self._defaults: dict[str, str] = {}

    async def refresh(self, app_id: str) -> None:
        version = await self._source.version(app_id, "")
        jobs: list[cronyaml.CronJob] = []
        if version is not None:
            self._defaults[app_id] = version.version_id
            if version.cron_yaml:
                try:
                    jobs = cronyaml.parse(version.cron_yaml, filename=f"{app_id}/{version.version_id}/cron.yaml")
                except KilnError as exc:  # the control plane checked it; keep the old jobs if it is not valid now
                    log.error("cron %s: %s", app_id, exc)
                    return
        await self._scheduler.set_jobs(app_id, jobs)

    async def resync(self) -> None:
        for app in await self._source.apps():
            await self.refresh(app.app_id)

    async def on_event(self, subject: str, data: bytes) -> None:
        event = parse_event(subject, data)
        if hasattr(event, "generation") or self._defaults.get(event.app_id) == event.version_id:
            await self.refresh(event.app_id)

    async def follow(self, nc: Client, resync_seconds: float) -> None:
        """Apply events and re-read periodically until cancelled."""
        await follow(nc, self.on_event, self.resync, resync_seconds, "cron.yaml files")
