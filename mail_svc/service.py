"""``kiln.pb.mail.v1.MailService``: check an app's message, apply App Engine's sender rule, queue it durably."""

from __future__ import annotations

import time
from typing import Any

import grpc

from kiln import mailrules
from kiln_platform import auth, grpcserver
from kiln.errors import BadRequestError, FailedPreconditionError, NoOutboxError, NotFoundError
from kiln.pb.mail.v1 import mail_pb2 as pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from mail_svc.errors import UnauthorizedSenderError
from mail_svc.message import Rendered, check_address, render
from mail_svc.queue import MailQueue
from mail_svc.transport import Outbox

DEFAULT_OUTBOX_PAGE = 100
MAX_OUTBOX_PAGE = 1000
MAX_MESSAGE_ID = 1000  # characters of ListOutboxRequest.message_id
DEFAULT_DEAD_PAGE = 50
MAX_DEAD_PAGE = 500


class SenderRule:
    """Who may send an app's mail (App Engine's rule): an administrator of the app, the user signed in to the
    calling request (vouched for by the router), or any address at the app's own mail domain — ``APP.<mail_domain>``,
    or App Engine's ``APP.appspotmail.com``, which is delivered from ``APP.<mail_domain>``
    (:func:`kiln.mailrules.deployment_sender`)."""

    def __init__(self, *, admins: dict[str, frozenset[str]], mail_domain: str, platform_secret: str) -> None:
        self.admins = admins
        self.mail_domain = mail_domain.lower()
        self._secret = platform_secret

    def check(self, app_id: str, sender: str, user_email: str, user_proof: str) -> None:
        address = mailrules.bare_address(sender)
        if address in self.admins.get(app_id, frozenset()):
            return
        if mailrules.bare_address(self.delivered_as(app_id, sender)).endswith(f"@{app_id}.{self.mail_domain}"):
            return
        if user_email and address == user_email.lower() and \
                auth.verify_user(self._secret, user_proof, app_id, user_email, time.time()):
            return
        raise UnauthorizedSenderError(
            f"sender: {address!r} may not send mail for app {app_id!r}; use an administrator's address, the "
            f"signed-in user's, or any address at {app_id}.{self.mail_domain} or "
            f"{app_id}.{mailrules.APPSPOTMAIL_DOMAIN}")

    def delivered_as(self, app_id: str, sender: str) -> str:
        """The sender the message goes out with (App Engine's appspotmail.com form becomes the app's mail domain)."""
        return mailrules.deployment_sender(sender, app_id, self.mail_domain)


class MailService(mail_pb2_grpc.MailServiceServicer):
    """Implements the contract; delivery happens later, from the queue (:mod:`mail_svc.queue`)."""

    def __init__(self, queue: MailQueue, rule: SenderRule, *, max_mail_bytes: int,
                 outbox: Outbox | None) -> None:
        self._queue = queue
        self._rule = rule
        self._max = max_mail_bytes
        self._outbox = outbox

    async def Send(self, request: pb.SendRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.SendResponse:
        app = grpcserver.caller_app()
        rendered = self._check(app, request.message, request.signed_in_user_email, request.signed_in_user_proof,
                               None)
        await self._enqueue(app, rendered)
        return pb.SendResponse(message_id=rendered.message_id)

    async def SendToAdmins(self, request: pb.SendToAdminsRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> pb.SendToAdminsResponse:
        app = grpcserver.caller_app()
        admins = sorted(self._rule.admins.get(app, frozenset()))
        if not admins and self._outbox is None:
            raise FailedPreconditionError(f"app {app!r} has no administrators to mail (mail_svc --admins)")
        # Under the outbox, an app without configured administrators still sees its message there.
        rendered = self._check(app, request.message, request.signed_in_user_email, request.signed_in_user_proof,
                               admins or [f"admins@{app}.{self._rule.mail_domain}"])
        await self._enqueue(app, rendered)
        return pb.SendToAdminsResponse(message_id=rendered.message_id)

    async def ListOutbox(self, request: pb.ListOutboxRequest,
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListOutboxResponse:
        app = grpcserver.caller_app()
        if self._outbox is None:
            raise NoOutboxError("this mail service delivers through a relay; it keeps no outbox")
        if not 0 <= request.limit <= MAX_OUTBOX_PAGE:
            raise BadRequestError(f"limit: must be between 0 and {MAX_OUTBOX_PAGE}, got {request.limit}")
        if len(request.message_id) > MAX_MESSAGE_ID:
            raise BadRequestError(f"message_id: at most {MAX_MESSAGE_ID} characters")
        return pb.ListOutboxResponse(messages=self._outbox.list(app, request.limit or DEFAULT_OUTBOX_PAGE,
                                                                with_raw=not request.without_raw,
                                                                message_id=request.message_id))

    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest,
                              context: grpc.aio.ServicerContext[Any, Any]) -> pb.ListDeadLettersResponse:
        app = grpcserver.caller_app()  # the app's own letters only: they are stored under its subject
        if not 0 <= request.page_size <= MAX_DEAD_PAGE:
            raise BadRequestError(f"page_size: must be between 0 and {MAX_DEAD_PAGE}, got {request.page_size}")
        before: int | None = None
        if request.page_token:
            token = request.page_token
            if not (token.isascii() and token.isdigit() and len(token) <= 20 and int(token) > 0):
                raise BadRequestError("page_token: not a next_page_token of ListDeadLetters")
            before = int(token)
        letters, next_before = await self._queue.dead_letters(app, limit=request.page_size or DEFAULT_DEAD_PAGE,
                                                              before=before)
        return pb.ListDeadLettersResponse(dead_letters=letters, next_page_token=str(next_before) if next_before else "")

    async def DeleteDeadLetter(self, request: pb.DeleteDeadLetterRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> pb.DeleteDeadLetterResponse:
        app = grpcserver.caller_app()
        if request.sequence <= 0:
            raise BadRequestError("sequence: name the dead letter (its DeadLetter.sequence)")
        if not await self._queue.delete_dead_letter(app, request.sequence):
            raise NotFoundError(f"no dead letter {request.sequence} of app {app!r} (it may have been deleted)")
        return pb.DeleteDeadLetterResponse()

    def _check(self, app: str, message: pb.MailMessage, user_email: str, user_proof: str,
               recipients: list[str] | None) -> Rendered:
        check_address(message.sender, "sender")
        self._rule.check(app, message.sender, user_email, user_proof)
        sender = self._rule.delivered_as(app, message.sender)
        if sender != message.sender:
            delivered = pb.MailMessage()
            delivered.CopyFrom(message)
            delivered.sender = sender
            message = delivered
        return render(message, recipients_override=recipients, app_id=app, mail_domain=self._rule.mail_domain,
                      max_bytes=self._max)

    async def _enqueue(self, app: str, rendered: Rendered) -> None:
        queued = pb.QueuedMail(app_id=app, message_id=rendered.message_id, envelope_from=rendered.envelope_from,
                               recipients=rendered.recipients, subject=rendered.subject)
        queued.queued_at.GetCurrentTime()
        await self._queue.put(queued, rendered.raw)
