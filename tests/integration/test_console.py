"""The console's guards and its place in ``kiln dev``, over plain HTTP against a real ``kiln dev``: CSRF tokens,
the Content-Security-Policy, the Host check, errors shown while it keeps serving, and the CLI's console port."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator

import pytest

from console import security
from deploy.dev import DevServer
from kiln.pb.cron.v1 import cron_pb2 as cr
from kiln.pb.memcache.v1 import memcache_pb2 as mc
from tests.integration.apps import THREADSAFE_YAML
from tests.integration.conftest import ROOT
from tests.integration.consolekit import MAIN, AsApp, console_dev, console_request

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[DevServer]:
    with console_dev(tmp_path_factory.mktemp("console-http") / "app") as server:
        yield server


@pytest.fixture(scope="module")
def services(dev) -> Iterator[AsApp]:
    calls = AsApp(dev)
    yield calls
    calls.close()


def _session(dev: DevServer) -> tuple[str, str]:
    """A browser session: its cookie (name=value) and the token its pages carry."""
    status, headers, html = console_request(dev, "GET", "/memcache")
    assert status == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    return headers["set-cookie"].split(";")[0], token.group(1)


def _seed(services: AsApp) -> None:
    services.call(services.memcache.Set, mc.SetRequest(items=[mc.Item(key=b"kept", value=b"1", flags=1)]))


def _kept(services: AsApp) -> bool:
    return bool(services.call(services.memcache.Get, mc.GetRequest(keys=[b"kept"])).items)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_an_action_without_the_pages_token_is_refused_and_changes_nothing(dev, services):
    _seed(services)
    cookie, _ = _session(dev)
    status, _, html = console_request(dev, "POST", "/memcache/flush", headers={**FORM, "Cookie": cookie}, body="")
    assert status == 403
    assert "security token" in html
    assert _kept(services)


def test_an_action_with_another_sessions_token_is_refused(dev, services):
    _seed(services)
    cookie, _ = _session(dev)
    _, theirs = _session(dev)
    status, _, _ = console_request(dev, "POST", "/memcache/flush", headers={**FORM, "Cookie": cookie},
                            body=urllib.parse.urlencode({"csrf_token": theirs}))
    assert status == 403
    assert _kept(services)


def test_an_action_from_another_origin_is_refused_even_with_the_token(dev, services):
    _seed(services)
    cookie, token = _session(dev)
    status, _, html = console_request(dev, "POST", "/memcache/flush", body="",
                               headers={**FORM, "Cookie": cookie, security.HEADER: token,
                                        "Origin": "http://evil.example"})
    assert status == 403
    assert "another site" in html
    assert _kept(services)


def test_an_action_with_the_sessions_token_is_done(dev, services):
    _seed(services)
    cookie, token = _session(dev)
    status, _, _ = console_request(dev, "POST", "/memcache/flush", headers={**FORM, "Cookie": cookie},
                            body=urllib.parse.urlencode({"csrf_token": token}))
    assert status == 200
    assert not _kept(services)


def _report_job(services: AsApp) -> cr.Job:
    jobs = services.call(services.cron.ListJobs, cr.ListJobsRequest()).jobs
    return next(job for job in jobs if job.url == "/tasks/report")


def test_running_a_cron_job_without_the_pages_token_is_refused_and_runs_nothing(dev, services):
    cookie, _ = _session(dev)
    status, _, html = console_request(dev, "POST", "/cron/run", headers={**FORM, "Cookie": cookie},
                               body=urllib.parse.urlencode({"key": _report_job(services).key}))
    assert status == 403
    assert "security token" in html
    assert not _report_job(services).HasField("last_firing")


def test_running_a_cron_job_that_is_gone_says_so_and_the_console_keeps_serving(dev):
    cookie, token = _session(dev)
    status, _, html = console_request(dev, "POST", "/cron/run", headers={**FORM, "Cookie": cookie},
                               body=urllib.parse.urlencode({"csrf_token": token, "key": "0123abcd"}))
    assert status == 404
    assert "has no cron job &#39;0123abcd&#39;" in html
    assert console_request(dev, "GET", "/cron")[0] == 200


def test_the_session_cookie_is_http_only_and_same_site_strict(dev):
    _, headers, _ = console_request(dev, "GET", "/logs")
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


@pytest.mark.parametrize("path", ["/logs", "/datastore", "/memcache", "/static/console.css", "/no-such-page",
                                  "/logs?level=loud", "/datastore/indexes", "/mail/dead"])
def test_every_response_carries_the_strict_content_security_policy(dev, path):
    _, headers, _ = console_request(dev, "GET", path)
    assert headers["content-security-policy"] == security.CSP
    assert "'unsafe-inline'" not in security.CSP and "script-src 'self'" in security.CSP
    assert headers["x-content-type-options"] == "nosniff"


def test_a_host_other_than_the_consoles_is_refused(dev):
    status, headers, _ = console_request(dev, "GET", "/logs", headers={"Host": "rebound.example:80"})
    assert status == 421
    assert headers["content-security-policy"] == security.CSP


def test_bad_input_gets_a_precise_error_and_the_console_keeps_serving(dev):
    status, _, html = console_request(dev, "GET", "/datastore/entity?key=%3Cscript%3E")
    assert status == 400
    assert "not an entity key: &#39;&lt;script&gt;&#39;" in html  # the input is named, escaped
    status, _, html = console_request(dev, "GET", "/datastore?kind=K&cursor=%25%25")
    assert status == 400 and "cursor: not a page of this table" in html
    assert console_request(dev, "GET", "/logs")[0] == 200


def test_a_service_refusal_is_shown_in_the_page(dev):
    status, _, html = console_request(dev, "GET", "/logs?page=bm90LWEtdG9rZW4")
    assert status == 400
    assert "page_token: not a token returned by this service" in html


@pytest.mark.parametrize("after", ["", "soon", "1" * 20, "-5"])
def test_a_live_tail_poll_without_a_time_of_the_list_is_refused(dev, after):
    status, _, html = console_request(dev, "GET", f"/logs/tail?after={after}")
    assert status == 400 and "after: not a time of this list" in html
    assert console_request(dev, "GET", "/logs/tail?after=0")[0] == 200


# --- kiln dev ----------------------------------------------------------------------------------------------------


def _app(tmp_path) -> str:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(THREADSAFE_YAML)
    (app_dir / "main.py").write_text(MAIN)
    return str(app_dir)


def test_kiln_dev_prints_the_consoles_address_and_serves_it_there(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "dev", _app(tmp_path), "--port", "0",
                             "--console-port", "0", "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        lines = []
        assert proc.stdout is not None
        while not lines or "console" not in lines[-1]:
            line = proc.stdout.readline()
            assert line, f"kiln dev ended before printing the console's address: {lines}"
            lines.append(line)
        found = re.search(r"console \(dashboard, versions, logs, datastore, memcache, cron, task queues, mail\) at "
                          r"http://127\.0\.0\.1:(\d+)/$", lines[-1].strip())
        assert found, lines[-1]
        conn = http.client.HTTPConnection("127.0.0.1", int(found.group(1)), timeout=30)
        conn.request("GET", "/logs")
        resp = conn.getresponse()
        assert resp.status == 200 and b"Request logs" in resp.read()
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_a_console_port_in_use_stops_kiln_dev_with_one_line_naming_console_port(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "deploy.cli", "dev", _app(tmp_path), "--port", "0",
                               "--console-port", str(port), "--data-dir", str(tmp_path / "data")],
                              capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        (f"kiln dev: 127.0.0.1:{port} is already in use (another kiln dev, or another server?); stop it, or serve on "
         f"another port: kiln dev APP_DIR --console-port {port + 1}")]
    assert not (tmp_path / "data" / "run" / "nats-server.log").exists()  # nothing was started
