"""Wiring of mail_svc.

The contract (``kiln.pb.mail.v1.MailService``) is served and discoverable by
reflection and health checks; its methods answer UNIMPLEMENTED until issue #7
builds them.
"""

from __future__ import annotations

from mail_svc.config import MailConfig
from kiln import grpcserver
from kiln.pb.mail.v1 import mail_pb2

SERVICE = mail_pb2.DESCRIPTOR.services_by_name["MailService"]


async def serve(cfg: MailConfig) -> None:
    """Run the service until SIGTERM."""
    await grpcserver.serve(cfg, [], [(SERVICE.full_name, grpcserver.unimplemented(SERVICE, issue="issue #7"))])
