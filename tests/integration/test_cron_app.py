"""Cron under ``kiln dev``: the app's cron.yaml fires through the router with ``X-AppEngine-Cron: true``,
through a ``login: admin`` handler; clients cannot send that header themselves; ListJobs shows the runs."""

from __future__ import annotations

import http.client
import textwrap

import grpc
import pytest

from kiln_platform import auth
from kiln.pb.cron.v1 import cron_pb2 as pb
from kiln.pb.cron.v1 import cron_pb2_grpc
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

APP_YAML = textwrap.dedent("""\
    application: cronapp
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

CRON_YAML = textwrap.dedent("""\
    cron:
    - description: every minute
      url: /tasks/tick
      schedule: every 1 minutes synchronized
""")

MAIN = textwrap.dedent('''
    from kiln.api import memcache

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/tasks/tick":
            memcache.incr("ticks", initial_value=0)
            memcache.set("cron-header", environ.get("HTTP_X_APPENGINE_CRON", "absent"))
        body = b""
        if path == "/seen":
            body = ("%s %s" % (memcache.get("ticks"), memcache.get("cron-header"))).encode()
        if path == "/echo":
            body = environ.get("HTTP_X_APPENGINE_CRON", "absent").encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("cronapp")
    (app_dir / "cron.yaml").write_text(CRON_YAML)
    with running(app_dir, {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


def list_jobs(server):
    channel = grpc.insecure_channel(server.addresses["cron_svc"])
    try:
        token = auth.mint_app_token(server._secret, server.app_id)
        return cron_pb2_grpc.CronServiceStub(channel).ListJobs(
            pb.ListJobsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30).jobs
    finally:
        channel.close()


def test_cron_job_fires_through_the_router_with_the_cron_header(server):
    apps.wait_for(lambda: apps.fetch(server, "/seen")[2].startswith(b"1 "), 75)
    assert apps.fetch(server, "/seen")[2] == b"1 true"
    [job] = list_jobs(server)
    assert (job.url, job.schedule, job.last_firing.status, job.last_firing.attempt) == (
        "/tasks/tick", "every 1 minutes synchronized", 200, 1)
    assert job.next_run.seconds % 60 == 0 and job.next_run.seconds > job.last_firing.scheduled_time.seconds


def test_clients_cannot_claim_to_be_cron(server):
    address, _, port = server.addresses["router"].rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=30)
    try:
        conn.request("GET", "/tasks/tick", headers={"X-AppEngine-Cron": "true"})
        response = conn.getresponse()
        assert response.status == 302  # login: admin — a client claiming to be cron is sent to sign in
        assert response.getheader("Location").startswith("/_ah/login")
    finally:
        conn.close()
    req_status, _, body = _fetch_with_header(server, "/echo")
    assert (req_status, body) == (200, b"absent")


def _fetch_with_header(server, path):
    import urllib.request
    req = urllib.request.Request(server.url.rstrip("/") + path, headers={"X-AppEngine-Cron": "true"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, dict(resp.headers), resp.read()
