"""Inbound mail: an SMTP listener for ``*@APP.<mail_domain>`` that posts each message to its app.

App Engine delivers mail for ``anything@APP.appspotmail.com`` as ``POST /_ah/mail/<address>`` with the raw
message as the body (``Content-Type: message/rfc822``) to apps that declare ``inbound_services: [mail]``. Here
the listener posts through the router, signed as the mail service (``X-Kiln-Platform``), so the request is
routed, logged and let through ``login: admin`` like any request App Engine makes itself, and nobody else can
post to ``/_ah/mail/``.

Each message is stamped as a receiving mail server stamps it (RFC 5321 4.4; what App Engine's own mail servers
did before the app saw it): a ``Received:`` trace line, and ``Date:`` and ``Message-ID:`` when the sender left
them out, so the app's ``InboundEmailMessage.date`` is always there.

The SMTP answer reflects the outcome, so the sending server keeps any message kiln could not hand over: ``250``
when every recipient's app took it (2xx), ``451`` (try later) when an app failed or could not be reached, and
``550`` when no recipient's app receives mail. Nothing is queued here: a message is either with its app or
still with its sender.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.utils
import logging
import time
import urllib.parse
from typing import Any

import aiohttp
from aiosmtpd.smtp import SMTP, Envelope, Session

from kiln_platform import auth
from kiln_platform.auth import APP_ID_RE

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100
POST_TIMEOUT_SECONDS = 70.0


class InboundHandler:
    """aiosmtpd handler: accepts recipients of the apps' domains and posts messages to the apps."""

    def __init__(self, *, mail_domain: str, router_url: str, apps_domain: str, platform_secret: str,
                 session: aiohttp.ClientSession) -> None:
        self._suffix = "." + mail_domain.lower()
        self._router = router_url.rstrip("/")
        self._apps_domain = apps_domain
        self._secret = platform_secret
        self._http = session
        self._hostname = "mail." + mail_domain.lower()

    def app_of(self, address: str) -> str | None:
        """The app whose mail domain ``address`` is at, or ``None``."""
        local, at, domain = address.rpartition("@")
        domain = domain.lower()
        if not at or not local or not domain.endswith(self._suffix):
            return None
        app = domain[: -len(self._suffix)]
        return app if APP_ID_RE.match(app) else None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if self.app_of(address) is None:
            return "550 5.1.1 No such mailbox here (this server receives mail for apps only)"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = stamp(envelope.original_content or b"", helo=session.host_name or "unknown",
                    peer=str(session.peer[0]) if session.peer else "unknown", by=self._hostname)
        results = await asyncio.gather(*(self._post(address, raw) for address in envelope.rcpt_tos))
        if any(r == "temporary" for r in results):
            return "451 4.3.0 An app could not take the message now; try again later"
        if all(r == "refused" for r in results):
            return "550 5.7.1 The app does not receive mail"
        return "250 2.0.0 Delivered to the app"

    async def _post(self, address: str, raw: bytes) -> str:
        app = self.app_of(address)
        assert app is not None  # checked at RCPT
        host = f"{app}.{self._apps_domain}"
        path = "/_ah/mail/" + urllib.parse.quote(address, safe="@+.-_")
        headers = {
            "Host": host, "Content-Type": "message/rfc822", auth.PLATFORM_HEADER: "mail",
            auth.PLATFORM_SIGNATURE_HEADER: auth.sign_platform(self._secret, "mail", "POST", host, path, time.time()),
        }
        try:
            async with self._http.post(self._router + path, data=raw, headers=headers, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_SECONDS)) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("inbound mail for %s: the router could not be reached: %s", address, exc)
            return "temporary"
        if 200 <= status < 300:
            log.info("inbound mail for %s delivered to app %s (%d bytes)", address, app, len(raw))
            return "delivered"
        if status in (403, 404):
            log.info("inbound mail for %s refused: app %s does not receive mail (%d)", address, app, status)
            return "refused"
        log.warning("inbound mail for %s: app %s answered %d; the sender will retry", address, app, status)
        return "temporary"


def stamp(raw: bytes, *, helo: str, peer: str, by: str) -> bytes:
    """``raw`` with the headers a receiving mail server adds: ``Received:`` always, ``Date:`` and ``Message-ID:``
    when missing (module docstring). The message itself is kept byte for byte below them."""
    present = {name.lower() for name in email.parser.BytesHeaderParser().parsebytes(raw).keys()}
    now = email.utils.formatdate(usegmt=True)
    added = [f"Received: from {_clean(helo)} ([{_clean(peer)}]) by {by} (kiln mail_svc) with ESMTP; {now}"]
    if "date" not in present:
        added.append(f"Date: {now}")
    if "message-id" not in present:
        added.append(f"Message-ID: {email.utils.make_msgid(domain=by)}")
    return "".join(line + "\r\n" for line in added).encode("ascii") + raw


def _clean(text: str) -> str:
    """A client-given name fit for a header: printable ASCII without spaces, at most 255 characters."""
    return "".join(c for c in text if "!" <= c <= "~")[:255] or "unknown"


async def listen(handler: InboundHandler, host: str, port: int, *, max_bytes: int,
                 hostname: str) -> asyncio.base_events.Server:
    """Serve SMTP with ``handler`` on ``host:port``."""
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        return SMTP(handler, data_size_limit=max_bytes, hostname=hostname, ident="kiln mail_svc", timeout=60,
                    enable_SMTPUTF8=True)

    return await loop.create_server(factory, host, port)
