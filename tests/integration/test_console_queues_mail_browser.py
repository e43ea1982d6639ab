"""The console's Task queues and Mail pages in a real browser (Debian's Chromium driven by Playwright) against a
real ``kiln dev``: each test clicks through a page, performs its action and checks the effect in taskqueue_svc or
mail_svc themselves. Each task-queue test has a queue of its own (queue.yaml below), so they do not interfere."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from console import security
from deploy.dev import DevServer
from kiln.api import _rpc
from kiln.pb.mail.v1 import mail_pb2 as ml
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as tq
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform.appcalls import AppCredentials
from tests.integration.apps import wait_for
from tests.integration.consolekit import browser, console_dev, console_request, page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.nats, pytest.mark.browser]

QUEUE_YAML = """queue:
- name: listed
  rate: 2/s
  bucket_size: 7
- name: runs
  rate: 20/s
- name: deletes
  rate: 5/s
- name: purges
  rate: 5/s
- name: pauses
  rate: 5/s
- name: pages
  rate: 5/s
- name: pulled
  mode: pull
- name: guarded
  rate: 5/s
"""
LATER = 3600.0  # countdown of tasks that must wait while a test runs
HOSTILE_HTML = ('<p id="hello">Hello <b>friend</b></p><script>window.pwned = 1; parent.pwned = 1</script>'
                '<img src="x" onerror="window.pwned = 2; parent.pwned = 2">')


class Calls:
    """taskqueue_svc and mail_svc of a ``kiln dev``, called as its app."""

    def __init__(self, server: DevServer) -> None:
        self.app_id = server.app_id
        self._meta = AppCredentials(server.secrets["service"]).metadata(server.app_id)
        self._channels = [_rpc.channel(server.addresses[n]) for n in ("taskqueue_svc", "mail_svc")]
        self.tq = taskqueue_pb2_grpc.TaskQueueServiceStub(self._channels[0])
        self.mail = mail_pb2_grpc.MailServiceStub(self._channels[1])

    def call(self, method, request):
        return method(request, metadata=self._meta, timeout=30)

    def add(self, queue: str, *names: str, **kwargs) -> None:
        tasks = [tq.Task(queue=queue, name=n, countdown_seconds=LATER, **kwargs) for n in names]
        for start in range(0, len(tasks), 100):
            results = self.call(self.tq.Add, tq.AddRequest(tasks=tasks[start:start + 100])).results
            assert [r.error for r in results] == [""] * len(results[:100])

    def names(self, queue: str) -> list[str]:
        answer = self.call(self.tq.ListTasks, tq.ListTasksRequest(queue=queue, page_size=100))
        return [t.name for t in answer.tasks]

    def stats(self, queue: str) -> tq.QueueStats:
        return self.call(self.tq.QueueStats, tq.QueueStatsRequest(queues=[queue])).queues[0]

    def outbox(self) -> list[ml.OutboxMessage]:
        return list(self.call(self.mail.ListOutbox, ml.ListOutboxRequest()).messages)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[DevServer]:
    app_dir = tmp_path_factory.mktemp("console-queues") / "app"
    app_dir.mkdir()
    (app_dir / "queue.yaml").write_text(QUEUE_YAML)
    with console_dev(app_dir) as server:
        yield server


@pytest.fixture(scope="module")
def services(dev) -> Iterator[Calls]:
    calls = Calls(dev)
    yield calls
    calls.close()


def _row(page: Page, task: str):
    return page.locator(f'table.tasks tr[data-task="{task}"]')


# --- task queues -------------------------------------------------------------------------------------------------


def test_the_queues_page_lists_each_queue_with_rate_bucket_backlog_and_state(page, services):
    services.add("listed", "l1", "l2", "l3")
    page.goto("/queues")
    row = page.locator('table.queues tr[data-queue="listed"]')
    expect(row.locator("td")).to_have_text(["push", "2/s", "7", "no limit", "3", "0", "0", "running"])
    expect(page.locator('table.queues tr[data-queue="pulled"] td').first).to_have_text("pull")
    expect(page.locator('table.queues tr[data-queue="default"]')).to_have_count(1)


def test_a_queue_lists_its_tasks_with_eta_retries_method_and_url(page, services):
    services.add("listed", "shown", url="/work/shown?x=<b>1</b>", method="PUT", payload=b"abc")
    eta = services.call(services.tq.ListTasks, tq.ListTasksRequest(queue="listed", page_size=100)).tasks
    expected_eta = [t for t in eta if t.name == "shown"][0].eta.ToDatetime(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    page.goto("/queues")
    page.get_by_role("link", name="listed", exact=True).click()
    row = _row(page, "shown")
    expect(row.locator(".method")).to_have_text("PUT")
    expect(row.locator(".url")).to_have_text("/work/shown?x=<b>1</b>")  # shown as text, never parsed
    expect(row.locator(".retries")).to_have_text("0")
    expect(row.locator(".eta")).to_have_text(f"{expected_eta} UTC")
    expect(row.locator("td").nth(4)).to_have_text("3 B")


def test_run_now_sends_the_task_to_the_app_and_it_leaves_the_queue(page, services):
    services.add("runs", "soon", "stays", url="/tasks/soon")
    page.goto("/queues/tasks?queue=runs")
    _row(page, "soon").get_by_role("button", name="Run now").click()
    expect(page.locator(".notice.ok")).to_have_text(re.compile(r"^Task soon is due now"))
    wait_for(lambda: services.names("runs") == ["stays"], 60)  # the app answered 200: done, tombstoned


def test_deleting_a_task_asks_first_and_dismissing_keeps_it(page, services):
    services.add("deletes", "kept")
    page.goto("/queues/tasks?queue=deletes")
    messages: list[str] = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.dismiss()))
    _row(page, "kept").get_by_role("button", name="Delete").click()
    assert messages == ["Delete task kept?"]
    expect(_row(page, "kept")).to_have_count(1)
    assert "kept" in services.names("deletes")


def test_deleting_a_task_after_confirming_removes_it_from_the_queue(page, services):
    services.add("deletes", "doomed")
    page.goto("/queues/tasks?queue=deletes")
    page.once("dialog", lambda dialog: dialog.accept())
    _row(page, "doomed").get_by_role("button", name="Delete").click()
    expect(page.locator(".notice.ok")).to_have_text("Deleted task doomed.")
    expect(_row(page, "doomed")).to_have_count(0)
    assert "doomed" not in services.names("deletes")


def test_acting_on_a_task_deleted_meanwhile_from_a_stale_page_says_it_is_gone(page, services):
    services.add("deletes", "stale")
    page.goto("/queues/tasks?queue=deletes")
    services.call(services.tq.Delete, tq.DeleteRequest(queue="deletes", task_names=["stale"]))
    _row(page, "stale").get_by_role("button", name="Run now").click()
    expect(page.locator("#messages .notice.error")).to_have_text("task 'stale' was deleted already")
    page.once("dialog", lambda dialog: dialog.accept())
    _row(page, "stale").get_by_role("button", name="Delete").click()
    expect(page.locator("#messages .notice.error")).to_have_text(
        "task stale already ran or was deleted: nothing was deleted")


def test_purging_a_queue_asks_first_and_empties_it(page, services):
    services.add("purges", "p1", "p2")
    page.goto("/queues/tasks?queue=purges")
    messages: list[str] = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    page.get_by_role("button", name="Purge queue").click()
    expect(page.locator(".notice.ok")).to_have_text("Purged purges: every task of it is deleted.")
    assert messages == ["Purge queue purges? Every task of it is deleted."]
    expect(page.locator("table.tasks")).to_have_count(0)
    assert services.names("purges") == []


def test_pausing_and_resuming_a_queue_changes_its_state_in_the_service(page, services):
    page.goto("/queues/tasks?queue=pauses")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#tq-state")).to_have_text("paused")
    assert services.stats("pauses").paused
    page.goto("/queues")
    expect(page.locator('table.queues tr[data-queue="pauses"] .state')).to_have_text("paused")
    page.goto("/queues/tasks?queue=pauses")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#tq-state")).to_have_text("running")
    assert not services.stats("pauses").paused


def test_the_task_list_pages_without_reloading(page, services):
    services.add("pages", *[f"t{n:03d}" for n in range(55)])
    page.goto("/queues/tasks?queue=pages")
    page.evaluate("window.notReloaded = true")
    expect(page.locator("table.tasks tbody tr")).to_have_count(50)
    page.get_by_role("link", name="Next page").click()
    expect(page.locator("table.tasks tbody th")).to_have_text([f"t{n:03d}" for n in range(50, 55)])
    assert page.evaluate("window.notReloaded === true")
    assert "page=" in page.url


def test_a_pull_queue_lists_its_tasks_without_run_now(page, services):
    services.call(services.tq.Add, tq.AddRequest(tasks=[tq.Task(queue="pulled", name="job", method="PULL",
                                                                 payload=b"xy", tag=b"blue")]))
    page.goto("/queues/tasks?queue=pulled")
    expect(_row(page, "job").locator(".method")).to_have_text("PULL")
    expect(_row(page, "job").locator(".url")).to_have_text("tag blue")
    expect(_row(page, "job").get_by_role("button", name="Run now")).to_have_count(0)


def test_an_unknown_queue_in_the_address_is_a_precise_error(page):
    response = page.goto("/queues/tasks?queue=nosuch")
    assert response is not None and response.status == 404
    expect(page.locator(".notice.error")).to_have_text(re.compile("nosuch"))


@pytest.mark.parametrize("action", ["run", "delete", "purge", "pause"])
def test_a_queue_action_without_the_pages_token_is_refused_and_changes_nothing(dev, services, action):
    services.add("guarded", f"kept-{action}")
    before = services.names("guarded")
    _, headers, _ = console_request(dev, "GET", "/queues")
    cookie = headers["set-cookie"].split(";")[0]
    status, _, html = console_request(dev, "POST", f"/queues/{action}", body=f"queue=guarded&task=kept-{action}",
                               headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
    assert status == 403 and "security token" in html
    assert services.names("guarded") == before
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=LATER / 2)
    waiting = services.call(services.tq.ListTasks, tq.ListTasksRequest(queue="guarded")).tasks
    assert all(t.eta.ToDatetime(datetime.UTC) > soon for t in waiting)  # none was made due
    assert not services.stats("guarded").paused


@pytest.mark.parametrize("path", ["/queues", "/queues/tasks?queue=default", "/mail", "/mail/message?id=x"])
def test_the_new_pages_carry_the_strict_content_security_policy(dev, path):
    _, headers, _ = console_request(dev, "GET", path)
    assert headers["content-security-policy"] == security.CSP
    assert headers["x-content-type-options"] == "nosniff"


# --- mail --------------------------------------------------------------------------------------------------------


def _send(services: Calls, subject: str, **kwargs) -> None:
    message = ml.MailMessage(sender=f"Robot <robot@{services.app_id}.appspotmail.com>", to=["Ann <ann@example.org>"],
                             subject=subject, **kwargs)
    services.call(services.mail.Send, ml.SendRequest(message=message))
    wait_for(lambda: any(m.subject == subject for m in services.outbox()), 60)


def test_the_mail_page_lists_messages_with_sender_recipients_subject_and_time(page, services):
    _send(services, "Your <b>order</b>", text_body="Thanks")
    page.goto("/mail")
    row = page.locator("table.mails tbody tr", has_text="Your <b>order</b>")
    expect(row.locator(".from")).to_have_text(f"robot@{services.app_id}.mail.localhost")
    expect(row.locator(".to")).to_have_text("ann@example.org")
    expect(row.locator(".time")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))


def test_a_message_shows_its_envelope_plain_part_and_attachments_with_sizes(page, services):
    _send(services, "Invoice 42", text_body="Total: 12 EUR\nBye", cc=["carl@example.org"],
          attachments=[ml.Attachment(file_name="invoice.pdf", data=b"%PDF" + b"0" * 1020),
                       ml.Attachment(file_name="notes.txt", data=b"hello")])
    page.goto("/mail")
    page.get_by_role("link", name="Invoice 42").click()
    expect(page.locator("#mail-subject")).to_have_text("Invoice 42")
    expect(page.locator("#mail-text")).to_have_text("Total: 12 EUR\nBye")
    envelope = page.locator("#mail-envelope")
    expect(envelope).to_contain_text("ann@example.org, carl@example.org")
    expect(envelope).to_contain_text("Cc")
    expect(page.locator("#mail-attachments li")).to_have_text(
        ["invoice.pdf application/pdf, 1024 bytes", "notes.txt text/plain, 5 bytes"])


def test_a_script_in_a_mails_html_does_not_run(page, services):
    _send(services, "Hostile", text_body="plain", html_body=HOSTILE_HTML)
    page.goto("/mail")
    page.get_by_role("link", name="Hostile").click()
    frame = page.frame_locator("#mail-html")
    expect(frame.locator("#hello")).to_have_text("Hello friend")  # the HTML part is rendered
    assert page.locator("#mail-html").get_attribute("sandbox") == ""
    page.wait_for_load_state("load")
    inner = [f for f in page.frames if f != page.main_frame]
    assert len(inner) == 1
    assert inner[0].evaluate("window.pwned === undefined")
    assert page.evaluate("window.pwned === undefined")


def test_an_unknown_message_is_a_precise_error(page):
    response = page.goto("/mail/message?id=%3Cnope%40example%3E")
    assert response is not None and response.status == 404
    expect(page.locator(".notice.error")).to_have_text("the outbox has no message <nope@example>")


def test_the_mail_pages_dead_letter_link_shows_none_under_kiln_dev(page):
    # kiln dev keeps mail in its outbox (no relay refuses any): the page is there and says so; letters a relay
    # refused are shown by test_mail_service.py's console tests.
    page.goto("/mail")
    page.get_by_role("link", name="Dead letters").click()
    expect(page.locator("h1")).to_contain_text("Dead letters")
    expect(page.locator("#dead-letters .empty")).to_have_text(
        "No dead letters: all the app's mail was delivered or is still being tried.")
