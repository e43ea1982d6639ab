"""Cron jobs of deployed apps: each app's default version's ``cron.yaml``, from the control plane
(:class:`kiln_platform.deployclient.DefaultVersionFile` says when it is re-read). A job that stays the same keeps its
plan and history; removed jobs stop.
"""

from __future__ import annotations

from cron_svc.scheduler import Scheduler
from kiln_platform import cronyaml
from kiln_platform.deployclient import DefaultVersionFile, VersionSource


class DeployedJobs(DefaultVersionFile[list[cronyaml.CronJob]]):
    """Keeps the scheduler's jobs equal to the default versions' cron.yaml files."""

    def __init__(self, source: VersionSource, scheduler: Scheduler) -> None:
        super().__init__(source, "cron.yaml", lambda version: version.cron_yaml,
                         lambda text, filename: cronyaml.parse(text, filename=filename), list, scheduler.set_jobs)
