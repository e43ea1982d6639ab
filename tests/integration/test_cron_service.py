"""cron_svc replicas on a real nats-server, firing at a real HTTP server standing in for the router: exactly once
across three replicas when the one that fired is killed, a dead replica's open firing taken over, the latest
missed firing run once on recovery, and retries per retry_parameters."""

from __future__ import annotations

import asyncio
import collections
import datetime
import http.server
import signal
import threading
import time

import nats
import pytest

from kiln_platform import cronyaml
from cron_svc.scheduler import Firing, Store, job_id
from kiln_platform import auth
from kiln_platform.supervisor import python_module
from tests.integration.conftest import service_env

pytestmark = pytest.mark.nats

PLATFORM_SECRET = "integration-platform-secret"  # conftest.service_env's
UTC = datetime.timezone.utc


class Recorder(http.server.ThreadingHTTPServer):
    """Answers cron requests (statuses queued per path, else 200) and records them."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, float, bool]] = []  # path, host, time, signature valid
        self.statuses: dict[str, list[int]] = collections.defaultdict(list)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.requests]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        host = self.headers.get("Host", "")
        signed = auth.verify_platform(PLATFORM_SECRET, self.headers.get(auth.PLATFORM_SIGNATURE_HEADER, ""),
                                      self.headers.get(auth.PLATFORM_HEADER, ""), "GET", host, self.path,
                                      time.time())
        with self.server.lock:
            self.server.requests.append((self.path, host, time.time(), signed))
            queued = self.server.statuses[self.path]
            status = queued.pop(0) if queued else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def recorder():
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh_nats(supervisor, tmp_path):
    (tmp_path / "nats").mkdir()
    return f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}"


def start_replica(supervisor, nats_url, recorder, cron_yaml, name, *extra):
    ready = supervisor.run_dir / f"{name}.addr"
    return supervisor.start(name, python_module(
        "cron_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", nats_url,
        "--cron-yaml", f"cronapp={cron_yaml}", "--router-url", recorder.url, "--apps-domain", "apps.test",
        "--replica-id", name, "--liveness-seconds", "3", *extra), env=service_env(), ready_file=ready)


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout}s")


async def kv_claims(nats_url):
    nc = await nats.connect(nats_url)
    try:
        store = Store(nc.jetstream())
        await store.open_buckets()
        out = {}
        try:
            keys = await store.claims.keys()
        except nats.js.errors.NoKeysError:
            return out
        for key in keys:
            data, _ = await store.get(store.claims, key)
            out[key] = Firing.from_json(data)
        return out
    finally:
        await nc.close()


async def seed(nats_url, writes):
    """Write (bucket, key, value) into the cron buckets: the state other replicas left behind."""
    nc = await nats.connect(nats_url)
    try:
        store = Store(nc.jetstream())
        await store.open_buckets()
        for bucket, key, value in writes:
            await getattr(store, bucket).put(key, value)
    finally:
        await nc.close()


def write_jobs(path, jobs):
    path.write_text("cron:\n" + "".join(f"- url: {url}\n  schedule: {schedule}\n{extra}" for url, schedule, extra
                                        in jobs))
    return cronyaml.load(path)


def test_three_replicas_fire_each_job_once_per_minute_even_when_the_one_firing_is_killed(
        supervisor, fresh_nats, recorder, tmp_path):
    urls = [f"/tasks/job{n}" for n in range(6)]
    cron_yaml = tmp_path / "cron.yaml"
    write_jobs(cron_yaml, [(u, "every 1 minutes synchronized", "") for u in urls])
    replicas = {name: start_replica(supervisor, fresh_nats, recorder, cron_yaml, name)
                for name in ("cron-a", "cron-b", "cron-c")}
    # First minute boundary: every job fires once.
    wait_until(lambda: len(recorder.paths()) >= len(urls), 75)
    time.sleep(2)
    claims = asyncio.run(kv_claims(fresh_nats))
    firers = collections.Counter(f.replica for f in claims.values())
    leader = firers.most_common(1)[0][0]
    replicas[leader].proc.send_signal(signal.SIGKILL)
    replicas[leader].proc.wait(10)
    # The next boundary: the two survivors fire every job once between them.
    wait_until(lambda: len(recorder.paths()) >= 2 * len(urls), 75)
    time.sleep(3)
    with recorder.lock:
        requests = list(recorder.requests)
    minutes = collections.Counter((path, int(at // 60)) for path, _, at, _ in requests)
    assert sorted(minutes.values()) == [1] * (2 * len(urls)), minutes
    assert len({minute for _, minute in minutes}) == 2
    assert all(signed for *_, signed in requests)
    assert all(host == "cronapp.apps.test" for _, host, _, _ in requests)
    survivors = {f.replica for f in asyncio.run(kv_claims(fresh_nats)).values()} - {leader}
    assert survivors  # the second round was fired by the survivors


def test_open_firing_of_a_dead_replica_is_taken_over(supervisor, fresh_nats, recorder, tmp_path):
    jobs = write_jobs(tmp_path / "cron.yaml", [("/tasks/daily", "every day 03:00", "")])
    scheduled = datetime.datetime.now(UTC).replace(second=0, microsecond=0)
    key = f"{job_id('cronapp', jobs[0])}.{int(scheduled.timestamp())}"
    dead = Firing(app_id="cronapp", job=jobs[0].key, url="/tasks/daily", scheduled=scheduled.timestamp(),
                  replica="replica-that-died")
    asyncio.run(seed(fresh_nats, [("claims", key, dead.to_json()), ("open", key, b"1")]))
    start_replica(supervisor, fresh_nats, recorder, tmp_path / "cron.yaml", "cron-heir")
    wait_until(lambda: recorder.paths() == ["/tasks/daily"], 30)
    wait_until(lambda: asyncio.run(kv_claims(fresh_nats))[key].done, 10)
    assert asyncio.run(kv_claims(fresh_nats))[key].replica == "cron-heir"


def missed_state(job, minutes_ago):
    """State saying the job last fired ``minutes_ago`` minutes ago (kiln has been down since)."""
    last = datetime.datetime.now(UTC).replace(second=0, microsecond=0) - datetime.timedelta(minutes=minutes_ago)
    firing = Firing(app_id="cronapp", job=job.key, url=job.url, scheduled=last.timestamp(), replica="old",
                    attempt=1, status=200, done=True)
    return [("state", job_id("cronapp", job), firing.to_json())]


def test_latest_missed_firing_runs_once_on_recovery(supervisor, fresh_nats, recorder, tmp_path):
    [job] = write_jobs(tmp_path / "cron.yaml", [("/tasks/hourly", "every 1 hours synchronized", "")])
    asyncio.run(seed(fresh_nats, missed_state(job, 5 * 60)))  # down for 5 hours: 4 or 5 firings missed
    for name in ("cron-r1", "cron-r2"):
        start_replica(supervisor, fresh_nats, recorder, tmp_path / "cron.yaml", name)
    wait_until(lambda: recorder.paths(), 30)
    time.sleep(2)
    assert recorder.paths() == ["/tasks/hourly"]
    [claim] = asyncio.run(kv_claims(fresh_nats)).values()
    this_hour = datetime.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert claim.scheduled == this_hour.timestamp()


def test_failed_run_is_retried_per_retry_parameters(supervisor, fresh_nats, recorder, tmp_path):
    retry = "  retry_parameters:\n    job_retry_limit: 3\n    min_backoff_seconds: 0.5\n    max_doublings: 1\n"
    [job] = write_jobs(tmp_path / "cron.yaml", [("/tasks/flaky", "every 1 hours synchronized", retry)])
    recorder.statuses["/tasks/flaky"] = [500, 503]
    asyncio.run(seed(fresh_nats, missed_state(job, 90)))
    start_replica(supervisor, fresh_nats, recorder, tmp_path / "cron.yaml", "cron-retry")
    wait_until(lambda: len(recorder.paths()) >= 3, 30)
    [claim] = asyncio.run(kv_claims(fresh_nats)).values()
    wait_until(lambda: next(iter(asyncio.run(kv_claims(fresh_nats)).values())).done, 10)
    [claim] = asyncio.run(kv_claims(fresh_nats)).values()
    assert (claim.attempt, claim.status, claim.done) == (3, 200, True)
    time.sleep(1)
    assert recorder.paths() == ["/tasks/flaky"] * 3


def test_failed_run_without_retry_parameters_is_not_retried(supervisor, fresh_nats, recorder, tmp_path):
    [job] = write_jobs(tmp_path / "cron.yaml", [("/tasks/once", "every 1 hours synchronized", "")])
    recorder.statuses["/tasks/once"] = [500]
    asyncio.run(seed(fresh_nats, missed_state(job, 90)))
    start_replica(supervisor, fresh_nats, recorder, tmp_path / "cron.yaml", "cron-noretry")
    wait_until(lambda: recorder.paths(), 30)
    time.sleep(2)
    [claim] = asyncio.run(kv_claims(fresh_nats)).values()
    assert (claim.attempt, claim.status, claim.done) == (1, 500, True)
    assert recorder.paths() == ["/tasks/once"]
