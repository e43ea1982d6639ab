"""App Engine's rules for outgoing mail, shared by ``kiln.api.mail`` (which checks early, as App Engine's SDK
did) and ``mail_svc`` (which checks again: it never trusts a client).

- Addresses: one mailbox per value, ``addr@domain`` or ``Name <addr@domain>``; no control characters (a line
  break in a field would let a caller add headers of its own).
- Attachments: no file name with an extension App Engine blocks, and no ZIP file holding one. Names are
  compared as Windows would act on them (:func:`extension`), and ZIP files inside ZIP files are searched too,
  to a bounded depth and size (an archive too deeply nested or expanding too far is refused, not expanded).
- Extra headers: only App Engine's allow-list.
- App Engine's own sender form, ``anything@APP_ID.appspotmail.com`` (Google's samples send from it), is the same
  mailbox as ``anything@APP_ID.<mail domain>`` of the deployment, which is what delivers it
  (:func:`deployment_sender`); the sender rule itself is ``mail_svc``'s (``SenderRule``).
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
import io
import mimetypes
import re
import unicodedata
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


# App Engine's domain for an app's own mail addresses: APP_ID.appspotmail.com.
APPSPOTMAIL_DOMAIN = "appspotmail.com"


def deployment_sender(sender: str, app_id: str, mail_domain: str) -> str:
    """``sender`` as the deployment sends it: in App Engine's form ``anything@APP_ID.appspotmail.com``, the same
    mailbox at the app's own mail domain (``anything@APP_ID.<mail_domain>``, display name kept); any other sender
    as it is. ``sender`` is one valid mailbox (:func:`address_problem`)."""
    name, addr = email.utils.parseaddr(sender)
    local, _, domain = addr.rpartition("@")
    if domain.lower() != f"{app_id}.{APPSPOTMAIL_DOMAIN}".lower():
        return sender
    return email.utils.formataddr((name, f"{local}@{app_id}.{mail_domain}"))


# What a ZIP search may expand: how deep archives nest (the attachment itself is depth 1), how many names it
# reads, and how many bytes of nested archives it decompresses. Past any of them the attachment is refused.
MAX_ZIP_DEPTH = 4
MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_EXPANSION = 64 * 1024 * 1024
_ZIP_MAGIC = b"PK\x03\x04"
# Windows ignores these at the end of a name ("x.exe." and "x.exe " run x.exe).
_IGNORED_AT_END = " .\t\r\n\v\f"


def extension(file_name: str) -> str:
    """The lower-cased extension Windows would act on for ``file_name``, without its dot ('' if none).

    The name is read as Windows reads it: NFKC-normalised (full-width letters and lookalike dots become
    ASCII), invisible format characters dropped, the last path component only, the part before an
    alternate data stream or version suffix (``x.exe::$DATA``, ``x.exe:stream``, ``x.exe;1``), and
    without the trailing dots and spaces Windows ignores; case does not matter.
    """
    return _extensions(file_name)[0]


def _extensions(file_name: str) -> list[str]:
    """The extension of the file itself, then those of any stream or version parts of its name."""
    name = "".join(c for c in unicodedata.normalize("NFKC", file_name) if unicodedata.category(c) != "Cf")
    base = re.split(r"[/\\]", name.rstrip(_IGNORED_AT_END + "/\\"))[-1]
    out = []
    for part in re.split(r"[:;]", base):
        part = part.rstrip(_IGNORED_AT_END)
        out.append(part.rsplit(".", 1)[1].casefold() if "." in part else "")
    return out


def _blocked(file_name: str) -> str | None:
    return next((ext for ext in _extensions(file_name) if ext in BLOCKED_EXTENSIONS), None)


def attachment_problem(file_name: str, data: bytes) -> str | None:
    """Why an attachment may not be sent (a blocked extension, itself or inside a ZIP), or ``None``."""
    if not file_name or has_control(file_name):
        return "an attachment needs a file name without control characters"
    ext = _blocked(file_name)
    if ext is not None:
        return f"file extension {ext!r} of {file_name!r} is not allowed"
    if extension(file_name) == "zip" or data[:4] == _ZIP_MAGIC:
        return _ZipSearch(file_name).problem(data, extension(file_name) == "zip", 1)
    return None


class _ZipSearch:
    """Looks through a ZIP file and the ZIP files inside it for blocked names, within the bounds above."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.members = 0
        self.expanded = 0

    def problem(self, data: bytes, named_zip: bool, depth: int, where: str = "") -> str | None:
        where = where or repr(self.file_name)
        if depth > MAX_ZIP_DEPTH:
            return f"{where} nests ZIP files more than {MAX_ZIP_DEPTH} deep"
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                return self._members(archive, depth, where)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, NotImplementedError, EOFError):
            return f"{where} is not a readable ZIP file" if named_zip else None

    def _members(self, archive: zipfile.ZipFile, depth: int, where: str) -> str | None:
        for info in archive.infolist():
            self.members += 1
            if self.members > MAX_ZIP_MEMBERS:
                return f"{where} holds more than {MAX_ZIP_MEMBERS} files"
            ext = _blocked(info.filename)
            if ext is not None:
                return f"{where} holds {info.filename!r}, whose file extension {ext!r} is not allowed"
            if info.is_dir():
                continue
            named_zip = extension(info.filename) == "zip"
            encrypted = bool(info.flag_bits & 0x1)
            if encrypted:
                if named_zip:
                    return f"{where} holds {info.filename!r}, an encrypted ZIP file that cannot be inspected"
                continue
            with archive.open(info) as member:
                if not named_zip and member.read(4) != _ZIP_MAGIC:
                    continue
            inner = self._expand(archive, info, where)
            if isinstance(inner, str):
                return inner
            found = self.problem(inner, named_zip, depth + 1, f"{where} > {info.filename!r}")
            if found is not None:
                return found
        return None

    def _expand(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes | str:
        """The bytes of a nested archive, or why it is refused (it would expand past the bound)."""
        left = MAX_ZIP_EXPANSION - self.expanded
        if info.file_size > left:
            return f"{where} expands past {MAX_ZIP_EXPANSION} bytes of nested ZIP files"
        with archive.open(info) as member:
            data = member.read(left + 1)  # the declared size may lie; never read past the bound
        self.expanded += len(data)
        if len(data) > left:
            return f"{where} expands past {MAX_ZIP_EXPANSION} bytes of nested ZIP files"
        return data


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
