"""Checking an app's message and rendering it as the RFC 5322 bytes that go to the relay.

Every field is checked before anything is queued (:func:`render` raises one of :mod:`mail_svc.errors`, naming
the field), so a message is either queued whole or refused whole. Rendering uses the standard library's
``email`` package with the SMTP policy (CRLF line ends, encoded non-ASCII headers); a header value can never
carry a line break of its own, so no field can add headers.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import time
import uuid

from kiln import mailrules
from kiln.pb.mail.v1 import mail_pb2 as pb
from mail_svc.errors import (BadMessageError, InvalidAttachmentTypeError, InvalidContentIdError, InvalidEmailError,
                             InvalidHeaderNameError, MessageTooLargeError, MissingRecipientsError)

MAX_SUBJECT = 1000  # characters; longer subjects are folded by any mailer, but nobody needs more


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A checked message ready for the queue."""

    message_id: str
    envelope_from: str
    recipients: list[str]
    raw: bytes
    subject: str


def check_address(value: str, field: str) -> str:
    """``value`` if it is one valid mailbox; else InvalidEmailError naming ``field``."""
    problem = mailrules.address_problem(value)
    if problem:
        raise InvalidEmailError(f"{field}: invalid email address {value!r}: {problem}")
    return value


def delivery_key(message_id: str, recipients: list[str]) -> str:
    """The key that names one delivery of a message to these recipients (queue de-duplication, delivery
    records, outbox files)."""
    return hashlib.sha256("\n".join([message_id, *sorted(recipients)]).encode()).hexdigest()


def new_message_id(app_id: str, mail_domain: str) -> str:
    """A fresh RFC 5322 Message-ID under the app's mail domain."""
    return f"<{uuid.uuid4().hex}@{app_id}.{mail_domain}>"


def render(msg: pb.MailMessage, *, recipients_override: list[str] | None = None, app_id: str, mail_domain: str,
           max_bytes: int, message_id: str | None = None, now: float | None = None) -> Rendered:
    """Check ``msg`` and render it. ``recipients_override`` (the admins, for SendToAdmins) replaces to/cc/bcc."""
    check_address(msg.sender, "sender")
    if msg.reply_to:
        check_address(msg.reply_to, "reply_to")
    if recipients_override is None:
        to, cc, bcc = list(msg.to), list(msg.cc), list(msg.bcc)
        for field, values in (("to", to), ("cc", cc), ("bcc", bcc)):
            for value in values:
                check_address(value, field)
        if not (to or cc or bcc):
            raise MissingRecipientsError("the message has no recipient: give to, cc or bcc")
    else:
        to, cc, bcc = list(recipients_override), [], []
    if mailrules.has_control(msg.subject.replace("\t", " ")):
        raise BadMessageError("subject: contains a line break or control character")
    if len(msg.subject) > MAX_SUBJECT:
        raise BadMessageError(f"subject: longer than {MAX_SUBJECT} characters")
    if not (msg.text_body or msg.html_body):
        raise BadMessageError("body: a message needs a plain text body or an HTML body")
    for header in msg.headers:
        problem = mailrules.header_problem(header.name, header.value)
        if problem:
            raise InvalidHeaderNameError(f"headers: {problem}")
    for attachment in msg.attachments:
        problem = mailrules.attachment_problem(attachment.file_name, attachment.data)
        if problem:
            raise InvalidAttachmentTypeError(f"attachments: {problem}")
        if attachment.content_id:
            problem = mailrules.content_id_problem(attachment.content_id)
            if problem:
                raise InvalidContentIdError(f"attachments: {problem}")
    budget = sum(len(a.data) for a in msg.attachments) + len(msg.text_body) + len(msg.html_body)
    if budget > max_bytes:
        raise MessageTooLargeError(f"the message is {budget} bytes before encoding; the limit is {max_bytes}")

    message_id = message_id or new_message_id(app_id, mail_domain)
    out = mailrules.build_mime(
        sender=msg.sender, to=to, cc=cc, reply_to=msg.reply_to, subject=msg.subject, body=msg.text_body,
        html=msg.html_body, amp_html=msg.amp_html_body,
        attachments=[(a.file_name, a.data, a.content_id) for a in msg.attachments],
        headers=[(h.name, h.value) for h in msg.headers])
    out["Date"] = email.utils.formatdate(now if now is not None else time.time(), localtime=False, usegmt=True)
    out["Message-ID"] = message_id
    out["X-Kiln-App-Id"] = app_id
    try:
        raw = out.as_bytes()
    except (ValueError, TypeError, UnicodeError) as exc:
        raise BadMessageError(f"the message cannot be encoded: {exc}") from None
    if len(raw) > max_bytes:
        raise MessageTooLargeError(f"the encoded message is {len(raw)} bytes; the limit is {max_bytes}")
    recipients = [mailrules.bare_address(a) for a in (*to, *cc, *bcc)]
    return Rendered(message_id=message_id, envelope_from=mailrules.bare_address(msg.sender),
                    recipients=list(dict.fromkeys(recipients)), raw=raw, subject=msg.subject)
