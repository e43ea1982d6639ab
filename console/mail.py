"""The Mail page: the development outbox (mail_svc's ListOutbox): the messages the app sent, newest first, and
one message with its envelope, headers, plain part, HTML part and attachments. The list asks for envelopes and
subjects only (``without_raw``); a message's page asks for that one message (``message_id``). In a cluster (mail
through a relay) the dead-letter page lists the app's mail that will not be delivered, with why (mail_svc's
``ListDeadLetters``, newest first, paged without a reload).

A message is hostile input. Its text is escaped like every value; its HTML part is shown only inside an
``<iframe sandbox srcdoc=…>``: the empty ``sandbox`` runs no script and gives the frame an opaque origin (no
cookies, no access to the console), and the frame inherits the console's Content-Security-Policy (no inline script,
nothing loaded from elsewhere), so remote images (tracking pixels) and inline styles of the mail are not applied
either. Messages are parsed with the standard library's :mod:`email` (policy ``default``), never run.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.message
import email.parser
import email.policy
import urllib.parse

from aiohttp import web
from google.protobuf import timestamp_pb2

from console import render
from console.backend import Services
from kiln.errors import BadRequestError, NoOutboxError, NotFoundError
from kiln.pb.mail.v1 import mail_pb2 as pb

LIST_SIZE = 100  # messages on the list
DEAD_PAGE = 50  # dead letters a page
MAX_TOKEN = 40  # characters of a dead-letter page token (mail_svc checks what it means)
SHOWN_HEADERS = ("From", "To", "Cc", "Reply-To", "Subject", "Date")
_PARSER = email.parser.BytesParser(policy=email.policy.default)


@dataclasses.dataclass(frozen=True)
class Summary:
    """One message on the list."""

    url: str
    sender: str
    to: str
    subject: str
    time: str


@dataclasses.dataclass(frozen=True)
class Attachment:
    """One attachment: its file name, type and size in bytes."""

    name: str
    content_type: str
    size: int


@dataclasses.dataclass(frozen=True)
class Shown:
    """One message as its page shows it."""

    item: pb.OutboxMessage
    time: str
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[Attachment]


def _utc(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def when(item: pb.OutboxMessage) -> str:
    """When the outbox kept ``item`` (UTC)."""
    return _utc(item.queued_at)


def message_url(message_id: str) -> str:
    """The address of one message's page."""
    return "/mail/message?" + urllib.parse.urlencode({"id": message_id})


def summary(item: pb.OutboxMessage) -> Summary:
    """``item`` as the list shows it: its envelope and subject (the list asks for no message body)."""
    return Summary(url=message_url(item.message_id), sender=item.envelope_from, to=", ".join(item.recipients),
                   subject=item.subject, time=when(item))


def _content(part: email.message.EmailMessage | None) -> str | None:
    if part is None:
        return None
    try:
        return str(part.get_content())
    except (LookupError, ValueError):  # an unknown charset or a broken transfer encoding: shown as well as it goes
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)


def shown(item: pb.OutboxMessage) -> Shown:
    """``item`` parsed for its page."""
    message = _PARSER.parsebytes(item.raw)
    assert isinstance(message, email.message.EmailMessage)
    attachments = []
    for part in message.iter_attachments():
        assert isinstance(part, email.message.EmailMessage)
        data = part.get_payload(decode=True)
        attachments.append(Attachment(name=part.get_filename() or "(no name)", content_type=part.get_content_type(),
                                      size=len(data) if isinstance(data, bytes) else 0))
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    return Shown(item=item, time=when(item),
                 headers=[(name, str(value)) for name in SHOWN_HEADERS for value in message.get_all(name, [])],
                 text=_content(text if isinstance(text, email.message.EmailMessage) else None),
                 html=_content(html if isinstance(html, email.message.EmailMessage) else None),
                 attachments=attachments)


@dataclasses.dataclass(frozen=True)
class Dead:
    """One dead letter as its page lists it."""

    sequence: int
    subject: str
    sender: str
    to: str
    reason: str
    attempts: str
    queued: str
    dead: str


def dead(letter: pb.DeadLetter) -> Dead:
    """``letter`` (from mail_svc's ``ListDeadLetters``) as the dead-letter page lists it."""
    return Dead(sequence=letter.sequence, subject=letter.subject, sender=letter.envelope_from, to=", ".join(letter.recipients),
                reason=letter.reason, attempts=str(letter.attempts) if letter.attempts else "not recorded",
                queued=_utc(letter.queued_at), dead=_utc(letter.dead_at))


def dead_url(token: str = "") -> str:
    """The dead-letter page (the older page ``token`` names)."""
    return "/mail/dead" + ("?" + urllib.parse.urlencode({"page": token}) if token else "")


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def mail_page(request: web.Request) -> web.StreamResponse:
        try:
            answer = await services.call("mail", "ListOutbox", pb.ListOutboxRequest(limit=LIST_SIZE,
                                                                                    without_raw=True))
        except NoOutboxError:  # a cluster's mail_svc delivers through a relay and keeps no outbox
            return render.page(request, "mail.html", messages=[], outbox=False)
        return render.page(request, "mail.html", messages=[summary(m) for m in answer.messages], outbox=True)

    async def message_page(request: web.Request) -> web.StreamResponse:
        message_id = request.query.get("id", "")
        if not message_id or len(message_id) > 1000:
            raise BadRequestError("id: name the message to show (its Message-ID)")
        answer = await services.call("mail", "ListOutbox", pb.ListOutboxRequest(limit=1, message_id=message_id))
        if not answer.messages:
            raise NotFoundError(f"the outbox has no message {message_id}")
        return render.page(request, "mail_message.html", m=shown(answer.messages[0]))

    async def show_dead(request: web.Request, token: str, message: str = "") -> web.StreamResponse:
        if len(token) > MAX_TOKEN:
            raise BadRequestError("page: not a page of the dead letters (start again from the newest)")
        answer = await services.call("mail", "ListDeadLetters", pb.ListDeadLettersRequest(page_size=DEAD_PAGE,
                                                                                          page_token=token))
        return render.page(request, "mail_dead.html", fragment="mail_dead_rows.html",
                           letters=[dead(d) for d in answer.dead_letters], page=token, message=message,
                           next_url=dead_url(answer.next_page_token) if answer.next_page_token else "",
                           first_url=dead_url() if token else "")

    async def dead_page(request: web.Request) -> web.StreamResponse:
        return await show_dead(request, request.query.get("page", ""))

    async def delete_dead(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        sequence, token = form.get("sequence"), form.get("page", "")
        if not isinstance(sequence, str) or not sequence.isascii() or not sequence.isdigit() or len(sequence) > 20:
            raise BadRequestError("sequence: name the dead letter to delete")
        await services.call("mail", "DeleteDeadLetter", pb.DeleteDeadLetterRequest(sequence=int(sequence)))
        if not render.is_htmx(request):
            raise web.HTTPSeeOther(dead_url(token if isinstance(token, str) else ""))
        return await show_dead(request, token if isinstance(token, str) else "", message="Deleted the dead letter.")

    return [web.get("/mail", mail_page), web.get("/mail/message", message_page), web.get("/mail/dead", dead_page),
            web.post("/mail/dead/delete", delete_dead)]
