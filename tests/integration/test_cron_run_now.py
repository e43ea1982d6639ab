"""Cron's RunJob under ``kiln dev``: a job runs on demand as a scheduled firing does — the signed request through
the router (past ``login: admin``, with ``X-AppEngine-Cron: true``), retried per its retry_parameters, recorded
as the job's last firing; an unknown job is NOT_FOUND and another app's jobs are refused."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import grpc
import pytest

from deploy.dev import DevServer
from kiln.pb.cron.v1 import cron_pb2 as pb
from kiln.pb.cron.v1 import cron_pb2_grpc
from kiln_platform import auth
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

APP_YAML = textwrap.dedent("""\
    application: runnow
    runtime: python27
    api_version: 1
    threadsafe: true
    handlers:
    - url: /tasks/.*
      script: main.app
      login: admin
    - url: /.*
      script: main.app
""")

# Daily jobs: they do not fire by schedule during a test, only when asked to.
CRON_YAML = textwrap.dedent("""\
    cron:
    - description: report
      url: /tasks/report
      schedule: every day 03:00
    - description: fails once, then succeeds
      url: /tasks/flaky
      schedule: every day 04:00
      retry_parameters:
        min_backoff_seconds: 0.2
        max_backoff_seconds: 0.2
""")

MAIN = textwrap.dedent('''
    from kiln.api import memcache

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        status = "200 OK"
        if path == "/tasks/report":
            memcache.incr("reports", initial_value=0)
            memcache.set("report-header", environ.get("HTTP_X_APPENGINE_CRON", "absent"))
        if path == "/tasks/flaky" and memcache.incr("flaky", initial_value=0) == 1:
            status = "500 Internal Server Error"
        body = b""
        if path == "/seen":
            body = ("%s %s" % (memcache.get("reports"), memcache.get("report-header"))).encode()
        start_response(status, [("Content-Type", "text/plain")])
        return [body]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[DevServer]:
    app_dir = tmp_path_factory.mktemp("runnow")
    (app_dir / "cron.yaml").write_text(CRON_YAML)
    with running(app_dir, {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


@pytest.fixture(scope="module")
def cron(server) -> Iterator[tuple[cron_pb2_grpc.CronServiceStub, tuple[tuple[str, str], ...]]]:
    channel = grpc.insecure_channel(server.addresses["cron_svc"])
    token = auth.mint_app_token(server._secret, server.app_id)
    yield cron_pb2_grpc.CronServiceStub(channel), (("authorization", f"Bearer {token}"),)
    channel.close()


def _jobs(cron) -> dict[str, pb.Job]:
    stub, meta = cron
    return {job.url: job for job in stub.ListJobs(pb.ListJobsRequest(), metadata=meta, timeout=30).jobs}


def _run(cron, key: str, app_id: str = "") -> pb.RunJobResponse:
    stub, meta = cron
    return stub.RunJob(pb.RunJobRequest(app_id=app_id, key=key), metadata=meta, timeout=60)


def test_run_job_sends_the_signed_cron_request_to_the_app_now(server, cron):
    answer = _run(cron, _jobs(cron)["/tasks/report"].key)
    assert (answer.firing.url, answer.firing.status, answer.firing.attempt) == ("/tasks/report", 200, 1)
    assert apps.fetch(server, "/seen")[2] == b"1 true"  # past login: admin, with X-AppEngine-Cron: true


def test_a_run_now_is_recorded_as_the_jobs_last_firing(cron):
    answer = _run(cron, _jobs(cron)["/tasks/report"].key)
    job = _jobs(cron)["/tasks/report"]
    assert job.last_firing == answer.firing
    assert job.last_firing.status == 200
    assert job.next_run.seconds > job.last_firing.scheduled_time.seconds  # the schedule goes on as before


def test_a_failed_run_now_is_retried_per_the_jobs_retry_parameters(cron):
    answer = _run(cron, _jobs(cron)["/tasks/flaky"].key)
    assert (answer.firing.status, answer.firing.attempt) == (500, 1)

    def retried() -> bool:
        last = _jobs(cron)["/tasks/flaky"].last_firing
        return (last.status, last.attempt) == (200, 2)
    apps.wait_for(retried, 30)


def test_running_an_unknown_job_is_not_found(cron):
    with pytest.raises(grpc.RpcError) as caught:
        _run(cron, "no-such-job")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-job" in caught.value.details()


def test_an_app_cannot_run_another_apps_job(cron):
    with pytest.raises(grpc.RpcError) as caught:
        _run(cron, _jobs(cron)["/tasks/report"].key, app_id="someone-else")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
