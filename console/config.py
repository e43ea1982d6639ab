"""Settings of ``python -m console``."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import typing
import urllib.parse

from kiln_platform.auth import APP_ID_RE
from kiln_platform.config import HostPort, ListenAddress, Secret, field, parse_app_emails

# The services the console reaches through the control plane's developer gateway in a cluster (the gateway does
# not route mail_svc: the Mail page says so).
GATEWAY_SERVICES = ("logs", "datastore", "cron", "taskqueue", "memcache", "mail", "deploy")  # deploy: the control plane itself


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    """Console settings (env prefix ``KILN_CONSOLE_``).

    Development mode (``kiln dev``; no ``oidc_issuer``): the console acts as ``app_id`` toward each service whose
    address it is given, with app tokens it mints from ``service_secret`` (as the router does), without sign-in.
    A page whose service has no address says so instead of failing.

    Cluster mode (``oidc_issuer`` set): every page and action needs an OpenID Connect sign-in; ``admins`` says
    which apps each identity administers; app APP is shown at ``APP.`` + ``public_url``'s host, and the console
    reaches its services through the control plane's ``gateway`` with ``gateway_token``, which stays on the server.
    """

    env_prefix: typing.ClassVar[str] = "CONSOLE"  # its environment variables are KILN_CONSOLE_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 8000), "host:port to serve the console on (port 0 "
                                                                    "picks a free port)")
    ready_file: pathlib.Path | None = field(None, "write the bound address here once serving")
    app_id: str = field("", "development mode: the app the console shows (kiln dev passes its app)")
    service_secret: Secret = field(Secret(""), "development mode: the services' shared secret: the console calls "
                                               "them as app_id with short-lived app tokens minted from it")
    logs_addr: HostPort | None = field(None, "logs_svc's gRPC address (host:port): the Request logs page")
    datastore_addr: HostPort | None = field(None, "datastore_svc's gRPC address (host:port): the Datastore page")
    memcache_addr: HostPort | None = field(None, "memcache_svc's gRPC address (host:port): the Memcache page")
    cron_addr: HostPort | None = field(None, "cron_svc's gRPC address (host:port): the Cron page")
    taskqueue_addr: HostPort | None = field(None, "taskqueue_svc's gRPC address (host:port): the Task queues page")
    mail_addr: HostPort | None = field(None, "mail_svc's gRPC address (host:port): the Mail pages (its development "
                                             "outbox, or a relay's dead letters)")
    metrics_addrs: tuple[HostPort, ...] = field((), "host:port of each /metrics endpoint the Dashboard page "
                                                     "scrapes (comma-separated: the routers', their workers' and the "
                                                     "instance managers'; kiln dev passes them; in a cluster, e.g. "
                                                     "from the runtime hosts' metrics-targets.json); none: no "
                                                     "dashboard")
    metrics_scrape_seconds: float = field(10.0, "how often the Dashboard scrapes metrics_addrs (one point per "
                                                "scrape, an hour kept)")
    control_addr: HostPort | None = field(None, "the control plane's gRPC address (host:port): the Apps and "
                                                "versions page")
    deploy_token: Secret = field(Secret(""), "an admin deploy token of app_id, with which the console calls the "
                                             "control plane (it never reaches a browser); needed with control_addr")
    allowed_hosts: tuple[str, ...] = field((), "Host header values the console answers besides its listen "
                                               "address, localhost and 127.0.0.1 at its port (comma-separated; "
                                               "others get 421, which stops DNS rebinding)")
    oidc_issuer: str = field("", "cluster mode: the OpenID Connect provider (issuer URL) administrators sign in "
                                 "with; empty: development mode (no sign-in, app_id only)")
    oidc_client_id: str = field("", "cluster mode: the console's client id at the provider")
    oidc_client_secret: Secret = field(Secret(""), "cluster mode: the console's client secret at the provider")
    public_url: str = field("", "cluster mode: the console's address as browsers reach it (https://HOST[:PORT]); "
                                "the app picker is there, app APP at https://APP.HOST[:PORT], and the provider's "
                                "redirect URL to register is this + /_console/callback")
    admins: str = field("", "cluster mode: who administers which app, app=email;email[,app=email...] (the "
                            "router's format); a signed-in identity sees only its apps")
    session_secret: Secret = field(Secret(""), "cluster mode: key that signs sign-in cookies and states (the same on "
                                               "every console replica)")
    session_hours: float = field(8.0, "cluster mode: how long a sign-in lasts")
    gateway: HostPort | None = field(None, "cluster mode: the control plane's gRPC address (host:port): its "
                                           "developer gateway reaches each app's logs, datastore, cron, task "
                                           "queues and memcache")
    gateway_token: Secret = field(Secret(""), "cluster mode: an admin deploy token for every app (python -m "
                                              "deploy.control mint-token --app '*' --scope admin --name console); "
                                              "kept on the server, never sent to browsers")
    call_timeout_seconds: float = field(10.0, "deadline of each call to a service")
    log_level: str = field("INFO", "log level")
    log_format: str = field("text", "log format: text (local) or json (cluster)")

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format: must be text or json, got {self.log_format!r}")
        if not 0.1 <= self.metrics_scrape_seconds <= 3600:
            raise ValueError("metrics_scrape_seconds: must be between 0.1 and 3600")
        if self.control_addr is not None and not self.deploy_token:
            raise ValueError("deploy_token: needed with control_addr (an admin deploy token of app_id)")
        if not self.call_timeout_seconds > 0:
            raise ValueError("call_timeout_seconds: must be above 0")
        if self.cluster:
            self._check_cluster()
            return
        if not self.app_id:
            raise ValueError("app_id: required in development mode (--app-id, KILN_CONSOLE_APP_ID); or set "
                             "oidc_issuer for cluster mode")
        if not APP_ID_RE.match(self.app_id):
            raise ValueError(f"app_id: expected an app id (lower-case letters, digits, '-'), got {self.app_id!r} "
                             "(or set oidc_issuer for cluster mode)")
        if not self.service_secret:
            raise ValueError("service_secret: required in development mode (KILN_CONSOLE_SERVICE_SECRET)")

    @property
    def cluster(self) -> bool:
        """Whether the console runs in cluster mode (behind sign-in, through the gateway)."""
        return bool(self.oidc_issuer)

    def _check_cluster(self) -> None:
        needed = {"oidc_client_id": self.oidc_client_id, "oidc_client_secret": self.oidc_client_secret.get(),
                  "public_url": self.public_url, "admins": self.admins, "session_secret": self.session_secret.get(),
                  "gateway": self.gateway, "gateway_token": self.gateway_token.get()}
        missing = [name for name, value in needed.items() if not value]
        if missing:
            raise ValueError(f"{', '.join(missing)}: required with oidc_issuer (cluster mode)")
        given = [name for name in ("app_id", "service_secret", "logs_addr", "datastore_addr", "memcache_addr",
                                   "cron_addr", "taskqueue_addr", "mail_addr", "control_addr",
                                   "deploy_token") if getattr(self, name)]
        if given:
            raise ValueError(f"{', '.join(given)}: development mode only; in cluster mode the console reaches the "
                             "services through the gateway")
        host = self.public_origin()[1]
        name = urllib.parse.urlsplit(self.public_url.strip()).hostname or ""
        if not re.fullmatch(r"[a-z0-9.-]+", name) or name.replace(".", "").isdigit():
            raise ValueError(f"public_url: {name!r}: expected a DNS name (each app is served at APP.{host})")
        for app in self.admin_map():
            if not APP_ID_RE.match(app):
                raise ValueError(f"admins: {app!r} is not an app id")
        if not self.session_hours > 0:
            raise ValueError("session_hours: must be above 0")

    def public_origin(self) -> tuple[str, str]:
        """``public_url`` as (scheme, host[:port]), lower-cased.

        Raises:
            ValueError: it is not http(s)://HOST[:PORT] with nothing after.
        """
        url = urllib.parse.urlsplit(self.public_url.strip())
        if url.scheme not in ("http", "https") or not url.hostname or url.path.strip("/") or url.query \
                or url.fragment or url.username or url.password:
            raise ValueError(f"public_url: expected https://HOST[:PORT], got {self.public_url!r}")
        return url.scheme, url.netloc.lower()

    def admin_map(self) -> dict[str, frozenset[str]]:
        """App -> the lower-cased emails of its administrators."""
        return parse_app_emails(self.admins, "admins")
