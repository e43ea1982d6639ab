"""App Engine's ``mail`` service for Google's SDK: ``Send`` and ``SendToAdmins`` through kiln's mail service.

Every field of the SDK's ``MailMessage`` (sender, reply-to, to/cc/bcc, subject, text/HTML/AMP bodies, attachments
with their Content-ID, extra headers) becomes kiln's ``MailMessage``; ``mail_svc`` checks the message again and
applies the sender rule, as it does for :mod:`kiln.api.mail`: an administrator of the app, an address at the app's
mail domain, or the signed-in user, which the service believes only with the router's proof for that user and
request (``KILN_USER_PROOF`` in the request's environment, which the proxy hands over as
``CallContext.environ``). The call returns once the message is queued durably, as on App Engine.

Errors carry mail's own codes so the SDK raises its exception: ``UNAUTHORIZED_SENDER`` → ``InvalidSenderError``,
``INVALID_ATTACHMENT_TYPE`` → ``InvalidAttachmentTypeError``, ``INVALID_HEADER_NAME`` →
``InvalidHeaderNameError``, a malformed message (a bad address, no recipient…) → ``BAD_REQUEST`` →
``BadRequestError``, a bad Content-ID → ``INVALID_CONTENT_ID`` (which the SDK raises as ``ApplicationError``).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.appengine.api import mail_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.pb.mail.v1 import mail_pb2 as pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln.sdk import _errors
from kiln.sdk.service import CallContext

__all__ = ["Mail"]

_ERR = gae.MailServiceError
_ERRORS = _errors.table({
    "BAD_REQUEST": _ERR.BAD_REQUEST, "UNAUTHORIZED_SENDER": _ERR.UNAUTHORIZED_SENDER,
    "INVALID_ATTACHMENT_TYPE": _ERR.INVALID_ATTACHMENT_TYPE, "INVALID_HEADER_NAME": _ERR.INVALID_HEADER_NAME,
    "INVALID_CONTENT_ID": _ERR.INVALID_CONTENT_ID, "MISSING_RECIPIENTS": _ERR.BAD_REQUEST,
    "INVALID_EMAIL": _ERR.BAD_REQUEST,
}, {grpc.StatusCode.INVALID_ARGUMENT: _ERR.BAD_REQUEST, grpc.StatusCode.RESOURCE_EXHAUSTED: _ERR.BAD_REQUEST})


class Mail:
    """The ``mail`` service (module docstring)."""

    name = "mail"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        if method not in ("Send", "SendToAdmins"):
            raise apiproxy_errors.CallNotFoundError(f"mail.{method}() is not a method of App Engine's mail service")
        message = translate(request)
        user_email = str(ctx.environ.get("USER_EMAIL", "") or "")
        proof = str(ctx.environ.get("KILN_USER_PROOF", "") or "")
        stub = _rpc.stub("MAIL", mail_pb2_grpc.MailServiceStub)
        timeout = ctx.deadline if ctx.deadline is not None else _rpc.DEFAULT_TIMEOUT
        if method == "Send":
            _rpc.call(stub.Send, pb.SendRequest(message=message, signed_in_user_email=user_email,
                                                signed_in_user_proof=proof), timeout=timeout, table=_ERRORS)
        else:
            _rpc.call(stub.SendToAdmins, pb.SendToAdminsRequest(message=message, signed_in_user_email=user_email,
                                                                signed_in_user_proof=proof),
                      timeout=timeout, table=_ERRORS)


def translate(message: gae.MailMessage) -> pb.MailMessage:
    """kiln's message for the SDK's, field by field."""
    out = pb.MailMessage(sender=message.Sender, reply_to=message.ReplyTo, subject=message.Subject,
                         text_body=message.TextBody, html_body=message.HtmlBody, amp_html_body=message.AmpHtmlBody)
    out.to.extend(message.To)
    out.cc.extend(message.Cc)
    out.bcc.extend(message.Bcc)
    for attachment in message.Attachment:
        out.attachments.add(file_name=attachment.FileName, data=attachment.Data, content_id=attachment.ContentID)
    for header in message.Header:
        out.headers.add(name=header.name, value=header.value)
    return out
