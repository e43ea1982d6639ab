"""An app writing to Cloud Logging with ``google-cloud-logging`` (as Google's Django Blobstore sample does) gets its
entries in its own request log, through real kiln parts under ``kiln dev``: the client library finds its credentials
and project on the metadata server (answered in the app's process), its requests (requests → urllib3) are carried by
the runtime's HTTP client and ``entries:write`` is answered in the process (runtime.cloudlogging); logs_svc keeps the
lines with the request. Parsing and validation in detail: tests/unit/test_cloudlogging.py."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import textwrap
import urllib.parse

import grpc
import pytest

from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln_platform import auth
from tests.integration import apps, webservers
from tests.integration.apps import post_to_upload_form, request, running

pytestmark = pytest.mark.nats

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "google_samples" / "blobstore" / "django"

MAIN = textwrap.dedent('''
    import json
    import urllib.parse
    import requests
    from google.api_core import exceptions
    from google.cloud import logging

    client = logging.Client()
    logger = client.logger("plain-app")
    WRITE = "https://logging.googleapis.com/v2/entries:write"

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        answer = "ok"
        if path == "/text":
            logger.log_text("hello from log_text", severity="WARNING")
        elif path == "/struct":
            logger.log_struct({"photo": "k1", "size": 3}, severity="ERROR")
        elif path == "/default":
            logger.log_text("no severity given")
        elif path == "/bad":
            bad = {"logName": f"projects/{client.project}/logs/plain-app", "entries": [{"textPayload": 1}]}
            resp = client._http.post(WRITE, data=json.dumps(bad))
            answer = json.dumps([resp.status_code, resp.json()])
        elif path == "/requests":
            target = urllib.parse.parse_qs(environ["QUERY_STRING"])["url"][0]
            resp = requests.post(target, data="a=1", headers={"X-From": "requests"})
            answer = json.dumps([resp.status_code, resp.json()])
        elif path == "/list":
            try:
                list(client.list_entries(max_results=1))
            except exceptions.GoogleAPICallError as exc:
                answer = json.dumps([exc.code, exc.message])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer.encode()]
''')


DIAGNOSTIC = '{"logging.googleapis.com/diagnostic":'


def query(server) -> list[logs_pb2.RequestLog]:
    channel = grpc.insecure_channel(server.addresses["logs_svc"])
    try:
        token = auth.mint_app_token(server.secrets["service"], server.app_id)
        found = logs_pb2_grpc.LogsServiceStub(channel).Query(
            logs_pb2.QueryRequest(page_size=1000, include_app_logs=True),
            metadata=(("authorization", f"Bearer {token}"),))
        return list(found.logs)
    finally:
        channel.close()


def logged_with(server, text: str) -> logs_pb2.RequestLog:
    """The one request log holding an app log line that contains ``text`` (waiting for logs_svc to have it)."""
    found: list[logs_pb2.RequestLog] = []

    def holding() -> list[logs_pb2.RequestLog]:
        found[:] = [r for r in query(server) if any(text in line.message for line in r.app_logs)]
        return found

    apps.wait_for(holding, 20)
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def target():
    with webservers.serving("127.0.0.2") as web:
        yield web.base


@pytest.fixture(scope="module")
def plain(tmp_path_factory, target):
    app_dir = tmp_path_factory.mktemp("cloudlogging")
    # The Django sample's requirements (google-cloud-logging 3.5.0 and its dependencies, requests and urllib3 2).
    shutil.copy(SAMPLE / "requirements.txt", app_dir / "requirements.txt")
    with running(app_dir, {"main.py": MAIN}, app_yaml="runtime: python313\n",
                 urlfetch_allow_internal="127.0.0.2/32") as srv:
        yield srv


@pytest.fixture(scope="module")
def django_sample(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("cloudloggingdjango")
    shutil.copytree(SAMPLE, app_dir, dirs_exist_ok=True)
    with running(app_dir, {}, app_yaml=(app_dir / "app.yaml").read_text()) as srv:
        yield srv


def app_log_of(server, path: str) -> list[tuple[int, str]]:
    """The lines of the plain app's log (``plain-app: …``) in the log of one request to ``path`` (the request log
    also holds the DEBUG lines of the app's libraries, urllib3's among them), without the diagnostic entry
    google-cloud-logging adds to its first write in a process (Cloud Logging keeps it too)."""
    status, _, answer = request(server, path)
    assert status == 200, answer
    return [(line.level, line.message) for line in _wait_for_request(server, path)[0].app_logs
            if line.message.startswith("plain-app:") and DIAGNOSTIC not in line.message]


def _wait_for_request(server, path: str) -> list[logs_pb2.RequestLog]:
    found: list[logs_pb2.RequestLog] = []

    def logged() -> list[logs_pb2.RequestLog]:
        found[:] = [r for r in query(server) if r.resource == path]
        return found

    apps.wait_for(logged, 20)
    assert len(found) == 1
    return found


def test_log_text_becomes_a_line_of_the_requests_log_at_its_severity_prefixed_with_the_log_name(plain):
    assert app_log_of(plain, "/text") == [(logs_pb2.LOG_LEVEL_WARNING, "plain-app: hello from log_text")]


def test_log_struct_becomes_a_line_of_compact_json_at_its_severity(plain):
    assert app_log_of(plain, "/struct") == [(logs_pb2.LOG_LEVEL_ERROR, 'plain-app: {"photo":"k1","size":3}')]


def test_an_entry_without_a_severity_is_logged_at_info(plain):
    assert app_log_of(plain, "/default") == [(logs_pb2.LOG_LEVEL_INFO, "plain-app: no severity given")]


def test_a_bad_write_gets_cloud_loggings_error_shape_with_400_and_the_app_keeps_serving(plain):
    status, _, answer = request(plain, "/bad")
    code, error = json.loads(answer)
    assert (status, code, error["error"]["code"], error["error"]["status"]) == (200, 400, 400, "INVALID_ARGUMENT")
    assert "entries[0].textPayload" in error["error"]["message"]
    assert request(plain, "/text")[0] == 200


def test_reading_entries_is_refused_as_not_implemented_naming_what_kiln_answers(plain):
    status, _, answer = request(plain, "/list")
    code, message = json.loads(answer)
    assert (status, code) == (200, 501)
    assert "kiln answers only POST https://logging.googleapis.com/v2/entries:write" in message


def test_the_django_samples_photo_key_is_logged_with_its_upload_request(django_sample):
    _, _, page = request(django_sample, "/")
    photo = os.urandom(20_000)
    status, headers, answer = post_to_upload_form(django_sample, page, photo, "cat.png", "image/png")
    assert status == 302, answer
    key = urllib.parse.urlsplit(headers["location"]).path.removeprefix("/view_photo/")
    upload = logged_with(django_sample, f"Photo key: {key}")
    assert (upload.method, upload.status) == ("POST", 302)
    assert [(line.level, line.message) for line in upload.app_logs if "Photo key" in line.message] == [
        (logs_pb2.LOG_LEVEL_INFO, f"django-app-logs: Photo key: {key}")]
    status, headers, shown = request(django_sample, urllib.parse.urlsplit(headers["location"]).path)
    assert (status, headers["content-type"], shown) == (200, "image/png", photo)


def test_requests_through_urllib3_is_carried_by_url_fetch(plain, target):
    status, _, answer = request(plain, "/requests?" + urllib.parse.urlencode({"url": target + "/echo"}))
    code, echoed = json.loads(answer)
    assert (status, code, echoed["method"], echoed["body"], echoed["headers"]["X-From"]) == (
        200, 200, "POST", "a=1", "requests")
    assert echoed["headers"]["User-Agent"].endswith(f"appid: {plain.app_id})")  # URL Fetch's, as on App Engine
