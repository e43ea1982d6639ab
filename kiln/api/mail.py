"""The Mail API, mirroring ``google.appengine.api.mail``.

Sending: :func:`send_mail`, :func:`send_mail_to_admins` and the :class:`EmailMessage` /
:class:`AdminEmailMessage` objects check what App Engine's SDK checked (addresses, blocked attachment
extensions, allowed headers, a sender, a subject and a body) and hand the message to ``mail_svc``, which checks
it again, applies the sender rule and queues it durably: ``send()`` returns once the message is queued, as on
App Engine. Receiving: :class:`InboundEmailMessage` parses the body of a ``POST /_ah/mail/<address>`` request.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.header
import email.message
import email.policy
import email.utils
import os
import quopri
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

from kiln import mailrules
from kiln.api import _rpc
from kiln.api.mail_errors import (BadRequestError, Error, InvalidAttachmentTypeError, InvalidContentIdError,
                                  InvalidEmailError, InvalidHeaderNameError, InvalidSenderError,
                                  MissingBodyError, MissingRecipientsError, MissingSenderError,
                                  MissingSubjectError, PayloadEncodingError, UnknownCharsetError,
                                  UnknownEncodingError)
from kiln.api.users import User
from kiln.pb.mail.v1 import mail_pb2 as pb
from kiln.pb.mail.v1 import mail_pb2_grpc

__all__ = [
    "AdminEmailMessage", "Attachment", "BadRequestError", "EmailMessage", "EncodedPayload", "Error",
    "InboundEmailMessage", "InvalidAttachmentTypeError", "InvalidContentIdError", "InvalidEmailError",
    "InvalidHeaderNameError", "InvalidSenderError", "MissingBodyError", "MissingRecipientsError",
    "MissingSenderError", "MissingSubjectError", "PayloadEncodingError", "UnknownCharsetError",
    "UnknownEncodingError", "check_email_valid", "check_headers_valid", "invalid_email_reason",
    "invalid_headers_reason", "is_email_valid", "send_mail", "send_mail_to_admins",
    "BLOCKED_EXTENSIONS", "HEADER_WHITELIST",
]

BLOCKED_EXTENSIONS = mailrules.BLOCKED_EXTENSIONS
HEADER_WHITELIST = frozenset(h.title() for h in mailrules.ALLOWED_HEADERS)

_ERRORS = _rpc.ErrorTable(codes={
    "BAD_REQUEST": BadRequestError, "UNAUTHORIZED_SENDER": InvalidSenderError,
    "INVALID_ATTACHMENT_TYPE": InvalidAttachmentTypeError, "INVALID_HEADER_NAME": InvalidHeaderNameError,
    "INVALID_CONTENT_ID": InvalidContentIdError, "MISSING_RECIPIENTS": MissingRecipientsError,
    "INVALID_EMAIL": InvalidEmailError,
})


# --- addresses and headers ------------------------------------------------------------------------------------

def invalid_email_reason(email_address: Any, field: str) -> str | None:
    """Why ``email_address`` is not valid for ``field``, or ``None`` (a :class:`users.User` is taken by email)."""
    if email_address is None:
        return f"None email address for {field}."
    if isinstance(email_address, User):
        email_address = email_address.email()
    if not isinstance(email_address, str):
        return f"Invalid email address type for {field}."
    problem = mailrules.address_problem(email_address)
    return f"Invalid email address for {field}: {email_address!r} ({problem})." if problem else None


def is_email_valid(email_address: Any) -> bool:
    """True if ``email_address`` is a valid address (whether it exists is not checked)."""
    return invalid_email_reason(email_address, "") is None


def check_email_valid(email_address: Any, field: str) -> None:
    """Raise :class:`InvalidEmailError` if ``email_address`` is not valid for ``field``."""
    reason = invalid_email_reason(email_address, field)
    if reason is not None:
        raise InvalidEmailError(reason)


def invalid_headers_reason(headers: Mapping[str, str]) -> str | None:
    """Why ``headers`` may not be sent, or ``None``."""
    if headers is None:
        return "Headers dictionary was None."
    if not isinstance(headers, Mapping):
        return "Invalid type for headers. Should be a dictionary."
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return "Header names and values must be strings."
        problem = mailrules.header_problem(name, value)
        if problem:
            return problem
    return None


def check_headers_valid(headers: Mapping[str, str]) -> None:
    """Raise :class:`InvalidHeaderNameError` if ``headers`` may not be sent."""
    reason = invalid_headers_reason(headers)
    if reason is not None:
        raise InvalidHeaderNameError(reason)


def _addresses(value: Any, field: str) -> list[str]:
    """One address, a comma-separated string of them, or a list (of strings or users), checked."""
    items = [value] if isinstance(value, (str, User)) else list(value)
    out: list[str] = []
    for item in items:
        if isinstance(item, User):
            item = item.email()
        if isinstance(item, str) and "," in item and len(email.utils.getaddresses([item])) > 1:
            parts = [email.utils.formataddr(pair) for pair in email.utils.getaddresses([item])]
        else:
            parts = [item]
        for part in parts:
            check_email_valid(part, field)
            out.append(part)
    return out


# --- payloads and attachments ---------------------------------------------------------------------------------

class EncodedPayload:
    """A body or attachment as it came in a message: the payload, its charset and its transfer encoding."""

    def __init__(self, payload: str | bytes, charset: str | None = None, encoding: str | None = None) -> None:
        self.payload = payload
        self.charset = charset
        self.encoding = encoding

    def decode(self) -> str | bytes:
        """The payload without its transfer encoding, as text when it has a charset."""
        data = self.payload.encode("latin-1") if isinstance(self.payload, str) else self.payload
        encoding = (self.encoding or "").lower()
        try:
            if encoding == "base64":
                data = base64.b64decode(data)
            elif encoding == "quoted-printable":
                data = quopri.decodestring(data)
            elif encoding not in ("", "7bit", "8bit", "binary"):
                raise UnknownEncodingError(f"unknown transfer encoding {self.encoding!r}")
        except (ValueError, binascii.Error) as exc:
            raise PayloadEncodingError(f"cannot decode the payload as {self.encoding}: {exc}") from None
        if self.charset:
            try:
                return data.decode(self.charset)
            except LookupError:
                raise UnknownCharsetError(f"unknown character set {self.charset!r}") from None
            except UnicodeDecodeError as exc:
                raise PayloadEncodingError(f"the payload is not valid {self.charset}: {exc}") from None
        return data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncodedPayload) and (self.payload, self.charset, self.encoding) == (
            other.payload, other.charset, other.encoding)

    def __hash__(self) -> int:
        return hash((self.payload, self.charset, self.encoding))

    def __repr__(self) -> str:
        return f"EncodedPayload(charset={self.charset!r}, encoding={self.encoding!r})"


class Attachment:
    """An attached file: ``Attachment(filename, payload, content_id=None)``; unpacks as ``(filename, payload)``."""

    def __init__(self, filename: str, payload: bytes | str | EncodedPayload, content_id: str | None = None) -> None:
        self.filename = filename
        self.payload = payload
        self.content_id = content_id

    def __iter__(self) -> Iterator[Any]:
        return iter((self.filename, self.payload))

    def __getitem__(self, index: int) -> Any:
        return (self.filename, self.payload)[index]

    def __len__(self) -> int:
        return 2

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attachment):
            return (self.filename, self.payload, self.content_id) == (other.filename, other.payload,
                                                                        other.content_id)
        if isinstance(other, tuple):
            return (self.filename, self.payload) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.filename, self.content_id))

    def __repr__(self) -> str:
        return f"Attachment({self.filename!r}, <{len(self.data())} bytes>, content_id={self.content_id!r})"

    def data(self) -> bytes:
        """The file's bytes."""
        payload = self.payload
        if isinstance(payload, EncodedPayload):
            payload = payload.decode()
        return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)


def _attachments(value: Any) -> list[Attachment]:
    if isinstance(value, (Attachment, tuple)) and len(value) == 2 and isinstance(value[0], str) and \
            not isinstance(value[1], (tuple, Attachment)):
        value = [value]  # a single (filename, data) pair
    out = []
    for item in value:
        attachment = item if isinstance(item, Attachment) else Attachment(*item)
        problem = mailrules.attachment_problem(attachment.filename, attachment.data())
        if problem:
            raise InvalidAttachmentTypeError(problem)
        if attachment.content_id:
            problem = mailrules.content_id_problem(attachment.content_id)
            if problem:
                raise InvalidContentIdError(problem)
        out.append(attachment)
    return out


def _text(value: Any) -> str:
    if isinstance(value, EncodedPayload):
        value = value.decode()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


# --- outgoing messages ----------------------------------------------------------------------------------------

class _EmailMessageBase:
    """Fields common to :class:`EmailMessage` and :class:`AdminEmailMessage` (App Engine's ``PROPERTIES``)."""

    PROPERTIES = frozenset({"sender", "reply_to", "subject", "body", "html", "attachments", "headers", "amp_html"})
    _SERVICE_METHOD = "Send"

    def __init__(self, mime_message: email.message.Message | None = None, **kw: Any) -> None:
        if mime_message is not None:
            self.update_from_mime_message(mime_message)
        self.initialize(**kw)

    def initialize(self, **kw: Any) -> None:
        """Set several properties at once."""
        for name, value in kw.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name not in self.PROPERTIES:
            raise AttributeError(f"{name!r} is not a property of {type(self).__name__}")
        if name in ("sender", "reply_to"):
            if isinstance(value, User):
                value = value.email()
            check_email_valid(value, name)
        elif name in ("to", "cc", "bcc"):
            value = _addresses(value, name)
        elif name == "attachments":
            value = _attachments(value)
        elif name == "headers":
            check_headers_valid(value)
            value = dict(value)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name in self.PROPERTIES and name in self.__dict__:
            object.__delattr__(self, name)
        else:
            super().__delattr__(name)

    def check_initialized(self) -> None:
        """Raise the error App Engine's SDK raised for a message that cannot be sent as it is."""
        if not getattr(self, "sender", None):
            raise MissingSenderError("the message has no sender")
        if not hasattr(self, "subject"):
            raise MissingSubjectError("the message has no subject")
        if not (getattr(self, "body", None) or getattr(self, "html", None)):
            raise MissingBodyError("the message has neither body nor html")

    def is_initialized(self) -> bool:
        """True if the message could be sent as it is."""
        try:
            self.check_initialized()
        except Error:
            return False
        return True

    def _proto(self) -> pb.MailMessage:
        self.check_initialized()
        message = pb.MailMessage(sender=getattr(self, "sender"), subject=_text(getattr(self, "subject", "")),
                                 text_body=_text(getattr(self, "body", "") or ""),
                                 html_body=_text(getattr(self, "html", "") or ""),
                                 amp_html_body=_text(getattr(self, "amp_html", "") or ""),
                                 reply_to=getattr(self, "reply_to", "") or "")
        for field in ("to", "cc", "bcc"):
            getattr(message, field).extend(getattr(self, field, []) or [])
        for attachment in getattr(self, "attachments", []) or []:
            message.attachments.add(file_name=attachment.filename, data=attachment.data(),
                                    content_id=attachment.content_id or "")
        for name, value in (getattr(self, "headers", {}) or {}).items():
            message.headers.add(name=name, value=value)
        return message

    def ToProto(self) -> pb.MailMessage:  # noqa: N802 - App Engine's name
        """The message as the mail service's protocol buffer."""
        return self._proto()

    def to_mime_message(self) -> email.message.EmailMessage:
        """The message as MIME (without the Message-ID and Date the service adds)."""
        message = self._proto()
        return mailrules.build_mime(
            sender=message.sender, to=list(message.to), cc=list(message.cc), reply_to=message.reply_to,
            subject=message.subject, body=message.text_body, html=message.html_body,
            amp_html=message.amp_html_body,
            attachments=[(a.file_name, a.data, a.content_id) for a in message.attachments],
            headers=[(h.name, h.value) for h in message.headers])

    def send(self, make_sync_call: Any = None) -> None:
        """Queue the message for delivery (returns once the mail service has stored it)."""
        message = self._proto()
        stub = _rpc.stub("MAIL", mail_pb2_grpc.MailServiceStub)
        user_email, proof = os.environ.get("USER_EMAIL", ""), os.environ.get("KILN_USER_PROOF", "")
        if self._SERVICE_METHOD == "Send":
            _rpc.call(stub.Send, pb.SendRequest(message=message, signed_in_user_email=user_email,
                                                signed_in_user_proof=proof), table=_ERRORS)
        else:
            _rpc.call(stub.SendToAdmins, pb.SendToAdminsRequest(message=message, signed_in_user_email=user_email,
                                                                signed_in_user_proof=proof), table=_ERRORS)

    def update_from_mime_message(self, mime_message: email.message.Message | str | bytes) -> None:
        """Take the fields of a MIME message (sender, subject, recipients, bodies, attachments)."""
        parsed = _parse(mime_message)
        fields = _fields_of(parsed)
        for name, value in fields.items():
            if name in ("to", "cc"):
                value = _mailboxes(value)
            if name in self.PROPERTIES and value:
                setattr(self, name, value)


class EmailMessage(_EmailMessageBase):
    """A message to send: ``EmailMessage(sender=..., to=..., subject=..., body=...).send()``."""

    PROPERTIES = _EmailMessageBase.PROPERTIES | {"to", "cc", "bcc"}

    def check_initialized(self) -> None:
        super().check_initialized()
        if not (getattr(self, "to", None) or getattr(self, "cc", None) or getattr(self, "bcc", None)):
            raise MissingRecipientsError("the message has no recipient in to, cc or bcc")


class AdminEmailMessage(_EmailMessageBase):
    """A message to the app's administrators (it has no to, cc or bcc)."""

    _SERVICE_METHOD = "SendToAdmins"


def send_mail(sender: Any, to: Any, subject: str, body: str, make_sync_call: Any = None, **kw: Any) -> None:
    """Send a message: ``kw`` takes the other properties (cc, bcc, reply_to, html, attachments, headers…)."""
    EmailMessage(sender=sender, to=to, subject=subject, body=body, **kw).send(make_sync_call)


def send_mail_to_admins(sender: Any, subject: str, body: str, make_sync_call: Any = None, **kw: Any) -> None:
    """Send a message to every administrator of the app."""
    AdminEmailMessage(sender=sender, subject=subject, body=body, **kw).send(make_sync_call)


# --- incoming messages ----------------------------------------------------------------------------------------

def _parse(mime_message: email.message.Message | str | bytes) -> email.message.Message:
    if isinstance(mime_message, bytes):
        return email.message_from_bytes(mime_message, policy=email.policy.compat32)
    if isinstance(mime_message, str):
        return email.message_from_string(mime_message, policy=email.policy.compat32)
    return mime_message


def _header(message: email.message.Message, name: str) -> str:
    value = message.get(name)
    if value is None:
        return ""
    return _decoded(str(value))


def _recipients(message: email.message.Message, name: str) -> str | list[str]:
    """A recipient header as App Engine's InboundEmailMessage gives it: the header's decoded text (one string, however
    many addresses it lists), or a list of them when the message repeats the header; ``""`` when it has none."""
    values = [_decoded(str(value)) for value in message.get_all(name) or []]
    if len(values) == 1:
        return values[0]
    return values or ""


def _mailboxes(header: str | list[str]) -> list[str]:
    """The addresses a recipient header lists (groups and empty entries left out)."""
    values = [header] if isinstance(header, str) else header
    return [email.utils.formataddr(pair) for pair in email.utils.getaddresses(values) if pair[1]]


def _decoded(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


def _payload(part: email.message.Message) -> EncodedPayload:
    payload = part.get_payload(decode=False)
    return EncodedPayload(payload if isinstance(payload, str) else "", part.get_content_charset(),
                          part.get("Content-Transfer-Encoding"))


def _walk_bodies(message: email.message.Message) -> Iterator[tuple[str, EncodedPayload, bool, str | None]]:
    """(content type, payload, is attachment, file name) of every leaf part."""
    for part in message.walk():
        if part.is_multipart():
            continue
        filename = part.get_filename()
        disposition = (part.get("Content-Disposition") or "").split(";", 1)[0].strip().lower()
        is_attachment = bool(filename) or disposition == "attachment"
        if filename and disposition != "attachment" and not part.get("Content-ID"):
            is_attachment = True
        yield part.get_content_type(), _payload(part), is_attachment, filename


def _fields_of(message: email.message.Message) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if message.get("From"):
        fields["sender"] = _header(message, "From")
    for name, header in (("to", "To"), ("cc", "Cc")):
        found = _recipients(message, header)
        if found:
            fields[name] = found
    if message.get("Reply-To"):
        fields["reply_to"] = _header(message, "Reply-To")
    if message.get("Subject") is not None:
        fields["subject"] = _header(message, "Subject")
    attachments = []
    for content_type, payload, is_attachment, filename in _walk_bodies(message):
        if is_attachment:
            attachments.append(Attachment(filename or "attachment", payload))
        elif content_type == "text/plain" and "body" not in fields:
            fields["body"] = payload
        elif content_type == "text/html" and "html" not in fields:
            fields["html"] = payload
        elif content_type == "text/x-amp-html" and "amp_html" not in fields:
            fields["amp_html"] = payload
    if attachments:
        fields["attachments"] = attachments
    return fields


class InboundEmailMessage:
    """A received message (the body of ``POST /_ah/mail/<address>``): ``InboundEmailMessage(self.request.body)``.

    Fields: ``sender``, ``to``, ``cc``, ``reply_to``, ``subject``, ``date``, ``message_id``, ``body`` and
    ``html`` (:class:`EncodedPayload`), ``attachments`` (:class:`Attachment` with an EncodedPayload), and
    ``original``, the parsed ``email.message.Message``.
    """

    def __init__(self, mime_message: email.message.Message | str | bytes | None = None, **kw: Any) -> None:
        self.original = _parse(mime_message if mime_message is not None else b"")
        fields = _fields_of(self.original)
        self.sender: str = fields.get("sender", "")
        # Strings, as App Engine's are: "a@example.org, B <b@example.org>" (a list only if the header repeats).
        self.to: str | list[str] = fields.get("to", "")
        self.cc: str | list[str] = fields.get("cc", "")
        self.reply_to: str = fields.get("reply_to", "")
        self.subject: str = fields.get("subject", "")
        self.date: str = _header(self.original, "Date")
        self.message_id: str = _header(self.original, "Message-ID")
        self.body: EncodedPayload | None = fields.get("body")
        self.html: EncodedPayload | None = fields.get("html")
        self.amp_html: EncodedPayload | None = fields.get("amp_html")
        self.attachments: list[Attachment] = fields.get("attachments", [])
        for name, value in kw.items():
            setattr(self, name, value)

    def bodies(self, content_type: str | None = None) -> Iterable[tuple[str, EncodedPayload]]:
        """``(content type, payload)`` of each body, HTML first, in the message's order otherwise; only those
        of ``content_type`` (``"text/plain"``, or ``"text"`` for every ``text/*``) when given."""
        found = [(ct, payload) for ct, payload, is_attachment, _ in _walk_bodies(self.original)
                 if not is_attachment and ct.startswith("text/")]
        found.sort(key=lambda item: item[0] != "text/html")
        for ct, payload in found:
            if content_type is None or ct == content_type or ct.split("/", 1)[0] == content_type:
                yield ct, payload

    def to_mime_message(self) -> email.message.Message:
        """The original message."""
        return self.original
