"""Firing cron jobs exactly once across any number of ``cron_svc`` replicas.

Every replica computes every job's schedule; at a scheduled time each tries to **claim** the firing — a
create-if-absent of the key ``APP.JOB.EPOCH`` in the NATS KV bucket ``kiln-cron-claims`` — and only the one
whose create succeeds fires it. So that replicas do not all race for every firing at the same moment, one of
the live replicas (by rendezvous hashing of the firing's key over the liveness keys) claims at once and the
others only ``BACKUP_CLAIM_SECONDS`` later, when their create fails unless that replica died; a replica that
has not yet seen the others claims everything at once, which is merely slower. A claim stays listed in
``kiln-cron-open`` until its firing is finished (succeeded, or out of retries); each replica keeps a liveness
key in ``kiln-cron-replicas`` (it expires a few seconds after the replica dies), and any replica that finds an
open claim of a dead replica takes it over with a compare-and-set on the claim, so exactly one replica
finishes it. (A replica that dies after its request reached the app but before it recorded the outcome leaves
a firing whose outcome is unknown; the one that takes it over sends it again — the one window where an app can
see a firing twice.)

Plain intervals (``every 5 minutes``) run from an anchor all replicas share (the first firing, stored in
``kiln-cron-state``), so every replica computes the same times. A job's last firing and status are kept in
``kiln-cron-state``; when kiln comes back after being down through scheduled times, the latest missed firing of
each job runs once (a claim like any other), the earlier ones not at all.

A firing is ``GET <url>`` through the router to the job's target version (or the default version), signed as
the cron service so the router adds ``X-AppEngine-Cron: true`` and lets it through ``login: admin``. A non-2xx
answer is retried as the job's ``retry_parameters`` say.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from kiln_platform.cronschedule import ScheduleError
from kiln.errors import ConflictError, UnavailableError
from kiln_platform.cronyaml import CronJob

log = logging.getLogger(__name__)

UTC = datetime.timezone.utc
CLAIMS = "kiln-cron-claims"
OPEN = "kiln-cron-open"
STATE = "kiln-cron-state"
REPLICAS = "kiln-cron-replicas"
CLAIM_TTL_SECONDS = 7 * 24 * 3600
MAX_CATCH_UP = 200_000  # schedule steps walked to find the latest missed firing
BACKUP_CLAIM_SECONDS = 1.0  # how long the other replicas leave a firing to the replica it hashes to

# (app, job, scheduled time, attempt) -> HTTP status (0: no answer)
Fire = Callable[[str, CronJob, datetime.datetime, int], Awaitable[int]]


@dataclasses.dataclass
class Firing:
    """The record of one scheduled firing, in its claim and in the job's state."""

    app_id: str
    job: str
    url: str
    scheduled: float
    replica: str
    attempt: int = 0
    status: int = 0
    done: bool = False
    fired_at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | None) -> Firing | None:
        try:
            return cls(**json.loads(data or b""))
        except (ValueError, TypeError):
            return None


class Store:
    """The KV buckets (created by whichever replica comes first)."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1, liveness_seconds: float = 6.0) -> None:
        self.js = js
        self.replicas = replicas
        self.liveness_seconds = liveness_seconds
        self.claims: KeyValue
        self.open: KeyValue
        self.state: KeyValue
        self.alive: KeyValue

    async def open_buckets(self) -> None:
        self.claims = await self._bucket(CLAIMS, ttl=CLAIM_TTL_SECONDS)
        self.open = await self._bucket(OPEN, ttl=None)
        self.state = await self._bucket(STATE, ttl=None)
        self.alive = await self._bucket(REPLICAS, ttl=self.liveness_seconds)

    async def _bucket(self, name: str, ttl: float | None) -> KeyValue:
        try:
            return await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            try:
                return await self.js.create_key_value(KeyValueConfig(
                    bucket=name, ttl=ttl, storage=StorageType.FILE, replicas=self.replicas))
            except nats.js.errors.BadRequestError:
                return await self.js.key_value(name)

    async def get(self, bucket: KeyValue, key: str) -> tuple[bytes | None, int]:
        try:
            entry = await bucket.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, 0
        return entry.value, entry.revision or 0


def job_id(app_id: str, job: CronJob) -> str:
    return f"{app_id}.{job.key}"


class Scheduler:
    """One replica's loop over every app's jobs."""

    def __init__(self, store: Store, jobs: dict[str, list[CronJob]], fire: Fire, *, replica: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.jobs = jobs
        self.fire = fire
        self.replica = replica
        self.clock = clock
        self._next: dict[str, datetime.datetime] = {}
        self._anchor: dict[str, datetime.datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._live: list[str] = [replica]

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), UTC)

    # --- the loop ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the liveness key, plan, fire and take over until :meth:`stop`."""
        await self._heartbeat()
        for app_id, jobs in self.jobs.items():
            for job in jobs:
                await self._plan(app_id, job)
        last_scan = 0.0
        while not self._stopping.is_set():
            try:
                last_scan = await self._tick(last_scan)
            except Exception:  # noqa: BLE001 - NATS trouble must not stop this replica's cron for good
                log.exception("cron: scheduler step failed; going on")
                await asyncio.sleep(1)

    async def _tick(self, last_scan: float) -> float:
        """Claim what is due, heartbeat and take over when it is time, wait for the next firing; returns when
        it last scanned for take-overs."""
        now = self.now()
        due = []
        for app_id, jobs in list(self.jobs.items()):  # set_jobs may replace an app's jobs meanwhile
            for job in jobs:
                key = job_id(app_id, job)
                while key in self._next and self._next[key] <= now:
                    due.append((app_id, job, self._next[key]))
                    self._next[key] = self._after(job, self._next[key], key)
        # Claimed at once, not one after another: many jobs share a minute, and each claim is a round trip.
        # Firings that hash to another replica are left to it for a moment (claimed later, as a backup).
        mine = []
        for app_id, job, when in due:
            if self._prefers_me(job_id(app_id, job), when):
                mine.append(self._claim_and_fire(app_id, job, when))
            else:
                self._track(asyncio.create_task(self._backup_claim(app_id, job, when)))
        await asyncio.gather(*mine)
        if self.clock() - last_scan >= self.store.liveness_seconds / 3:
            last_scan = self.clock()
            await self._heartbeat()
            await self._take_over()
        soonest = min(self._next.values(), default=now + datetime.timedelta(seconds=1))
        wait = max(0.0, min(1.0, (soonest - self.now()).total_seconds()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), wait)
        return last_scan

    async def set_jobs(self, app_id: str, jobs: list[CronJob]) -> None:
        """Replace an app's jobs (a new default version's cron.yaml): new jobs are planned, removed ones dropped.

        A job that stays (same url, schedule, time zone and target) keeps its plan and history.
        """
        before = {job_id(app_id, j) for j in self.jobs.get(app_id, [])}
        for job in jobs:
            if job_id(app_id, job) not in before:
                await self._plan(app_id, job)
        self.jobs[app_id] = jobs
        after = {job_id(app_id, j) for j in jobs}
        for key in before - after:
            self._next.pop(key, None)
            self._anchor.pop(key, None)
        if before != after:
            log.info("cron %s: %d jobs", app_id, len(jobs))

    async def stop(self) -> None:
        """Stop planning; firings in progress get a moment to finish (else another replica takes them over)."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(nats.errors.Error):
            await self.store.alive.delete(self.replica)

    def next_run(self, app_id: str, job: CronJob) -> datetime.datetime | None:
        return self._next.get(job_id(app_id, job))

    async def last_firing(self, app_id: str, job: CronJob) -> Firing | None:
        data, _ = await self.store.get(self.store.state, job_id(app_id, job))
        return Firing.from_json(data)

    async def run_now(self, app_id: str, job: CronJob) -> Firing:
        """Run ``job`` now, as a scheduled firing runs (claimed, signed, retried, recorded as its last firing);
        returns the firing once its first attempt is recorded (any retries go on in the background).

        Its claim key (``APP.JOB.now.MILLIS``) is apart from the scheduled ones', so a run on demand never takes
        the place of a scheduled firing of the same second.

        Raises:
            ConflictError: the same run was already claimed (two asks in the same millisecond).
            UnavailableError: NATS did not take the claim, or the run was taken over before its first attempt.
        """
        now = self.clock()
        key = f"{job_id(app_id, job)}.now.{int(now * 1000)}"
        firing = Firing(app_id=app_id, job=job.key, url=job.url, scheduled=now, replica=self.replica)
        try:
            revision = await self.store.claims.create(key, firing.to_json())
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ConflictError(f"cron job {job.url} is already being run at this moment") from None
        except nats.errors.Error as exc:
            raise UnavailableError(f"cron job {job.url}: could not claim the run: {exc}") from None
        with contextlib.suppress(nats.errors.Error):  # as for a scheduled firing: only a take-over would miss it
            await self.store.open.put(key, b"1")
        first: asyncio.Future[Firing] = asyncio.get_running_loop().create_future()
        task = self._start(app_id, job, key, firing, revision, first=first)
        waits: set[asyncio.Future[Any]] = {first, task}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            raise UnavailableError(f"cron job {job.url}: the run stopped before its first attempt was recorded")
        return first.result()

    # --- planning ---------------------------------------------------------------------------------------------

    def _plain_interval(self, job: CronJob) -> bool:
        s = job.schedule
        return bool(s.interval_minutes) and not s.synchronized and s.window is None

    def _after(self, job: CronJob, after: datetime.datetime, key: str) -> datetime.datetime:
        return job.schedule.next_after(after, job.zone, self._anchor.get(key))

    async def _plan(self, app_id: str, job: CronJob) -> None:
        """The next firing, the shared anchor of a plain interval, and the latest firing missed while down."""
        key = job_id(app_id, job)
        now = self.now()
        try:
            job.schedule.next_after(now, job.zone)
        except ScheduleError as exc:  # e.g. a time every occurrence of which a DST jump skips in this zone
            log.warning("cron %s %s: not planned: %s", app_id, job.url, exc)
            return
        if self._plain_interval(job):
            first = job.schedule.next_after(now, job.zone)
            anchor_key = f"{key}.anchor"
            try:
                await self.store.state.create(anchor_key, str(first.timestamp()).encode())
                self._anchor[key] = first
            except nats.js.errors.KeyWrongLastSequenceError:
                data, _ = await self.store.get(self.store.state, anchor_key)
                self._anchor[key] = datetime.datetime.fromtimestamp(float(data or b"0"), UTC)
        last = await self.last_firing(app_id, job)
        if last is not None:
            missed = None
            t = datetime.datetime.fromtimestamp(last.scheduled, UTC)
            for _ in range(MAX_CATCH_UP):
                t = self._after(job, t, key)
                if t > now:
                    break
                missed = t
            if missed is not None:
                log.info("cron %s %s: firing %s, missed while kiln was down", app_id, job.url, missed.isoformat())
                await self._claim_and_fire(app_id, job, missed)
        self._next[key] = self._after(job, now, key)

    # --- claims -----------------------------------------------------------------------------------------------

    async def _claim_and_fire(self, app_id: str, job: CronJob, scheduled: datetime.datetime) -> None:
        key = f"{job_id(app_id, job)}.{int(scheduled.timestamp())}"
        firing = Firing(app_id=app_id, job=job.key, url=job.url, scheduled=scheduled.timestamp(),
                        replica=self.replica)
        try:
            revision = await self.store.claims.create(key, firing.to_json())
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another replica has it
        except nats.errors.Error as exc:
            log.warning("cron %s %s: could not claim %s: %s", app_id, job.url, scheduled.isoformat(), exc)
            return
        try:
            await self.store.open.put(key, b"1")
        except nats.errors.Error as exc:  # fire anyway; only a take-over after this replica dies would miss it
            log.warning("cron %s %s: could not list firing %s as open: %s", app_id, job.url, scheduled.isoformat(),
                        exc)
        self._start(app_id, job, key, firing, revision)

    def _prefers_me(self, key: str, scheduled: datetime.datetime) -> bool:
        """Whether this replica is the live replica the firing hashes to (rendezvous hashing)."""
        firing = f"{key}.{int(scheduled.timestamp())}"
        return max(self._live, key=lambda r: hashlib.sha256(f"{r}|{firing}".encode()).digest()) == self.replica

    async def _backup_claim(self, app_id: str, job: CronJob, scheduled: datetime.datetime) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), BACKUP_CLAIM_SECONDS)
        if not self._stopping.is_set():
            await self._claim_and_fire(app_id, job, scheduled)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, app_id: str, job: CronJob, key: str, firing: Firing, revision: int, *,
               first: asyncio.Future[Firing] | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run_firing(app_id, job, key, firing, revision, first=first))
        self._track(task)
        return task

    async def _run_firing(self, app_id: str, job: CronJob, key: str, firing: Firing, revision: int, *,
                          first: asyncio.Future[Firing] | None = None) -> None:
        """Attempt ``firing`` until it succeeds or is out of retries; ``first`` gets a copy of it once the first
        attempt is recorded."""
        scheduled = datetime.datetime.fromtimestamp(firing.scheduled, UTC)
        retry = job.retry
        while True:
            firing.attempt += 1
            firing.fired_at = self.clock()
            firing.status = await self.fire(app_id, job, scheduled, firing.attempt)
            ok = 200 <= firing.status < 300
            age = self.clock() - firing.scheduled
            out_of_retries = (not retry.retries or (retry.job_retry_limit is not None
                                                    and firing.attempt > retry.job_retry_limit)
                              or (retry.job_age_limit_seconds is not None and age >= retry.job_age_limit_seconds))
            firing.done = ok or out_of_retries
            try:
                revision = await self.store.claims.update(key, firing.to_json(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                log.warning("cron %s %s: firing %s was taken over; leaving it", app_id, job.url, scheduled)
                return
            await self.store.state.put(job_id(app_id, job), firing.to_json())
            if first is not None and not first.done():
                first.set_result(dataclasses.replace(firing))
            if firing.done:
                with contextlib.suppress(nats.errors.Error):
                    await self.store.open.delete(key)
                if not ok:
                    log.warning("cron %s %s: %s failed (status %d) after %d attempts", app_id, job.url,
                                scheduled.isoformat(), firing.status, firing.attempt)
                return
            delay = retry.backoff(firing.attempt)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return  # stopping: another replica takes the retry over once this one's liveness key expires
            except asyncio.TimeoutError:
                pass

    async def _heartbeat(self) -> None:
        """Renew this replica's liveness key and read which replicas are alive."""
        with contextlib.suppress(nats.errors.Error):
            await self.store.alive.put(self.replica, str(self.clock()).encode())
        with contextlib.suppress(nats.js.errors.NoKeysError, nats.errors.Error):
            self._live = sorted(set(await self.store.alive.keys()) | {self.replica})

    async def _take_over(self) -> None:
        """Finish open firings whose replica died."""
        try:
            keys = await self.store.open.keys()
        except (nats.js.errors.NoKeysError, nats.errors.Error):
            return
        live: set[str] = set()
        for key in keys:
            data, revision = await self.store.get(self.store.claims, key)
            firing = Firing.from_json(data)
            if firing is None or firing.done:
                with contextlib.suppress(nats.errors.Error):
                    await self.store.open.delete(key)
                continue
            if firing.replica == self.replica or firing.replica in live:
                continue
            alive, _ = await self.store.get(self.store.alive, firing.replica)
            if alive is not None:
                live.add(firing.replica)
                continue
            job = next((j for j in self.jobs.get(firing.app_id, []) if j.key == firing.job), None)
            if job is None:
                continue
            firing.replica = self.replica
            try:
                revision = await self.store.claims.update(key, firing.to_json(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another replica took it first
            log.info("cron %s %s: taking over firing %s from a replica that died", firing.app_id, firing.url,
                     datetime.datetime.fromtimestamp(firing.scheduled, UTC).isoformat())
            self._start(firing.app_id, job, key, firing, revision)
