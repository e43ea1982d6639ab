"""Settings of ``python -m console``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.auth import APP_ID_RE
from kiln_platform.config import HostPort, ListenAddress, Secret, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    """Console settings (env prefix ``KILN_CONSOLE_``).

    Development mode (the only one so far): the console acts as ``app_id`` toward each service whose address it
    is given, with app tokens it mints from ``service_secret`` (as the router does). A page whose service has no
    address says so instead of failing.
    """

    env_prefix: typing.ClassVar[str] = "CONSOLE"  # its environment variables are KILN_CONSOLE_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 8000), "host:port to serve the console on (port 0 "
                                                                    "picks a free port)")
    ready_file: pathlib.Path | None = field(None, "write the bound address here once serving")
    app_id: str = field("", "the app the console shows (kiln dev passes its app)", required=True)
    service_secret: Secret = field(Secret(""), "the services' shared secret: the console calls them as app_id with "
                                               "short-lived app tokens minted from it", required=True)
    logs_addr: HostPort | None = field(None, "logs_svc's gRPC address (host:port): the Request logs page")
    datastore_addr: HostPort | None = field(None, "datastore_svc's gRPC address (host:port): the Datastore page")
    memcache_addr: HostPort | None = field(None, "memcache_svc's gRPC address (host:port): the Memcache page")
    cron_addr: HostPort | None = field(None, "cron_svc's gRPC address (host:port): the Cron page")
    taskqueue_addr: HostPort | None = field(None, "taskqueue_svc's gRPC address (host:port): the Task queues page")
    mail_addr: HostPort | None = field(None, "mail_svc's gRPC address (host:port): the Mail page (its development "
                                             "outbox)")
    control_addr: HostPort | None = field(None, "the control plane's gRPC address (host:port): the Apps and "
                                                "versions page")
    deploy_token: Secret = field(Secret(""), "an admin deploy token of app_id, with which the console calls the "
                                             "control plane (it never reaches a browser); needed with control_addr")
    allowed_hosts: tuple[str, ...] = field((), "Host header values the console answers besides its listen "
                                               "address, localhost and 127.0.0.1 at its port (comma-separated; "
                                               "others get 421, which stops DNS rebinding)")
    call_timeout_seconds: float = field(10.0, "deadline of each call to a service")
    log_level: str = field("INFO", "log level")
    log_format: str = field("text", "log format: text (local) or json (cluster)")

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format: must be text or json, got {self.log_format!r}")
        if not APP_ID_RE.match(self.app_id):
            raise ValueError(f"app_id: expected an app id (lower-case letters, digits, '-'), got {self.app_id!r}")
        if self.control_addr is not None and not self.deploy_token:
            raise ValueError("deploy_token: needed with control_addr (an admin deploy token of app_id)")
        if not self.call_timeout_seconds > 0:
            raise ValueError("call_timeout_seconds: must be above 0")
