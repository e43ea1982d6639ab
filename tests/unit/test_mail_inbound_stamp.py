"""Inbound mail is stamped as a receiving mail server stamps it (mail_svc.inbound.stamp)."""

from __future__ import annotations

import email
import email.policy

from mail_svc.inbound import stamp

PLAIN = b"From: a@example.com\r\nTo: b@app.mail.localhost\r\nSubject: hi\r\n\r\nbody line\r\n"


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_a_message_without_date_or_message_id_gets_both():
    message = parsed(stamp(PLAIN, helo="client.example", peer="192.0.2.1", by="mail.mail.localhost"))
    assert message["Date"].datetime is not None
    assert message["Message-ID"].endswith("@mail.mail.localhost>")


def test_a_senders_own_date_and_message_id_are_kept_and_not_repeated():
    raw = b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <x@sender>\r\n" + PLAIN
    message = parsed(stamp(raw, helo="client.example", peer="192.0.2.1", by="mail.mail.localhost"))
    assert message.get_all("Date") == ["Mon, 02 Mar 2026 10:00:00 +0000"]
    assert message.get_all("Message-ID") == ["<x@sender>"]


def test_every_message_gets_a_received_line_naming_the_client_and_kiln():
    received = parsed(stamp(PLAIN, helo="client.example", peer="192.0.2.1", by="mail.mail.localhost"))["Received"]
    assert received.startswith("from client.example ([192.0.2.1]) by mail.mail.localhost (kiln mail_svc)")


def test_the_message_itself_is_kept_byte_for_byte_below_the_stamp():
    assert stamp(PLAIN, helo="h", peer="p", by="b").endswith(PLAIN)


def test_a_hostile_helo_cannot_add_headers_of_its_own():
    raw = stamp(PLAIN, helo="evil\r\nBcc: victim@example.com", peer="192.0.2.1\r\nX: y", by="mail.mail.localhost")
    message = parsed(raw)
    assert message["Bcc"] is None and message["X"] is None
    assert message["Received"].startswith("from evilBcc:victim@example.com ([192.0.2.1X:y])")
