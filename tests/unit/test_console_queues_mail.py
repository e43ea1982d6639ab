"""How the console lays out task queues and outbox messages (console/taskqueues.py, console/mail.py): pure
functions over real protobufs and real MIME messages, no sockets."""

from __future__ import annotations

import email.message

import pytest

from console import mail, taskqueues
from kiln.errors import BadRequestError
from kiln.pb.mail.v1 import mail_pb2 as ml
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as tq


@pytest.mark.parametrize(("per_second", "shown"), [(5.0, "5/s"), (0.5, "30/m"), (1 / 3600, "1/h"), (0.0, "0 (held)")])
def test_a_queues_rate_is_shown_as_queue_yaml_writes_it(per_second, shown):
    assert taskqueues.rate(tq.QueueStats(rate_per_second=per_second)) == shown


@pytest.mark.parametrize(("n", "shown"), [(0, "0 B"), (1023, "1023 B"), (2048, "2.0 KiB"), (3 * 1024 * 1024, "3.0 MiB"),
                                          (-1, "large (object store)")])
def test_a_payload_size_is_shown_for_people(n, shown):
    assert taskqueues.size(n) == shown


def test_a_queue_url_carries_its_name_and_page_encoded():
    assert taskqueues.queue_url("a-b", "12") == "/queues/tasks?queue=a-b&page=12"
    assert taskqueues.queue_url("x&y") == "/queues/tasks?queue=x%26y"


def test_an_overlong_field_is_refused_with_its_name():
    with pytest.raises(BadRequestError, match="^task: at most 600 characters$"):
        taskqueues.field({"task": "t" * 601}, "task")


def _outboxed(message: email.message.EmailMessage) -> ml.OutboxMessage:
    item = ml.OutboxMessage(message_id="<m1@example>", envelope_from="robot@app.example", subject=message["Subject"],
                            recipients=["ann@example.org"], raw=bytes(message))
    item.queued_at.FromSeconds(1_800_000_000)
    return item


def _message() -> email.message.EmailMessage:
    message = email.message.EmailMessage()
    message["From"] = "Robot <robot@app.example>"
    message["To"] = "Ann <ann@example.org>"
    message["Subject"] = "Hello"
    message.set_content("plain words")
    message.add_alternative("<p>html words</p>", subtype="html")
    message.add_attachment(b"\x00" * 300, maintype="application", subtype="octet-stream", filename="data.bin")
    return message


def test_a_message_is_split_into_its_plain_html_and_attachment_parts():
    shown = mail.shown(_outboxed(_message()))
    assert shown.text == "plain words\n"
    assert shown.html == "<p>html words</p>\n"
    assert shown.attachments == [mail.Attachment(name="data.bin", content_type="application/octet-stream", size=300)]
    assert ("Subject", "Hello") in shown.headers and ("To", "Ann <ann@example.org>") in shown.headers


def test_a_message_without_an_html_part_has_none():
    message = email.message.EmailMessage()
    message["Subject"] = "Plain"
    message.set_content("only text")
    shown = mail.shown(_outboxed(message))
    assert (shown.text, shown.html, shown.attachments) == ("only text\n", None, [])


def test_a_part_in_an_unknown_charset_is_shown_decoded_as_well_as_it_goes():
    raw = (b"Subject: odd\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-nonesuch\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n")
    item = ml.OutboxMessage(message_id="<m2@example>", subject="odd", raw=raw)
    assert mail.shown(item).text == "café\r\n"


def test_the_list_shows_the_envelope_sender_and_every_recipient():
    summary = mail.summary(_outboxed(_message()))
    assert (summary.sender, summary.to, summary.subject) == ("robot@app.example", "ann@example.org", "Hello")
    assert summary.url == "/mail/message?id=%3Cm1%40example%3E"
    assert summary.time == "2027-01-15 08:00:00 UTC"


def _dead_letter(attempts: int) -> ml.DeadLetter:
    letter = ml.DeadLetter(sequence=7, message_id="<m2@example>", envelope_from="robot@app.example",
                           recipients=["ann@example.org", "bob@example.org"], subject="Hi", reason="550 gone",
                           attempts=attempts)
    letter.queued_at.FromSeconds(1_800_000_000)
    letter.dead_at.FromSeconds(1_800_000_090)
    return letter


def test_a_dead_letter_is_listed_with_its_recipients_reason_attempts_and_times():
    assert mail.dead(_dead_letter(3)) == mail.Dead(
        sequence=7, subject="Hi", sender="robot@app.example", to="ann@example.org, bob@example.org", reason="550 gone",
        attempts="3", queued="2027-01-15 08:00:00 UTC", dead="2027-01-15 08:01:30 UTC")


def test_a_dead_letter_from_before_attempts_were_recorded_says_so():
    assert mail.dead(_dead_letter(0)).attempts == "not recorded"


def test_a_dead_letter_page_address_carries_its_token_encoded():
    assert mail.dead_url() == "/mail/dead"
    assert mail.dead_url("12&x") == "/mail/dead?page=12%26x"
