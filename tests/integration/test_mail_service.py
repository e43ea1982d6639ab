"""mail_svc against a real SMTP relay (aiosmtpd with STARTTLS and AUTH) and a real nats-server: what the relay
receives, App Engine's sender rule, bad input, retries, dead letters, and exactly-once delivery when mail_svc is
killed with messages queued or in flight."""

from __future__ import annotations

import asyncio
import contextlib
import html
import http.client
import json
import re
import signal
import threading
import time
import uuid

import grpc
import nats
import pytest
from playwright.sync_api import expect, sync_playwright

from kiln_platform import auth
from kiln.api import mail
from kiln.pb.mail.v1 import mail_pb2 as pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln_platform.supervisor import free_port, nats_server_binary, python_module
from mail_svc import queue as mail_queue
from tests.integration import smtpservers
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, app_metadata, service_env
from tests.integration.consolekit import CHROMIUM, mark_document, not_reloaded
from tests.integration.test_console_signin import ANN, Visitor, start_cluster
from tests.unit.zips import nested, zipped

pytestmark = pytest.mark.nats

PLATFORM_SECRET = "mail-test-platform-secret"
RELAY_USER = ("kiln-relay-user", "relay password")
APP = "mailer"
ADMINS = "mailer=boss@example.com;ops@example.com"


class MailService:
    """One mail_svc process (restartable) and a stub to it."""

    counter = 0

    def __init__(self, supervisor, nats_url, relay, *extra, tmp_path=None):
        self.supervisor, self.nats_url, self.relay, self.extra = supervisor, nats_url, relay, extra
        self.child = None
        self.channel = None
        self.stub = None

    def start(self):
        MailService.counter += 1
        name = f"mail_svc-{MailService.counter}"
        ready = self.supervisor.run_dir / f"{name}.addr"
        args = ["--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", self.nats_url,
                "--admins", ADMINS, "--platform-secret", PLATFORM_SECRET, "--retry-min-seconds", "0.3",
                "--retry-max-seconds", "1", "--ack-wait-seconds", "2", "--workers", "2"]
        if self.relay is not None:
            args += ["--relay", self.relay.address, "--relay-ca-file", str(self.relay.cert_path),
                     "--relay-username", RELAY_USER[0]]
        env = {**service_env(), "KILN_MAIL_RELAY_PASSWORD": RELAY_USER[1]}
        self.child = self.supervisor.start(name, python_module("mail_svc", *args, *self.extra), env=env,
                                           ready_file=ready)
        self.channel = grpc.insecure_channel(self.child.address)
        self.stub = mail_pb2_grpc.MailServiceStub(self.channel)
        return self

    def kill(self):
        self.child.proc.send_signal(signal.SIGKILL)
        self.child.proc.wait(10)
        self.close()

    def stop(self):
        if self.child is not None and self.child.proc.poll() is None:
            self.child.proc.send_signal(signal.SIGTERM)
            self.child.proc.wait(20)
        self.close()

    def close(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def send(self, app=APP, user_email="", user_proof="", **fields):
        fields.setdefault("sender", "boss@example.com")
        fields.setdefault("subject", "hello")
        fields.setdefault("text_body", "a body")
        if "to" not in fields and "cc" not in fields and "bcc" not in fields:
            fields["to"] = ["someone@example.org"]
        request = pb.SendRequest(message=pb.MailMessage(**fields), signed_in_user_email=user_email,
                                 signed_in_user_proof=user_proof)
        return self.stub.Send(request, metadata=app_metadata(app), timeout=30)


@pytest.fixture(scope="module")
def nats_url(supervisor, tmp_path_factory):
    return f"nats://{supervisor.start_nats(tmp_path_factory.mktemp('mailnats'), name='nats-mail').address}"


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    with smtpservers.relay(tls_dir=tmp_path_factory.mktemp("relaytls"), credentials=RELAY_USER) as server:
        yield server


@pytest.fixture(scope="module")
def service(supervisor, nats_url, relay):
    svc = MailService(supervisor, nats_url, relay).start()
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def clean_relay(request):
    if "relay" in request.fixturenames:
        server = request.getfixturevalue("relay")
        server.replies.clear()
        server.data_replies.clear()
        server.gate.set()
    yield


def own_nats(supervisor, tmp_path):
    """A nats-server of the test's own: its mail queue is not shared with the module's mail service."""
    (tmp_path / "nats").mkdir()
    return f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}"


def received_by_id(relay, message_id, timeout=30.0):
    found = relay.wait_for(lambda msgs: any(m.message_id == message_id for m in msgs), timeout)
    return [m for m in found if m.message_id == message_id]


def error_code(exc):
    return dict(exc.trailing_metadata() or ()).get("kiln-error-code")


# --- delivery ------------------------------------------------------------------------------------------------------

def test_message_reaches_the_relay_over_starttls_with_auth(service, relay):
    sent = service.send(subject="over TLS")
    [got] = received_by_id(relay, sent.message_id)
    assert got.tls is True
    assert got.login == RELAY_USER[0]


def test_relay_gets_every_field_and_bcc_only_in_the_envelope(service, relay):
    sent = service.send(
        sender="Boss <boss@example.com>", to=["To One <one@example.org>"], cc=["two@example.org"],
        bcc=["hidden@example.org"], reply_to="replies@example.com", subject="Caf\u00e9 news",
        text_body="plain text", html_body="<p>html</p>",
        attachments=[pb.Attachment(file_name="notes.txt", data=b"attached bytes"),
                     pb.Attachment(file_name="logo.png", data=b"\x89PNG fake", content_id="<logo>")],
        headers=[pb.Header(name="In-Reply-To", value="<earlier@example.com>"),
                 pb.Header(name="List-Id", value="news.example.com")])
    [got] = received_by_id(relay, sent.message_id)
    assert got.mail_from == "boss@example.com"
    assert sorted(got.rcpt_tos) == ["hidden@example.org", "one@example.org", "two@example.org"]
    message = got.message
    assert "hidden@example.org" not in got.data.decode()
    assert message["To"] == "To One <one@example.org>" and message["Cc"] == "two@example.org"
    assert message["Reply-To"] == "replies@example.com"
    assert message["Subject"] == "Caf\u00e9 news"
    assert message["In-Reply-To"] == "<earlier@example.com>" and message["List-Id"] == "news.example.com"
    assert message.get_body(("plain",)).get_content().strip() == "plain text"
    assert message.get_body(("html",)).get_content().strip() == "<p>html</p>"
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert attachments["notes.txt"].get_payload(decode=True) == b"attached bytes"
    assert attachments["logo.png"]["Content-ID"] == "<logo>"
    assert attachments["logo.png"].get_content_type() == "image/png"


def test_large_message_travels_through_the_bodies_bucket(service, relay):
    big = bytes(range(256)) * 8192  # 2 MiB: over NATS's 1 MiB message limit
    sent = service.send(attachments=[pb.Attachment(file_name="big.bin", data=big)])
    [got] = received_by_id(relay, sent.message_id)
    [part] = list(got.message.iter_attachments())
    assert part.get_content() == big


def test_send_to_admins_reaches_every_administrator(service, relay):
    request = pb.SendToAdminsRequest(message=pb.MailMessage(sender="robot@mailer.mail.localhost",
                                                            subject="to admins", text_body="hi"))
    sent = service.stub.SendToAdmins(request, metadata=app_metadata(APP), timeout=30)
    [got] = received_by_id(relay, sent.message_id)
    assert sorted(got.rcpt_tos) == ["boss@example.com", "ops@example.com"]


def test_send_to_admins_without_administrators_is_refused(service):
    request = pb.SendToAdminsRequest(message=pb.MailMessage(sender="robot@noadmins.mail.localhost",
                                                            subject="x", text_body="y"))
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.SendToAdmins(request, metadata=app_metadata("noadmins"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_temporarily_refused_message_is_retried_until_the_relay_takes_it(service, relay):
    relay.data_replies.extend(["451 4.3.0 try later", "421 4.3.2 busy"])
    sent = service.send(subject="retried")
    [got] = received_by_id(relay, sent.message_id)
    assert got.message["Subject"] == "retried"
    assert relay.data_replies == []


async def dead_letters(nats_url):
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(mail_queue.DEAD_STREAM)
        out = []
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            try:
                msg = await js.get_msg(mail_queue.DEAD_STREAM, seq)
            except nats.js.errors.NotFoundError:
                continue
            out.append((pb.QueuedMail.FromString(msg.data), (msg.headers or {}).get("Kiln-Reason", "")))
        return out
    finally:
        await nc.close()


def wait_dead(nats_url, message_id, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [(q, why) for q, why in asyncio.run(dead_letters(nats_url)) if q.message_id == message_id]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{message_id} never reached the dead-letter stream")


def test_permanently_refused_message_goes_to_the_dead_letter_stream(service, relay, nats_url):
    relay.data_replies.append("554 5.7.1 rejected as spam")
    sent = service.send(subject="refused for good")
    [(queued, reason)] = wait_dead(nats_url, sent.message_id)
    assert "554" in reason and "spam" in reason
    assert queued.recipients == ["someone@example.org"]
    assert not any(m.message_id == sent.message_id for m in relay.received)


def test_refused_recipient_is_dead_lettered_while_the_others_get_the_message(service, relay, nats_url):
    relay.replies["nobody@example.org"] = "550 5.1.1 no such user"
    sent = service.send(to=["good@example.org", "nobody@example.org"], subject="partly")
    [got] = received_by_id(relay, sent.message_id)
    assert got.rcpt_tos == ["good@example.org"]
    [(queued, reason)] = wait_dead(nats_url, sent.message_id)
    assert list(queued.recipients) == ["nobody@example.org"] and "550" in reason


def dead_page(service, app=APP, **fields):
    return service.stub.ListDeadLetters(pb.ListDeadLettersRequest(**fields), metadata=app_metadata(app), timeout=30)


def test_a_recipient_refused_for_good_is_listed_as_a_dead_letter_with_its_reason(service, relay, nats_url):
    relay.replies["gone@example.org"] = "550 5.1.1 no such user here"
    sent = service.send(to=["gone@example.org"], subject="to nobody")
    wait_dead(nats_url, sent.message_id)
    newest = dead_page(service).dead_letters[0]
    assert (newest.message_id, newest.subject, newest.envelope_from, list(newest.recipients)) == (
        sent.message_id, "to nobody", "boss@example.com", ["gone@example.org"])
    assert "550" in newest.reason and "no such user here" in newest.reason
    assert newest.attempts == 1
    assert newest.queued_at.seconds > 0 and newest.dead_at.ToDatetime() >= newest.queued_at.ToDatetime()


def test_an_app_lists_only_its_own_dead_letters(service, relay, nats_url):
    relay.data_replies.append("554 5.7.1 rejected as spam")
    theirs = service.send(app="other-app", sender="robot@other-app.mail.localhost", subject="not yours")
    wait_dead(nats_url, theirs.message_id)
    assert theirs.message_id in {d.message_id for d in dead_page(service, app="other-app").dead_letters}
    assert theirs.message_id not in {d.message_id for d in dead_page(service, page_size=500).dead_letters}


def test_dead_letters_page_newest_first_without_gaps(service, relay, nats_url):
    app = "pager-app"
    sent = []
    for n in range(5):
        relay.data_replies.append("554 5.7.1 refused")
        sent.append(service.send(app=app, sender=f"robot@{app}.mail.localhost", subject=f"dead {n}").message_id)
        wait_dead(nats_url, sent[-1])  # one at a time: the relay's scripted replies go to the next message
    pages, token = [], ""
    while True:
        page = dead_page(service, app=app, page_size=2, page_token=token)
        pages.append([d.message_id for d in page.dead_letters])
        token = page.next_page_token
        if not token:
            break
    assert pages == [sent[4:2:-1], sent[2:0:-1], sent[:1]]


@pytest.mark.parametrize("fields, message", [
    ({"page_token": "12abc"}, "page_token: not a next_page_token of ListDeadLetters"),
    ({"page_token": "0"}, "page_token: not a next_page_token of ListDeadLetters"),
    ({"page_size": 501}, "page_size: must be between 0 and 500, got 501"),
    ({"page_size": -1}, "page_size: must be between 0 and 500, got -1")])
def test_a_bad_dead_letter_page_request_is_refused_precisely(service, fields, message):
    with pytest.raises(grpc.RpcError) as err:
        dead_page(service, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message


@pytest.fixture(scope="module")
def mail_console(supervisor, service):
    """The console of APP over the module's mail_svc (which delivers through the relay, as in a cluster)."""
    ready = supervisor.run_dir / "console-mail.addr"
    child = supervisor.start("console-mail", python_module(
        "console", "--listen", "127.0.0.1:0", "--app-id", APP, "--mail-addr", service.child.address,
        "--ready-file", str(ready)), env=service_env() | {"KILN_CONSOLE_SERVICE_SECRET": SECRET}, ready_file=ready)
    return child.address


def console_get(address, path):
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_the_consoles_dead_letter_page_shows_each_letter_with_its_reason_escaped(service, relay, nats_url,
                                                                                 mail_console):
    relay.replies["nobody@example.org"] = "550 5.1.1 <b>no</b> such user"
    sent = service.send(to=["nobody@example.org"], subject="<script>window.pwned = 1</script>")
    wait_dead(nats_url, sent.message_id)
    status, page = console_get(mail_console, "/mail/dead")
    assert status == 200
    row = page.split('<tbody>', 1)[1].split("</tr>", 1)[0]  # the newest letter
    assert '<th scope="row" class="subject">&lt;script&gt;window.pwned = 1&lt;/script&gt;</th>' in row
    assert '<td class="to">nobody@example.org</td>' in row
    assert "550 5.1.1 &lt;b&gt;no&lt;/b&gt; such user" in row
    assert '<td class="attempts">1</td>' in row
    assert "<script>" not in page


def test_the_consoles_mail_page_says_a_relay_keeps_no_outbox_and_links_the_dead_letters(mail_console):
    status, page = console_get(mail_console, "/mail")
    assert status == 200
    assert "delivered through a relay: no outbox" in page and 'href="/mail/dead"' in page


def test_the_consoles_dead_letter_pages_go_back_to_the_oldest_without_duplicates_or_gaps(service, relay,
                                                                                       mail_console):
    relay.replies["gone@example.org"] = "550 5.1.1 gone"
    subjects = {f"paged {n}" for n in range(51)}
    for subject in sorted(subjects):
        service.send(to=["gone@example.org"], subject=subject)

    def listed():
        return {d.subject for d in dead_page(service, page_size=500).dead_letters}
    wait_for(lambda: subjects <= listed(), 60)  # every refused message has reached the dead letters
    total = len(dead_page(service, page_size=500).dead_letters)
    shown, path = [], "/mail/dead"
    while path:
        status, page = console_get(mail_console, path)
        assert status == 200
        shown += re.findall(r'<th scope="row" class="subject">([^<]*)</th>', page)
        older = re.search(r'<a rel="next" href="([^"]+)"', page)
        path = html.unescape(older.group(1)) if older else ""
    assert len(shown) == len(set(shown)) == total > 50
    assert subjects <= set(shown)
    status, page = console_get(mail_console, "/mail/dead?page=not-a-token")
    assert status == 400 and "page_token: not a next_page_token of ListDeadLetters" in page


def refused_letter(service, relay, app=APP, **fields):
    """A message the relay refuses for good, once it is a dead letter (its ListDeadLetters entry)."""
    relay.data_replies.append("554 5.7.1 refused")
    sent = service.send(app=app, **fields)
    found = []

    def listed():  # through the RPC (a browser test's Playwright holds the thread's event loop)
        found[:] = [d for d in dead_page(service, app=app, page_size=500).dead_letters
                    if d.message_id == sent.message_id]
        return found
    wait_for(listed, 20)
    return found[0]


@pytest.fixture(scope="module")
def mail_cluster(supervisor, tmp_path_factory, nats_url, service):
    """A cluster's console (behind sign-in) whose control plane forwards to the module's relay-delivering mail_svc."""
    return start_cluster(supervisor, tmp_path_factory, nats_url, "mail", "", "", "--mail-addr", service.child.address)


def test_a_clusters_console_shows_its_apps_dead_letters_with_their_reasons_through_the_gateway(service, relay,
                                                                                            mail_cluster):
    app_a, app_b = mail_cluster.app_a, mail_cluster.app_b
    refused_letter(service, relay, app=app_a, sender=f"robot@{app_a}.mail.localhost", subject="refused for ann")
    refused_letter(service, relay, app=app_b, sender=f"robot@{app_b}.mail.localhost", subject="refused for bob")
    visitor = Visitor(mail_cluster)
    status, _, page = visitor.sign_in(ANN, f"http://{mail_cluster.host(app_a)}/mail/dead")
    assert status == 200
    assert "refused for ann" in page and "554 5.7.1 refused" in page
    assert "refused for bob" not in page
    status, _, page = visitor.request("GET", f"http://{mail_cluster.host(app_a)}/mail")
    assert status == 200 and "delivered through a relay: no outbox" in page


def delete_dead(service, sequence, app=APP):
    return service.stub.DeleteDeadLetter(pb.DeleteDeadLetterRequest(sequence=sequence), metadata=app_metadata(app),
                                         timeout=30)


def test_an_app_deletes_its_own_dead_letter_and_a_second_delete_is_not_found(service, relay):
    letter = refused_letter(service, relay, subject="delete me")
    delete_dead(service, letter.sequence)
    assert letter.message_id not in {d.message_id for d in dead_page(service, page_size=500).dead_letters}
    with pytest.raises(grpc.RpcError) as err:
        delete_dead(service, letter.sequence)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == f"no dead letter {letter.sequence} of app 'mailer' (it may have been deleted)"


def test_deleting_another_apps_dead_letter_is_not_found_and_keeps_it(service, relay):
    letter = refused_letter(service, relay, app="other-app", sender="robot@other-app.mail.localhost")
    with pytest.raises(grpc.RpcError) as err:
        delete_dead(service, letter.sequence)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert letter.message_id in {d.message_id for d in dead_page(service, app="other-app").dead_letters}


def test_deleting_dead_letter_zero_is_refused_precisely(service):
    with pytest.raises(grpc.RpcError) as err:
        delete_dead(service, 0)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "sequence: name the dead letter (its DeadLetter.sequence)"


def test_deleting_a_dead_letter_in_the_console_without_the_pages_token_is_refused_and_keeps_it(service, relay,
                                                                                              mail_console):
    letter = refused_letter(service, relay, subject="kept without a token")
    host, _, port = mail_console.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/mail/dead/delete", body=f"sequence={letter.sequence}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        page = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 403 and "security token" in page
    assert letter.message_id in {d.message_id for d in dead_page(service, page_size=500).dead_letters}


@pytest.fixture
def console_tab(mail_console):
    """A tab of Debian's Chromium on the mail console. Playwright for this test alone (not consolekit's module-wide
    browser): its event loop would stay on the thread, and the module's other tests use asyncio.run."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser.new_page(base_url=f"http://{mail_console}")
        finally:
            browser.close()


@pytest.mark.browser
def test_deleting_a_dead_letter_in_the_console_asks_first_and_removes_it(service, relay, console_tab):
    letter = refused_letter(service, relay, subject="delete me in the browser")
    page = console_tab
    page.goto("/mail/dead")
    row = page.locator("table.dead tbody tr", has_text="delete me in the browser")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    row.get_by_role("button", name="Delete").click()
    expect(page.locator("#dead-message")).to_have_text("Deleted the dead letter.")
    expect(row).to_have_count(0)
    assert asked == ["Delete the dead letter delete me in the browser? It is not sent."]
    assert letter.message_id not in {d.message_id for d in dead_page(service, page_size=500).dead_letters}


@pytest.mark.browser
def test_the_consoles_older_dead_letters_load_without_reloading_the_page(service, relay, console_tab):
    relay.replies["gone@example.org"] = "550 5.1.1 gone"
    have = len(dead_page(service, page_size=500).dead_letters)
    for n in range(max(0, 51 - have)):
        service.send(to=["gone@example.org"], subject=f"older {n}")
    wait_for(lambda: len(dead_page(service, page_size=500).dead_letters) >= 51, 60)
    total = len(dead_page(service, page_size=500).dead_letters)
    page = console_tab
    page.goto("/mail/dead")
    mark_document(page)
    first = page.locator("table.dead tbody th").all_inner_texts()
    assert len(first) == 50
    page.get_by_role("link", name="Older").click()
    expect(page.get_by_role("link", name="Newest")).to_be_visible()
    older = page.locator("table.dead tbody th").all_inner_texts()
    assert len(older) == min(total - 50, 50)
    assert not_reloaded(page)


def test_deferred_recipient_is_retried_on_its_own(service, relay):
    relay.replies["later@example.org"] = "450 4.2.1 mailbox busy"
    sent = service.send(to=["now@example.org", "later@example.org"], subject="deferred")
    first = received_by_id(relay, sent.message_id)
    assert [m.rcpt_tos for m in first] == [["now@example.org"]]
    relay.replies.clear()
    found = relay.wait_for(lambda msgs: sum(m.message_id == sent.message_id for m in msgs) == 2)
    assert [m.rcpt_tos for m in found if m.message_id == sent.message_id] == [["now@example.org"],
                                                                               ["later@example.org"]]


# --- the sender rule ----------------------------------------------------------------------------------------------

def test_an_administrator_may_send(service):
    assert service.send(sender="ops@example.com").message_id


def test_any_address_at_the_apps_mail_domain_may_send(service):
    assert service.send(sender="Robot <no-reply@mailer.mail.localhost>").message_id


@pytest.mark.parametrize("sender, envelope, header", [
    ("noreply@mailer.appspotmail.com", "noreply@mailer.mail.localhost", "noreply@mailer.mail.localhost"),
    ("Mailer Robot <robot@Mailer.AppSpotMail.com>", "robot@mailer.mail.localhost",
     "Mailer Robot <robot@mailer.mail.localhost>"),
    ("Caf\u00e9 <news@mailer.appspotmail.com>", "news@mailer.mail.localhost", "Caf\u00e9 <news@mailer.mail.localhost>"),
])
def test_app_engines_appspotmail_sender_is_delivered_from_the_apps_mail_domain(service, relay, sender, envelope,
                                                                               header):
    sent = service.send(sender=sender, subject=f"appspotmail {envelope}")
    [got] = received_by_id(relay, sent.message_id)
    assert got.mail_from == envelope
    assert got.message["From"] == header
    assert "appspotmail.com" not in got.data.decode(errors="replace")


def test_send_to_admins_from_appspotmail_is_delivered_from_the_apps_mail_domain(service, relay):
    sent = service.stub.SendToAdmins(pb.SendToAdminsRequest(message=pb.MailMessage(
        sender="alerts@mailer.appspotmail.com", subject="admins from appspotmail", text_body="x")),
        metadata=app_metadata(APP), timeout=30)
    [got] = received_by_id(relay, sent.message_id)
    assert got.mail_from == "alerts@mailer.mail.localhost" and got.message["From"] == "alerts@mailer.mail.localhost"


def test_the_signed_in_user_may_send_with_the_routers_proof(service):
    proof = auth.sign_user(PLATFORM_SECRET, APP, "visitor@example.net", time.time() + 60)
    sent = service.send(sender="visitor@example.net", user_email="visitor@example.net", user_proof=proof)
    assert sent.message_id


@pytest.mark.parametrize("case", ["no proof", "forged proof", "proof for another app", "proof for another user",
                                  "expired proof", "another apps domain", "stranger", "another apps appspotmail",
                                  "appspotmail without an app", "appspotmail as a subdomain",
                                  "the app's appspotmail under another domain"])
def test_anyone_else_is_refused_as_sender(service, case):
    now = time.time()
    user, proof, sender = "visitor@example.net", "", "visitor@example.net"
    if case == "forged proof":
        proof = auth.sign_user("not the platform secret", APP, user, now + 60)
    elif case == "proof for another app":
        proof = auth.sign_user(PLATFORM_SECRET, "other-app", user, now + 60)
    elif case == "proof for another user":
        proof = auth.sign_user(PLATFORM_SECRET, APP, "someone-else@example.net", now + 60)
    elif case == "expired proof":
        proof = auth.sign_user(PLATFORM_SECRET, APP, user, now - 5)
    elif case == "another apps domain":
        sender = "robot@other-app.mail.localhost"
    elif case == "stranger":
        user, sender = "", "stranger@example.com"
    elif case == "another apps appspotmail":
        sender = "robot@other-app.appspotmail.com"
    elif case == "appspotmail without an app":
        sender = "robot@appspotmail.com"
    elif case == "appspotmail as a subdomain":
        sender = "robot@x.mailer.appspotmail.com"
    elif case == "the app's appspotmail under another domain":
        sender = "robot@mailer.appspotmail.com.example.net"
    with pytest.raises(grpc.RpcError) as caught:
        service.send(sender=sender, user_email=user, user_proof=proof)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_code(caught.value) == "UNAUTHORIZED_SENDER"


# --- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, code", [
    ({"to": ["victim@example.org\r\nBcc: spam@example.net"]}, "INVALID_EMAIL"),
    ({"sender": "boss@example.com\nBcc: spam@example.net"}, "INVALID_EMAIL"),
    ({"subject": "hi\r\nBcc: spam@example.net"}, "BAD_REQUEST"),
    ({"reply_to": "not an address"}, "INVALID_EMAIL"),
    ({"to": ["a@example.org, b@example.org"]}, "INVALID_EMAIL"),
    ({"to": ["user@-bad-.example"]}, "INVALID_EMAIL"),
    ({"to": [], "cc": [], "bcc": []}, "MISSING_RECIPIENTS"),
    ({"text_body": "", "html_body": ""}, "BAD_REQUEST"),
    ({"headers": [pb.Header(name="Bcc", value="spam@example.net")]}, "INVALID_HEADER_NAME"),
    ({"headers": [pb.Header(name="References", value="<a@b>\r\nBcc: spam@example.net")]}, "INVALID_HEADER_NAME"),
    ({"headers": [pb.Header(name="Bad Name", value="x")]}, "INVALID_HEADER_NAME"),
    ({"attachments": [pb.Attachment(file_name="run.exe", data=b"MZ")]}, "INVALID_ATTACHMENT_TYPE"),
    ({"attachments": [pb.Attachment(file_name="", data=b"x")]}, "INVALID_ATTACHMENT_TYPE"),
    ({"attachments": [pb.Attachment(file_name="a.txt", data=b"x", content_id="no brackets")]},
     "INVALID_CONTENT_ID"),
])
def test_malformed_message_gets_a_precise_error_and_nothing_is_sent(service, relay, fields, code):
    if fields.get("to") == [] and "cc" in fields:
        fields = {**fields}
        request = pb.SendRequest(message=pb.MailMessage(sender="boss@example.com", subject="s", text_body="b"))
        call = lambda: service.stub.Send(request, metadata=app_metadata(APP), timeout=30)  # noqa: E731
    else:
        call = lambda: service.send(**fields)  # noqa: E731
    before = len(relay.received)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    assert error_code(caught.value) == code
    assert service.send(subject="still serving").message_id
    time.sleep(0.3)
    assert all("spam@example.net" not in m.rcpt_tos for m in relay.received[before:])


def test_zip_holding_a_blocked_file_is_refused(service):
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hi")
        archive.writestr("tools/setup.bat", "echo")
    with pytest.raises(grpc.RpcError) as caught:
        service.send(attachments=[pb.Attachment(file_name="bundle.zip", data=buffer.getvalue())])
    assert error_code(caught.value) == "INVALID_ATTACHMENT_TYPE"
    assert "setup.bat" in caught.value.details()


DISGUISED_ATTACHMENTS = {
    "trailing dot": ("x.exe.", b"MZ"), "trailing space": ("x.exe ", b"MZ"), "data stream": ("x.exe::$DATA", b"MZ"),
    "version suffix": ("x.exe;", b"MZ"), "upper case": ("X.EXE", b"MZ"), "full-width": ("x.\uff45\uff58\uff45", b"MZ"),
    "lookalike dot": ("x\u2024bat", b"MZ"), "exe in a nested zip": ("bundle.zip", nested(2, {"setup.exe": "MZ"})),
    "disguised exe three zips deep": ("bundle.zip", nested(3, {"tools/setup.exe. ": "MZ"})),
    "nested zip without its name": ("bundle.zip", zipped({"photos.dat": zipped({"run.vbs": "x"})})),
    "zips nested too deep": ("bundle.zip", nested(6, {"a.txt": "harmless"})),
}


@pytest.mark.parametrize("name, data", DISGUISED_ATTACHMENTS.values(), ids=DISGUISED_ATTACHMENTS.keys())
def test_disguised_blocked_attachments_are_refused_and_nothing_is_sent(service, relay, name, data):
    subject = f"refused {uuid.uuid4().hex}"
    with pytest.raises(grpc.RpcError) as caught:
        service.send(subject=subject, attachments=[pb.Attachment(file_name=name, data=data)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(caught.value) == "INVALID_ATTACHMENT_TYPE"
    assert "not allowed" in caught.value.details() or "deep" in caught.value.details()
    after = service.send(subject="still serving")  # the service keeps serving; its queue holds nothing refused
    received_by_id(relay, after.message_id)
    assert all(m.message["Subject"] != subject for m in relay.received)


def test_oversized_message_is_refused(supervisor, nats_url, relay):
    small = MailService(supervisor, nats_url, relay, "--max-mail-bytes", "100000").start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            small.send(attachments=[pb.Attachment(file_name="big.bin", data=b"x" * 200_000)])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit" in caught.value.details()
        assert small.send(attachments=[pb.Attachment(file_name="ok.bin", data=b"x" * 1000)]).message_id
    finally:
        small.stop()


def test_calls_without_a_valid_app_token_are_refused(service):
    request = pb.SendRequest(message=pb.MailMessage(sender="a@b.com", to=["c@d.com"], subject="s", text_body="b"))
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.Send(request, metadata=(("authorization", "Bearer mailer.forged"),), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- the Python API against the service ----------------------------------------------------------------------------

@pytest.fixture
def as_app(service, monkeypatch):
    from kiln.api import _rpc
    monkeypatch.setenv("KILN_MAIL_ADDR", service.child.address)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, APP))
    _rpc.reset()
    yield
    _rpc.reset()


def test_send_mail_raises_app_engines_errors(as_app):
    with pytest.raises(mail.InvalidSenderError):
        mail.send_mail("stranger@example.com", "x@example.org", "s", "b")
    with pytest.raises(mail.InvalidAttachmentTypeError):
        mail.send_mail("boss@example.com", "x@example.org", "s", "b", attachments=[("a.vbs", b"x")])
    with pytest.raises(mail.InvalidHeaderNameError):
        mail.send_mail("boss@example.com", "x@example.org", "s", "b", headers={"X-Custom": "1"})
    with pytest.raises(mail.MissingRecipientsError):
        mail.EmailMessage(sender="boss@example.com", subject="s", body="b").send()


@pytest.mark.parametrize("name, data", [DISGUISED_ATTACHMENTS[k] for k in ("trailing dot", "exe in a nested zip")],
                         ids=["trailing dot", "exe in a nested zip"])
def test_send_mail_refuses_disguised_attachments_with_app_engines_error(as_app, name, data):
    with pytest.raises(mail.InvalidAttachmentTypeError):
        mail.send_mail("boss@example.com", "x@example.org", "s", "b", attachments=[(name, data)])


def test_email_message_is_delivered_through_the_api(as_app, relay):
    message = mail.EmailMessage(sender="boss@example.com", to="a@example.org, B <b@example.org>",
                                subject="via the API", body="text", html="<i>html</i>",
                                attachments=[mail.Attachment("a.csv", b"1,2\n")])
    message.send()
    found = relay.wait_for(lambda msgs: any(m.message["Subject"] == "via the API" for m in msgs))
    [got] = [m for m in found if m.message["Subject"] == "via the API"]
    assert sorted(got.rcpt_tos) == ["a@example.org", "b@example.org"]
    inbound = mail.InboundEmailMessage(got.data)
    assert inbound.subject == "via the API"
    assert [(a.filename, a.payload.decode()) for a in inbound.attachments] == [("a.csv", b"1,2\n")]
    assert [ct for ct, _ in inbound.bodies()] == ["text/html", "text/plain"]


# --- durability -------------------------------------------------------------------------------------------------------

def ids_received(relay):
    return [m.message_id for m in relay.received]


def test_messages_queued_while_the_relay_is_down_are_delivered_once_it_is_up(supervisor, tmp_path):
    nats_url = own_nats(supervisor, tmp_path)
    down = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER, port=free_port())
    svc = MailService(supervisor, nats_url, down).start()
    try:
        sent = [svc.send(subject=f"while down {n}").message_id for n in range(3)]
        time.sleep(1.5)  # connection refused, a few times
        down.start()
        try:
            down.wait_for(lambda msgs: {m.message_id for m in msgs} >= set(sent), timeout=30)
            time.sleep(1)
            assert sorted(ids_received(down)) == sorted(sent)
        finally:
            down.stop()
    finally:
        svc.stop()


def test_killed_mail_service_delivers_each_message_exactly_once_after_restart(supervisor, tmp_path):
    nats_url = own_nats(supervisor, tmp_path)
    """SIGKILL with messages queued, one held mid-delivery by the relay, and some delivered: after a restart
    every message reaches the relay, none twice."""
    relay = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER).start()
    svc = MailService(supervisor, nats_url, relay)
    try:
        relay.accept_before_holding = 3
        svc.start()
        sent = [svc.send(subject=f"crash {n}").message_id for n in range(12)]
        relay.wait_for(lambda msgs: len(msgs) >= 3 and relay.held >= 1, timeout=30)
        time.sleep(0.5)  # the delivered ones are recorded and acknowledged
        svc.kill()
        delivered_before = len(relay.received)
        assert 3 <= delivered_before < 12
        relay.gate.set()
        svc.start()
        relay.wait_for(lambda msgs: {m.message_id for m in msgs} >= set(sent), timeout=60)
        time.sleep(3)  # past ack_wait: any redelivery would have happened by now
        assert sorted(ids_received(relay)) == sorted(sent)
    finally:
        svc.stop()
        relay.stop()


def test_a_message_recorded_as_delivered_is_not_sent_again(supervisor, tmp_path):
    nats_url = own_nats(supervisor, tmp_path)
    """The state a crash between the relay's 250 and the stream acknowledgement leaves: the message was handed
    out and its delivery recorded, but it is still unacknowledged on the stream. When it comes back, mail_svc
    acknowledges it without sending it (and sends the one whose delivery was not recorded)."""
    relay = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER).start()
    svc = MailService(supervisor, nats_url, relay)

    async def leave_crash_state():
        nc = await nats.connect(nats_url)
        try:
            queue = mail_queue.MailQueue(nc, mail_queue.QueueSettings(ack_wait_seconds=2))
            await queue.open()
            for n, recorded in ((0, True), (1, False)):
                queued = pb.QueuedMail(app_id=APP, message_id=f"<crash-state-{n}-{time.time()}@test>",
                                       envelope_from="boss@example.com", recipients=["r@example.org"],
                                       subject=f"crash state {n}")
                queued.queued_at.GetCurrentTime()
                raw = f"Message-ID: {queued.message_id}\r\nSubject: x\r\n\r\nbody\r\n".encode()
                if recorded:
                    await queue.record_delivery(mail_queue.delivery_key(queued.message_id, ["r@example.org"]),
                                                mail_queue.Outcome())
                await queue.put(queued, raw)
                ids.append(queued.message_id)
            # A worker took both and died before acknowledging them.
            taken = await (await queue.subscribe()).fetch(2, timeout=5)
            assert len(taken) == 2
        finally:
            await nc.close()

    ids: list[str] = []
    try:
        asyncio.run(leave_crash_state())
        svc.start()
        relay.wait_for(lambda msgs: ids[1] in {m.message_id for m in msgs}, timeout=30)
        time.sleep(1)
        assert ids_received(relay) == [ids[1]]
    finally:
        svc.stop()
        relay.stop()


def test_two_replicas_share_the_queue_and_deliver_each_message_once(supervisor, tmp_path):
    nats_url = own_nats(supervisor, tmp_path)
    relay = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER).start()
    first, second = MailService(supervisor, nats_url, relay), MailService(supervisor, nats_url, relay)
    try:
        first.start()
        second.start()
        sent = [(first if n % 2 else second).send(subject=f"replicas {n}").message_id for n in range(20)]
        relay.wait_for(lambda msgs: {m.message_id for m in msgs} >= set(sent), timeout=60)
        time.sleep(2.5)
        assert sorted(ids_received(relay)) == sorted(sent)
    finally:
        first.stop()
        second.stop()
        relay.stop()


# --- one sender per delivery: claims ------------------------------------------------------------------------------
# Two workers can hold one message at once: a nats-server killed outright forgets recent consumer state and hands
# out again, as a first delivery, a message a worker is still sending; a reconnected client still holds messages
# the old connection fetched. The delivery's claim in the bucket keeps the second holder from sending it too.

def queue_drained(nats_url, timeout=60.0):
    """Wait until every message of the mail queue was acknowledged (a work queue drops a message only then)."""

    async def remaining():
        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().stream_info(mail_queue.STREAM)).state.messages
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while (left := asyncio.run(remaining())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == 0, f"{left} messages still on the mail queue after {timeout}s"


def queued_with_claim(nats_url, subject, claimed_at):
    """Put one message on the queue whose delivery another worker claimed at ``claimed_at``; returns its id."""

    async def put():
        nc = await nats.connect(nats_url)
        try:
            queue = mail_queue.MailQueue(nc, mail_queue.QueueSettings(ack_wait_seconds=2))
            await queue.open()
            queued = pb.QueuedMail(app_id=APP, message_id=f"<{subject.replace(' ', '-')}-{time.time()}@test>",
                                   envelope_from="boss@example.com", recipients=["r@example.org"], subject=subject)
            queued.queued_at.GetCurrentTime()
            key = mail_queue.delivery_key(queued.message_id, ["r@example.org"])
            claim = await queue.claim(key)
            assert isinstance(claim, mail_queue.Claim)
            bucket = await nc.jetstream().key_value(mail_queue.DELIVERED_BUCKET)
            await bucket.put(key, json.dumps({"claimed_by": "another worker", "at": claimed_at}).encode())
            await queue.put(queued, f"Message-ID: {queued.message_id}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode())
            return queued.message_id, key
        finally:
            await nc.close()

    return asyncio.run(put())


@contextlib.contextmanager
def claim_kept_fresh(nats_url, key):
    """Refresh another worker's claim on ``key`` twice a second while the block runs (a live worker's refresh)."""
    done = threading.Event()

    async def refresh():
        nc = await nats.connect(nats_url)
        try:
            bucket = await nc.jetstream().key_value(mail_queue.DELIVERED_BUCKET)
            while not done.is_set():
                await bucket.put(key, json.dumps({"claimed_by": "another worker", "at": time.time()}).encode())
                await asyncio.get_running_loop().run_in_executor(None, done.wait, 0.5)
        finally:
            await nc.close()

    refresher = threading.Thread(target=asyncio.run, args=(refresh(),))
    refresher.start()
    try:
        yield
    finally:
        done.set()
        refresher.join(30)


def record_delivery(nats_url, key):
    async def record():
        nc = await nats.connect(nats_url)
        try:
            queue = mail_queue.MailQueue(nc, mail_queue.QueueSettings(ack_wait_seconds=2))
            await queue.open()
            await queue.record_delivery(key, mail_queue.Outcome())
        finally:
            await nc.close()

    asyncio.run(record())


def test_a_message_another_worker_is_sending_is_not_sent_again(supervisor, tmp_path):
    """Another holder's fresh claim: the message waits; once that holder records the delivery, it is acknowledged
    without being sent."""
    nats_url = own_nats(supervisor, tmp_path)
    relay = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER).start()
    svc = MailService(supervisor, nats_url, relay)
    try:
        _, key = queued_with_claim(nats_url, "claimed elsewhere", time.time())
        with claim_kept_fresh(nats_url, key):  # as the live worker sending it does, however slowly mail_svc starts
            svc.start()
            marker = svc.send(subject="after the claimed one").message_id
            received_by_id(relay, marker)
        record_delivery(nats_url, key)
        queue_drained(nats_url)
        assert ids_received(relay) == [marker]
    finally:
        svc.stop()
        relay.stop()


def test_a_claim_left_by_a_dead_worker_is_taken_over_and_the_message_sent_once(supervisor, tmp_path):
    """A claim older than ack_wait belongs to a worker that died before sending: the message is sent, once."""
    nats_url = own_nats(supervisor, tmp_path)
    relay = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER).start()
    svc = MailService(supervisor, nats_url, relay)
    try:
        message_id, _ = queued_with_claim(nats_url, "claimed by the dead", time.time() - 3600)
        svc.start()
        received_by_id(relay, message_id)
        queue_drained(nats_url)
        assert ids_received(relay) == [message_id]
    finally:
        svc.stop()
        relay.stop()


def test_messages_in_flight_when_nats_server_is_killed_are_each_delivered_once(supervisor, tmp_path):
    """kill -9 of nats-server while mail_svc delivers, then a restart on the same store: every message the
    service accepted reaches the relay exactly once."""
    # A fixed port, so that nats-server can be killed and started again where its clients look.
    port = free_port()
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "nats-store")]
    nats_url = f"nats://127.0.0.1:{port}"
    server = supervisor.start(f"nats-{tmp_path.name}", argv, ready_port=port)
    relay = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER).start()
    svc = MailService(supervisor, nats_url, relay)
    sent: list[str] = []
    try:
        svc.start()
        for round_ in range(3):
            relay.gate.clear()  # deliveries wait at DATA, so the kill finds messages in workers' hands
            sent += [svc.send(subject=f"round {round_} message {n}").message_id for n in range(10)]
            relay.wait_for(lambda msgs: relay.held >= 2, timeout=30)
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(10)
            relay.gate.set()
            server = supervisor.start(f"nats-{tmp_path.name}-{round_}", argv, ready_port=port)
            relay.wait_for(lambda msgs: {m.message_id for m in msgs} >= set(sent), timeout=60)
            queue_drained(nats_url)
        assert sorted(ids_received(relay)) == sorted(sent)
    finally:
        svc.stop()
        relay.stop()
        server.proc.send_signal(signal.SIGTERM)
