"""Mail through the whole stack under ``kiln dev``: an app sends with kiln.api.mail (to the development outbox),
the router vouches for the signed-in user as a sender, and mail sent over SMTP to APP.mail.localhost reaches the
app as ``POST /_ah/mail/<address>``."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import textwrap

import grpc
import pytest

from kiln_platform import auth
from kiln.pb.mail.v1 import mail_pb2 as pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from tests.integration import apps
from tests.integration.apps import request, running, sign_in

pytestmark = pytest.mark.nats

APP_YAML = textwrap.dedent("""\
    application: mailapp
    runtime: python27
    api_version: 1
    threadsafe: true
    inbound_services:
    - mail
    handlers:
    - url: /_ah/mail/.+
      script: main.app
      login: admin
    - url: /.*
      script: main.app
""")

MAIN = textwrap.dedent('''
    import json, os
    from kiln.api import mail, memcache, users

    def reply(start_response, status, text):
        start_response(status, [("Content-Type", "text/plain")])
        return [text.encode()]

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        try:
            if path == "/send":
                mail.send_mail(sender="Robot <robot@mailapp.mail.localhost>", to="friend@example.org",
                               subject="from the app", body="hello", html="<b>hello</b>",
                               attachments=[("notes.txt", b"some notes")])
            elif path == "/send-as-user":
                mail.send_mail(sender=users.get_current_user().email(), to="friend@example.org",
                               subject="from a user", body="hi")
            elif path == "/send-from-appspotmail":
                # As Google's samples write it (GOOGLE_CLOUD_PROJECT is the app id there).
                mail.send_mail(sender=f"Sample <noreply@{os.environ['GOOGLE_CLOUD_PROJECT']}.appspotmail.com>",
                               to="friend@example.org", subject="from appspotmail", body="hi")
            elif path == "/send-from-another-apps-appspotmail":
                mail.send_mail(sender="noreply@another-app.appspotmail.com", to="friend@example.org",
                               subject="not mine", body="x")
            elif path == "/send-as-stranger":
                mail.send_mail(sender="stranger@example.com", to="friend@example.org", subject="nope", body="x")
            elif path == "/admins":
                mail.send_mail_to_admins(sender="robot@mailapp.mail.localhost", subject="alert", body="x")
            elif path.startswith("/_ah/mail/"):
                message = mail.InboundEmailMessage(environ["wsgi.input"].read())
                memcache.set("inbound", json.dumps({
                    "path": path, "content_type": environ.get("CONTENT_TYPE"), "sender": message.sender,
                    "to": message.to, "subject": message.subject, "body": message.body.decode(),
                    "attachments": [[a.filename, a.payload.decode().decode()] for a in message.attachments]}))
            elif path == "/inbound":
                return reply(start_response, "200 OK", memcache.get("inbound") or "")
        except mail.Error as exc:
            return reply(start_response, "403 Forbidden", type(exc).__name__ + ": " + str(exc))
        return reply(start_response, "200 OK", "done")
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("mailapp"), {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


def outbox(server):
    channel = grpc.insecure_channel(server.addresses["mail_svc"])
    try:
        stub = mail_pb2_grpc.MailServiceStub(channel)
        token = auth.mint_app_token(server._secret, server.app_id)
        return list(stub.ListOutbox(pb.ListOutboxRequest(), metadata=(("authorization", f"Bearer {token}"),),
                                    timeout=30).messages)
    finally:
        channel.close()


def wait_outbox(server, subject):
    found = []

    def present():
        found[:] = [m for m in outbox(server) if m.subject == subject]
        return found

    apps.wait_for(present, 20)
    return found


def test_mail_sent_by_the_app_lands_in_the_dev_outbox(server):
    status, _, body = request(server, "/send")
    assert (status, body) == (200, b"done")
    [kept] = wait_outbox(server, "from the app")
    assert kept.envelope_from == "robot@mailapp.mail.localhost" and list(kept.recipients) == ["friend@example.org"]
    message = email.message_from_bytes(kept.raw, policy=email.policy.default)
    assert message["From"] == "Robot <robot@mailapp.mail.localhost>"
    assert message.get_body(("plain",)).get_content().strip() == "hello"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "notes.txt"
    files = sorted((server.outbox_dir / "mailapp").glob("*.eml"))
    assert any(f.read_bytes() == kept.raw for f in files)


def test_signed_in_user_may_send_as_themselves(server):
    cookie = sign_in(server, "visitor@example.net")
    status, _, body = request(server, "/send-as-user", headers={"Cookie": cookie})
    assert (status, body) == (200, b"done")
    [kept] = wait_outbox(server, "from a user")
    assert kept.envelope_from == "visitor@example.net"


def test_app_may_send_from_app_engines_appspotmail_form_delivered_from_its_mail_domain(server):
    status, _, body = request(server, "/send-from-appspotmail")
    assert (status, body) == (200, b"done")
    [kept] = wait_outbox(server, "from appspotmail")
    assert kept.envelope_from == "noreply@mailapp.mail.localhost"
    message = email.message_from_bytes(kept.raw, policy=email.policy.default)
    assert message["From"] == "Sample <noreply@mailapp.mail.localhost>"


def test_app_may_not_send_from_another_apps_appspotmail_address(server):
    status, _, body = request(server, "/send-from-another-apps-appspotmail")
    assert status == 403
    assert body.startswith(b"InvalidSenderError: ")


def test_inbound_mail_to_several_recipients_gives_the_app_to_as_one_string(server):
    message = email.message.EmailMessage()
    message["From"] = "writer@example.com"
    message["To"] = "Support <support@mailapp.mail.localhost>, sales@mailapp.mail.localhost"
    message["Subject"] = "two of you"
    message.set_content("hello both")
    with smtp(server) as client:
        assert client.send_message(message) == {}
    apps.wait_for(lambda: json.loads(request(server, "/inbound")[2] or b"{}").get("subject") == "two of you", 20)
    got = json.loads(request(server, "/inbound")[2])
    assert got["to"] == "Support <support@mailapp.mail.localhost>, sales@mailapp.mail.localhost"


def test_app_may_not_send_as_a_stranger(server):
    status, _, body = request(server, "/send-as-stranger")
    assert status == 403
    assert body.startswith(b"InvalidSenderError: ")


def test_send_mail_to_admins_reaches_the_outbox(server):
    status, _, _ = request(server, "/admins")
    assert status == 200
    assert wait_outbox(server, "alert")


def smtp(server):
    host, _, port = server.addresses["mail_smtp"].rpartition(":")
    return smtplib.SMTP(host, int(port), timeout=30)


def test_inbound_mail_reaches_the_app_as_a_post_to_ah_mail(server):
    message = email.message.EmailMessage()
    message["From"] = "Writer <writer@example.com>"
    message["To"] = "support@mailapp.mail.localhost"
    message["Subject"] = "I need help"
    message.set_content("please help")
    message.add_attachment(b"log lines", maintype="text", subtype="plain", filename="app.log")
    with smtp(server) as client:
        refused = client.send_message(message)
    assert refused == {}
    status, _, body = request(server, "/inbound")
    got = json.loads(body)
    assert got["path"] == "/_ah/mail/support@mailapp.mail.localhost"
    assert got["content_type"] == "message/rfc822"
    assert got["sender"] == "Writer <writer@example.com>" and got["to"] == "support@mailapp.mail.localhost"
    assert got["subject"] == "I need help" and got["body"].strip() == "please help"
    assert got["attachments"] == [["app.log", "log lines"]]


def test_mail_for_other_domains_is_refused_at_rcpt(server):
    with smtp(server) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
            client.sendmail("writer@example.com", ["someone@example.com"], b"Subject: x\r\n\r\nbody\r\n")
    [(code, _)] = caught.value.recipients.values()
    assert code == 550


def test_clients_cannot_post_to_ah_mail_themselves(server):
    status, _, _ = request(server, "/_ah/mail/support@mailapp.mail.localhost", method="POST",
                           body=b"Subject: forged\r\n\r\nx", headers={"Content-Type": "message/rfc822",
                                                                       auth.PLATFORM_HEADER: "mail",
                                                                       auth.PLATFORM_SIGNATURE_HEADER: "1.forged"})
    assert status == 403
