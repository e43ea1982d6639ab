"""The ``cron.yaml`` model: an app's scheduled jobs, as App Engine declared them::

    cron:
    - description: daily summary
      url: /tasks/summary
      schedule: every day 09:00
      timezone: Europe/London
      target: beta
      retry_parameters:
        job_retry_limit: 3
        job_age_limit: 2h
        min_backoff_seconds: 10
        max_backoff_seconds: 300
        max_doublings: 3

A malformed file — unknown fields, a url that is not a path, a schedule App Engine would refuse (the message
points at the word), an unknown time zone, a version name App Engine would refuse — gives an error naming the
file, line and field, as ``app.yaml`` errors do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
import zoneinfo

from kiln_platform import cronschedule as schedules
from kiln_platform.appyaml import _check_keys, _Ctx, _float, _int, _Map, _str, top_level_list, parse_duration

MAX_JOBS = 250  # App Engine's limit per app
VERSION_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class RetryParameters:
    """``retry_parameters``: how a failed run (non-2xx) is retried. Without any, a failed run is not retried."""

    job_retry_limit: int | None = None
    job_age_limit_seconds: int | None = None
    min_backoff_seconds: float = 5.0
    max_backoff_seconds: float = 3600.0
    max_doublings: int = 16

    @property
    def retries(self) -> bool:
        """Whether failed runs are retried at all (App Engine retries only when retry_parameters are given)."""
        return self.job_retry_limit is not None or self.job_age_limit_seconds is not None

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` (1 = first retry): doubling ``max_doublings`` times from the
        minimum, then growing linearly by the last doubled step, never past the maximum."""
        return backoff_delay(attempt, self.min_backoff_seconds, self.max_backoff_seconds, self.max_doublings)


def backoff_delay(attempt: int, low: float, high: float, doublings: int) -> float:
    """App Engine's retry backoff (cron jobs and push tasks): seconds before retry number ``attempt`` (1 = first
    retry), doubling ``doublings`` times from ``low``, then growing linearly by the last doubled step, never past
    ``high``."""
    done = min(attempt - 1, doublings)
    delay = low * 2 ** done
    if attempt - 1 > doublings:
        delay += low * 2 ** doublings * (attempt - 1 - doublings)
    return float(min(high, delay))


@dataclasses.dataclass(frozen=True)
class CronJob:
    """One ``cron:`` entry."""

    url: str
    schedule: schedules.Schedule
    timezone: str = "UTC"
    description: str = ""
    target: str = ""
    retry: RetryParameters = dataclasses.field(default_factory=RetryParameters)

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return schedules.parse_timezone(self.timezone)

    @property
    def key(self) -> str:
        """A stable id of the job: what it runs, when and where (a changed job is a new job)."""
        text = "\n".join((self.url, self.schedule.text, self.timezone, self.target))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def parse(text: str, *, filename: str = "cron.yaml") -> list[CronJob]:
    """Parse cron.yaml text.

    Raises:
        AppYamlError: the message names the file, line and field.
    """
    ctx, data, entries = top_level_list(text, filename, "cron", {"cron"}, "a cron list")
    if len(entries) > MAX_JOBS:
        raise ctx.fail(data, "cron", "cron", f"at most {MAX_JOBS} jobs, got {len(entries)}")
    jobs: list[CronJob] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"cron[{i}]"
        if not isinstance(entry, _Map):
            raise ctx.fail(entries, i, where, "must be a mapping with url and schedule")
        _check_keys(ctx, entry, {"url", "schedule", "timezone", "description", "target", "retry_parameters"}, where)
        url = _str(ctx, entry, "url", where + ".", required=True) or ""
        if not url.startswith("/") or any(c in url for c in " \t\r\n#"):
            raise ctx.fail(entry, "url", where + ".url", f"must be a path starting with / (no spaces), got {url!r}")
        text = _str(ctx, entry, "schedule", where + ".", required=True) or ""
        try:
            parsed = schedules.parse(text)
        except schedules.ScheduleError as exc:
            raise ctx.fail(entry, "schedule", where + ".schedule", str(exc)) from None
        zone = _str(ctx, entry, "timezone", where + ".") or "UTC"
        try:
            schedules.parse_timezone(zone)
        except schedules.ScheduleError as exc:
            raise ctx.fail(entry, "timezone", where + ".timezone", str(exc)) from None
        target = _str(ctx, entry, "target", where + ".") or ""
        if target and not VERSION_RE.match(target):
            raise ctx.fail(entry, "target", where + ".target",
                           f"must be a version name (lower-case letters, digits and hyphens), got {target!r}")
        job = CronJob(url=url, schedule=parsed, timezone=zone, description=_str(ctx, entry, "description",
                                                                                    where + ".") or "",
                      target=target, retry=_retry(ctx, entry, where))
        if job.key in seen:
            raise ctx.fail(entry, "url", where, f"the same job as cron[{seen[job.key]}] (url, schedule, timezone "
                                                f"and target)")
        seen[job.key] = i
        jobs.append(job)
    return jobs


def _retry(ctx: _Ctx, entry: _Map, where: str) -> RetryParameters:
    if "retry_parameters" not in entry or entry["retry_parameters"] is None:
        return RetryParameters()
    params = entry["retry_parameters"]
    rwhere = where + ".retry_parameters"
    if not isinstance(params, _Map):
        raise ctx.fail(entry, "retry_parameters", rwhere, "must be a mapping")
    _check_keys(ctx, params, {"job_retry_limit", "job_age_limit", "min_backoff_seconds", "max_backoff_seconds",
                              "max_doublings"}, rwhere)
    limit = _int(ctx, params, "job_retry_limit", rwhere + ".", 0, 5)
    age = None
    if "job_age_limit" in params:
        raw = params["job_age_limit"]
        try:
            age = parse_duration(str(raw))
        except ValueError as exc:
            raise ctx.fail(params, "job_age_limit", rwhere + ".job_age_limit", str(exc)) from None
        if age <= 0:
            raise ctx.fail(params, "job_age_limit", rwhere + ".job_age_limit", "must be longer than 0s")
    low = _float(ctx, params, "min_backoff_seconds", rwhere + ".", 0.0, 86400.0)
    high = _float(ctx, params, "max_backoff_seconds", rwhere + ".", 0.0, 86400.0)
    doublings = _int(ctx, params, "max_doublings", rwhere + ".", 0, 32)
    out = RetryParameters(job_retry_limit=limit, job_age_limit_seconds=age,
                          min_backoff_seconds=low if low is not None else 5.0,
                          max_backoff_seconds=high if high is not None else 3600.0,
                          max_doublings=doublings if doublings is not None else 16)
    if out.min_backoff_seconds > out.max_backoff_seconds:
        raise ctx.fail(params, "min_backoff_seconds", rwhere + ".min_backoff_seconds",
                       "must not be above max_backoff_seconds")
    if not out.retries:
        # App Engine: retry_parameters without a limit retry until the run succeeds; kiln bounds it at 5.
        out = dataclasses.replace(out, job_retry_limit=5)
    return out


def load(path: pathlib.Path) -> list[CronJob]:
    """Parse a cron.yaml file; a missing file declares no jobs."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return parse(text, filename=str(path))
