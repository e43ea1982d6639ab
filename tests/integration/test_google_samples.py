"""Google's own App Engine samples for bundled services run unmodified on kiln (issue 15).

The apps under ``tests/fixtures/google_samples/`` are Google's samples for the Python 3 runtime with bundled
services (``runtime: python312``/``python313``, ``app_engine_apis: true``, ``appengine-python-standard`` in
requirements.txt, the app wrapped with ``wrap_wsgi_app``), byte for byte as Google publishes them. Each runs
under real ``kiln dev`` on the Python its ``runtime:`` names, and is checked as Google's own sample tests check it
(their ``main_test.py`` deploys the sample, posts the form, then reads the request logs): the form, a mail sent
from ``demo-app@APP.appspotmail.com`` (delivered from the app's mail domain), and an inbound mail the app logs.
"""

from __future__ import annotations

import email.message
import email.policy
import pathlib
import shutil
import smtplib
import time
import urllib.parse

import grpc
import pytest

from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln.pb.mail.v1 import mail_pb2 as mail_pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln_platform import auth
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "google_samples" / "mail"
VARIANTS = ["flask", "wsgi", "django"]


@pytest.fixture(scope="module", params=VARIANTS)
def sample(request, tmp_path_factory):
    app_dir = tmp_path_factory.mktemp(f"mailsample{request.param}")
    shutil.copytree(SAMPLES / request.param, app_dir, dirs_exist_ok=True)
    with running(app_dir, {}, app_yaml=(app_dir / "app.yaml").read_text()) as srv:
        yield srv


def _metadata(server):
    return (("authorization", f"Bearer {auth.mint_app_token(server._secret, server.app_id)}"),)


def logged_lines(server) -> list[str]:
    channel = grpc.insecure_channel(server.addresses["logs_svc"])
    try:
        found = logs_pb2_grpc.LogsServiceStub(channel).Query(
            logs_pb2.QueryRequest(page_size=1000, include_app_logs=True), metadata=_metadata(server), timeout=30)
        return [line.message for log in found.logs for line in log.app_logs]
    finally:
        channel.close()


def wait_logged(server, text: str) -> str:
    found: list[str] = []

    def present():
        found[:] = [line for line in logged_lines(server) if text in line]
        return found

    apps.wait_for(present, 30)
    return found[0]


def outbox(server, subject: str) -> list[mail_pb.OutboxMessage]:
    channel = grpc.insecure_channel(server.addresses["mail_svc"])
    try:
        kept = mail_pb2_grpc.MailServiceStub(channel).ListOutbox(mail_pb.ListOutboxRequest(),
                                                                 metadata=_metadata(server), timeout=30)
        return [m for m in kept.messages if m.subject == subject]
    finally:
        channel.close()


def test_the_samples_form_is_served(sample):
    status, _, body = apps.request(sample, "/")
    assert status == 200
    assert b"<h1>Send Email from App Engine</h1>" in body


def test_the_sample_sends_mail_from_its_appspotmail_address_delivered_from_the_apps_mail_domain(sample):
    recipient = f"friend-{time.monotonic_ns()}@example.org"
    form = urllib.parse.urlencode({"email": recipient, "body": "hello there"})
    status, _, body = apps.request(sample, "/", method="POST", body=form,
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body) == (201, f"Successfully sent mail to {recipient}.".encode())
    found: list[mail_pb.OutboxMessage] = []
    apps.wait_for(lambda: found.extend(m for m in outbox(sample, "App Engine Outgoing Email")
                                       if list(m.recipients) == [recipient]) or found, 30)
    sent = found[0]
    assert sent.envelope_from == f"demo-app@{sample.app_id}.mail.localhost"
    message = email.message_from_bytes(sent.raw, policy=email.policy.default)
    assert message["From"] == f"demo-app@{sample.app_id}.mail.localhost"
    assert message.get_content().strip() == "hello there"
    wait_logged(sample, f"Successfully sent mail to {recipient}.")  # what the sample prints, in its request log


def test_the_sample_receives_inbound_mail_and_logs_it(sample):
    message = email.message.EmailMessage()
    message["From"] = "Writer <writer@example.com>"
    message["To"] = f"greetings@{sample.app_id}.mail.localhost"
    message["Subject"] = "Hello"
    message.set_content(f"inbound {time.monotonic_ns()}")
    host, _, port = sample.addresses["mail_smtp"].rpartition(":")
    with smtplib.SMTP(host, int(port), timeout=30) as client:
        assert client.send_message(message) == {}
    line = wait_logged(sample, f"Received greeting for greetings@{sample.app_id}.mail.localhost at ")
    assert line.endswith("from Writer <writer@example.com>") or "from Writer &lt;writer@example.com&gt;" in line
    wait_logged(sample, f"Text/plain body: {message.get_content().strip()}")
