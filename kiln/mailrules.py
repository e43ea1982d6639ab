"""App Engine's rules for outgoing mail, shared by ``kiln.api.mail`` (which checks early, as App Engine's SDK
did) and ``mail_svc`` (which checks again: it never trusts a client).

- Addresses: one mailbox per value, ``addr@domain`` or ``Name <addr@domain>``; no control characters (a line
  break in a field would let a caller add headers of its own).
- Attachments: no file name with an extension App Engine blocks, and no ZIP file holding one.
- Extra headers: only App Engine's allow-list.
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
import io
import mimetypes
import re
import zipfile
from collections.abc import Sequence

# https://cloud.google.com/appengine/docs/standard/services/mail/mail-with-headers-attachments
BLOCKED_EXTENSIONS = frozenset({
    "ade", "adp", "bat", "chm", "cmd", "com", "cpl", "exe", "hta", "ins", "isp", "jse", "lib", "mde", "msc",
    "msp", "mst", "pif", "scr", "sct", "shb", "sys", "vb", "vbe", "vbs", "vxd", "wsc", "wsf", "wsh"})
ALLOWED_HEADERS = frozenset(h.lower() for h in (
    "Auto-Submitted", "In-Reply-To", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post", "On-Behalf-Of",
    "References", "Resent-Date", "Resent-From", "Resent-To"))

MAX_ADDRESS = 254
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")
_QUOTED = re.compile(r'^"(?:[^"\\]|\\.)*"$')
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'
_CONTENT_ID = re.compile(r"^<[^<>\s\x00-\x1f\x7f]{1,250}>$")


def has_control(value: str) -> bool:
    """True if ``value`` holds a control character (CR and LF included)."""
    return _CONTROL.search(value) is not None


def address_problem(value: str) -> str | None:
    """Why ``value`` is not one valid mailbox (``a@b`` or ``Name <a@b>``), or ``None`` if it is."""
    if not isinstance(value, str) or not value.strip():
        return "empty address"
    if has_control(value):
        return "address contains a line break or control character"
    if len(email.utils.getaddresses([value])) != 1:
        return "more than one address in one value"
    name, addr = email.utils.parseaddr(value)
    if not addr or (not name and addr != value.strip().strip("<>")):
        return "not an email address"
    if len(addr) > MAX_ADDRESS:
        return f"address longer than {MAX_ADDRESS} characters"
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        return "an address needs local-part@domain"
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        return f"invalid local part {local!r}"
    return _domain_problem(domain)


def _domain_problem(domain: str) -> str | None:
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return f"invalid domain {domain!r}"
    labels = ascii_domain.rstrip(".").split(".")
    if not all(_LABEL.match(label) for label in labels):
        return f"invalid domain {domain!r}"
    return None


def bare_address(value: str) -> str:
    """The ``addr@domain`` part of a valid mailbox, lower-cased."""
    return email.utils.parseaddr(value)[1].lower()


def extension(file_name: str) -> str:
    """The lower-cased extension of ``file_name`` without its dot ('' if none)."""
    base = file_name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def attachment_problem(file_name: str, data: bytes) -> str | None:
    """Why an attachment may not be sent (a blocked extension, itself or inside a ZIP), or ``None``."""
    if not file_name or has_control(file_name):
        return "an attachment needs a file name without control characters"
    ext = extension(file_name)
    if ext in BLOCKED_EXTENSIONS:
        return f"file extension {ext!r} of {file_name!r} is not allowed"
    if ext == "zip" or data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.namelist():
                    if extension(member) in BLOCKED_EXTENSIONS:
                        return f"{file_name!r} holds {member!r}, whose file extension is not allowed"
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
            if ext == "zip":
                return f"{file_name!r} is not a readable ZIP file"
    return None


def header_problem(name: str, value: str) -> str | None:
    """Why an extra header may not be sent (not on the allow-list, or not a valid header), or ``None``."""
    if not name or not _HEADER_NAME.match(name):
        return f"{name!r} is not a header name"
    if name.lower() not in ALLOWED_HEADERS:
        return f"header {name!r} may not be set (allowed: {', '.join(sorted(ALLOWED_HEADERS))})"
    if has_control(value.replace("\t", " ")):
        return f"the value of header {name!r} contains a line break or control character"
    return None


def content_id_problem(content_id: str) -> str | None:
    """Why a Content-ID is malformed (it must be ``<something>``), or ``None``."""
    if not _CONTENT_ID.match(content_id):
        return f"Content-ID {content_id!r} must look like <name> (no spaces or line breaks)"
    return None


def build_mime(*, sender: str, to: Sequence[str] = (), cc: Sequence[str] = (), reply_to: str = "", subject: str,
               body: str = "", html: str = "", amp_html: str = "",
               attachments: Sequence[tuple[str, bytes, str]] = (),
               headers: Sequence[tuple[str, str]] = ()) -> email.message.EmailMessage:
    """The MIME message for already-checked fields (attachments as ``(file name, data, content id)``): plain and
    HTML bodies as alternatives, attachments with the type their extension gives, inline when they have a
    Content-ID. Bcc never appears in the message."""
    out = email.message.EmailMessage(policy=email.policy.SMTP)
    out["From"] = sender
    if to:
        out["To"] = ", ".join(to)
    if cc:
        out["Cc"] = ", ".join(cc)
    if reply_to:
        out["Reply-To"] = reply_to
    out["Subject"] = subject
    for name, value in headers:
        out[name] = value
    if body:
        out.set_content(body, subtype="plain", charset="utf-8")
    if html:
        if body:
            out.add_alternative(html, subtype="html", charset="utf-8")
        else:
            out.set_content(html, subtype="html", charset="utf-8")
    if amp_html:
        out.add_alternative(amp_html, subtype="x-amp-html", charset="utf-8")
    for file_name, data, content_id in attachments:
        base = file_name.rsplit("/", 1)[-1]
        maintype, _, subtype = (mimetypes.guess_type(base)[0] or "application/octet-stream").partition("/")
        out.add_attachment(data, maintype=maintype, subtype=subtype, filename=base,
                           disposition="inline" if content_id else "attachment", cid=content_id or None)
    return out
