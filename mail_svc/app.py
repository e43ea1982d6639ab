"""Wiring of mail_svc: the gRPC service that queues mail, the workers that deliver it, and the inbound
SMTP listener.

Accepted messages wait on JetStream (:mod:`mail_svc.queue`) until a worker hands them to the relay, or to the
development outbox when no relay is configured (``kiln dev``). Every replica runs workers on the same durable
consumer, so replicas share the work and take over each other's messages.
"""

from __future__ import annotations

import logging
import socket

import aiohttp

from kiln_platform import bus, grpcserver
from kiln_platform.grpcserver import write_ready_file
from kiln.pb.mail.v1 import mail_pb2, mail_pb2_grpc
from mail_svc import inbound
from mail_svc.config import MailConfig
from mail_svc.queue import Deliverer, MailQueue, QueueSettings
from mail_svc.service import MailService, SenderRule
from mail_svc.transport import Outbox, RelaySettings, SmtpRelay, Transport

log = logging.getLogger(__name__)

SERVICE_NAME = mail_pb2.DESCRIPTOR.services_by_name["MailService"].full_name


def transports(cfg: MailConfig, outbox: Outbox | None) -> list[Transport]:
    """One transport per worker: a relay connection each, or the shared outbox."""
    if cfg.relay is None:
        shared = outbox if outbox is not None else Outbox(cfg.outbox_dir)
        return [shared for _ in range(cfg.workers)]
    settings = RelaySettings(host=cfg.relay.host, port=cfg.relay.port, security=cfg.relay_security,
                             username=cfg.relay_username, password=cfg.relay_password.get(), ca_file=cfg.relay_ca_file,
                             timeout=cfg.relay_timeout_seconds)
    return [SmtpRelay(settings) for _ in range(cfg.workers)]


async def serve(cfg: MailConfig) -> None:
    """Run the mail service until SIGTERM."""
    nc = await bus.connect(cfg.nats_url, name="mail_svc")
    queue = MailQueue(nc, QueueSettings(
        replicas=cfg.stream_replicas, ack_wait_seconds=cfg.ack_wait_seconds, retry_min_seconds=cfg.retry_min_seconds,
        retry_max_seconds=cfg.retry_max_seconds, max_attempts=cfg.max_attempts,
        max_age_seconds=cfg.max_age_hours * 3600))
    await queue.open()
    outbox = None if cfg.relay else Outbox(cfg.outbox_dir)
    if outbox is not None:
        log.info("no relay configured: mail goes to the development outbox %s", cfg.outbox_dir)
    deliverer = Deliverer(queue, transports(cfg, outbox))
    await deliverer.start()
    http: aiohttp.ClientSession | None = None
    smtp_server = None
    if cfg.inbound_listen:
        http = aiohttp.ClientSession()
        handler = inbound.InboundHandler(mail_domain=cfg.mail_domain, router_url=cfg.router_url,
                                         apps_domain=cfg.apps_domain, platform_secret=cfg.platform_secret.get(),
                                         session=http)
        smtp_server = await inbound.listen(handler, cfg.inbound_listen.host, cfg.inbound_listen.port,
                                           max_bytes=cfg.max_mail_bytes, hostname=socket.getfqdn())
        bound = smtp_server.sockets[0].getsockname()
        log.info("receiving mail for *@APP.%s on %s:%d", cfg.mail_domain, bound[0], bound[1])
        if cfg.inbound_ready_file:
            write_ready_file(cfg.inbound_ready_file, f"{bound[0]}:{bound[1]}")

    async def stop() -> None:
        if smtp_server is not None:
            smtp_server.close()
            await smtp_server.wait_closed()
        if http is not None:
            await http.close()
        await deliverer.stop()
        await bus.shutdown(nc)

    rule = SenderRule(admins=cfg.admin_map(), mail_domain=cfg.mail_domain,
                      platform_secret=cfg.platform_secret.get())
    service = MailService(queue, rule, max_mail_bytes=cfg.max_mail_bytes,
                          outbox=outbox)
    registration = grpcserver.Registration(SERVICE_NAME, mail_pb2_grpc.add_MailServiceServicer_to_server, service)
    await grpcserver.serve(cfg, [registration], on_stop=stop)
