"""Settings of ``python -m mail_svc``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.config import GrpcServiceConfig, HostPort, ListenAddress, Secret, field, parse_app_emails

# App Engine's limit for a message with its attachments (31.5 MB).
DEFAULT_MAX_MAIL_BYTES = 31 * 1024 * 1024 + 512 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class MailConfig(GrpcServiceConfig):
    """mail service settings (env prefix ``KILN_MAIL_``)."""

    env_prefix: typing.ClassVar[str] = "MAIL"  # its environment variables are KILN_MAIL_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50054), "host:port to serve gRPC on")
    # A 31.5 MB message plus its envelope must fit in one call.
    max_message_bytes: int = field(40 * 1024 * 1024, "largest gRPC message accepted or sent, in bytes")
    nats_url: str = field("", "NATS server URL(s) whose JetStream keeps the mail queue", required=True)
    relay: HostPort | None = field(None, "SMTP relay host:port that delivers mail; empty: the development outbox (outbox_dir)")
    relay_security: str = field("starttls", "starttls (required before sending), tls (implicit TLS, port 465) "
                                            "or none (a relay on a trusted network only)")
    relay_username: str = field("", "user name for SMTP AUTH at the relay (none when empty)")
    relay_password: Secret = field(Secret(""), "password for SMTP AUTH at the relay")
    relay_ca_file: str = field("", "CA bundle that signs the relay's certificate (default: the system's)")
    relay_timeout_seconds: float = field(60.0, "timeout of each exchange with the relay")
    outbox_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/mail-outbox").expanduser(),
                                     "development outbox: messages are written here (APP/*.eml) when relay is empty")
    workers: int = field(4, "messages delivered at once by this replica (one relay connection each)")
    retry_min_seconds: float = field(10.0, "first retry delay after a temporary failure (doubles each time)")
    retry_max_seconds: float = field(1800.0, "longest retry delay")
    max_attempts: int = field(20, "attempts before a message goes to the dead-letter stream")
    max_age_hours: float = field(72.0, "a message still undelivered this long after it was sent is dead-lettered")
    ack_wait_seconds: float = field(120.0, "a message taken by a replica that dies is handed out again after this")
    stream_replicas: int = field(1, "JetStream replicas of the queue (3 on a NATS cluster)")
    mail_domain: str = field("mail.localhost", "apps send from and receive at ANYTHING@APP.<mail_domain>")
    admins: str = field("", "administrators per app, who may send its mail and receive send_mail_to_admins: "
                            "app=email;email[,app=email...]")
    platform_secret: Secret = field(Secret(""), "the router's platform_secret: checks the signed-in user's proof "
                                                "(sender rule) and signs inbound mail requests to apps")
    max_mail_bytes: int = field(DEFAULT_MAX_MAIL_BYTES, "largest message, attachments included, sent or received")
    inbound_listen: ListenAddress | None = field(None, "host:port of the SMTP listener for mail to *@APP.<mail_domain> (off when "
                                    "empty)")
    inbound_ready_file: pathlib.Path | None = field(None, "write the SMTP listener's bound address here")
    router_url: str = field("http://127.0.0.1:8080", "the router that inbound mail is posted through")
    apps_domain: str = field("localhost", "the router's domain: inbound mail for APP goes to Host APP.<apps_domain>")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.relay_security not in ("starttls", "tls", "none"):
            raise ValueError(f"relay_security: must be starttls, tls or none, got {self.relay_security!r}")
        if self.relay_username and not self.relay_password:
            raise ValueError("relay_password: required with relay_username")
        if self.inbound_listen:
            if not self.platform_secret:
                raise ValueError("platform_secret: required with inbound_listen (the router checks it)")
        if self.workers < 1:
            raise ValueError(f"workers: must be at least 1, got {self.workers}")
        if not 0 < self.retry_min_seconds <= self.retry_max_seconds:
            raise ValueError("retry_min_seconds: must be above 0 and at most retry_max_seconds")
        if self.max_attempts < 1 or self.max_age_hours <= 0 or self.ack_wait_seconds < 1:
            raise ValueError("max_attempts, max_age_hours, ack_wait_seconds: must be positive (ack_wait >= 1 s)")
        if not 1024 <= self.max_mail_bytes <= self.max_message_bytes - 1024 * 1024:
            raise ValueError("max_mail_bytes: must be at least 1024 and leave 1 MiB of max_message_bytes")
        if not self.mail_domain or "@" in self.mail_domain:
            raise ValueError(f"mail_domain: must be a domain, got {self.mail_domain!r}")
        self.admin_map()

    def admin_map(self) -> dict[str, frozenset[str]]:
        """App -> its administrators' lower-cased emails."""
        return parse_app_emails(self.admins, "admins")
