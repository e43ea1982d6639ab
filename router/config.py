"""Settings of ``python -m router``."""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import typing

from kiln_platform.config import (METRICS_LISTEN_HELP, OTLP_ENDPOINT_HELP, HostPort, ListenAddress, Secret, field,
                                  parse_app_emails)
from kiln_platform.tracing import traces_url
from router.versions import parse_app_dirs


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouterConfig:
    """Router settings (env prefix ``KILN_ROUTER_``)."""

    env_prefix: typing.ClassVar[str] = "ROUTER"  # its environment variables are KILN_ROUTER_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 8080), "host:port to serve HTTP on")
    metrics_listen: ListenAddress | None = field(None, METRICS_LISTEN_HELP + "; with workers, worker N serves on "
                                                 "this port + N - 1")
    otlp_endpoint: str = field("", OTLP_ENDPOINT_HELP)
    trust_traceparent: bool = field(False, "continue the trace a client's traceparent header names (the router "
                                           "behind a proxy or gateway that traces); by default each request "
                                           "starts a trace of its own")
    nats_url: str = field("", "NATS server URL(s), comma-separated", required=True)
    domain: str = field("localhost", "apps are served at APP.DOMAIN and VERSION-dot-APP.DOMAIN")
    apps: str = field("", "default version per app until the control plane serves it: app=version[,app=version]")
    dev_app: str = field("", "development mode: every host reaches this app's default version (app=version)")
    custom_domains: str = field("", "custom domains: host=app[,host=app] (the app's default version)")
    app_dirs: str = field("", "app.yaml and static files of versions served from local directories: "
                              "app/version=/path[,...] (kiln dev passes its app)")
    control_plane: HostPort | None = field(None, "the control plane's gRPC address (host:port): deployed versions, their files "
                                   "and every app's default version come from it (instead of apps and app_dirs)")
    control_token: Secret = field(Secret(""), "a platform read token for the control plane (python -m deploy.control "
                                              "mint-token --app '*' --scope read --name router)")
    cache_dir: pathlib.Path = field(pathlib.Path("~/.cache/kiln/router").expanduser(),
                                    "where deployed versions' files are kept")
    resync_seconds: float = field(10.0, "how often default versions are re-read from the control plane (events "
                                        "switch them within a second; this catches missed events)")
    session_secret: Secret = field(Secret(""), "key that signs sign-in session cookies (the same on every "
                                               "router)", required=True)
    inbound_secret: Secret = field(Secret(""), "key URL Fetch signs X-AppEngine-Inbound-AppId with (the same as "
                                                "urlfetch_svc's); empty: the header never reaches apps")
    platform_secret: Secret = field(Secret(""), "key shared with kiln's services that act toward apps (mail_svc, "
                                                 "cron_svc): they sign their requests to apps with it (which then pass "
                                                 "login: admin), and the router signs the signed-in user with it for "
                                                 "them; empty: no inbound mail or cron requests, no user proof")
    service_secret: Secret = field(Secret(""), "the services' shared secret (as KILN_<SERVICE>_SERVICE_SECRET): the "
                                                "router acts toward blobstore_svc as the app whose request it handles, "
                                                "with short-lived app tokens it mints; empty: no Blobstore uploads or "
                                                "X-AppEngine-BlobKey serving")
    blobstore_addr: HostPort | None = field(None, "blobstore_svc's gRPC address (host:port): Blobstore uploads and "
                                                  "responses carrying X-AppEngine-BlobKey; needs service_secret")
    images_addr: HostPort | None = field(None, "images_svc's gRPC address (host:port): image serving URLs "
                                               "(/_ah/img/..., images.get_serving_url); needs service_secret")
    auth_domain: str = field("gmail.com", "AUTH_DOMAIN of signed-in users")
    oidc_issuer: str = field("", "OpenID Connect provider (issuer URL) that signs users in; empty: development "
                                 "sign-in page under dev_app, else sign-in is unavailable")
    oidc_client_id: str = field("", "this deployment's client id at the OpenID Connect provider")
    oidc_client_secret: Secret = field(Secret(""), "this deployment's client secret at the provider")
    admins: str = field("", "administrators per app: app=email;email[,app=email...] (login: admin, admin headers)")
    geoip_db: pathlib.Path | None = field(None, "MaxMind DB file for X-AppEngine-Country/Region/City headers")
    trusted_proxies: tuple[str, ...] = field((), "networks (CIDR, comma-separated) of proxies whose X-Forwarded-For and "
                                     "X-Forwarded-Proto are believed")
    instance_hour_usd: float = field(0.05, "price of an instance hour, for administrators' cost estimate header")
    max_request_bytes: int = field(32 * 1024 * 1024, "larger request bodies get 413 without reaching the app")
    max_response_bytes: int = field(32 * 1024 * 1024, "larger app responses become an empty 500")
    idle_timeout_seconds: float = field(30.0, "close connections that send no complete request within this "
                                              "time (idle keep-alives and slow clients sending headers)")
    header_timeout_seconds: float = field(20.0, "close connections whose request headers are not complete within "
                                                "this time of their first byte (slowloris; 408 when nothing else "
                                                "is being answered on the connection); 0: no deadline")
    body_grace_seconds: float = field(20.0, "a request body may take this long, plus one second for every "
                                            "body_min_bytes_per_second bytes received; a slower client gets 408 "
                                            "and is closed (as Apache's mod_reqtimeout body=20,MinRate=500); "
                                            "0: no limit")
    body_min_bytes_per_second: float = field(500.0, "the minimum rate a request body must keep after the grace "
                                                    "period (see body_grace_seconds)")
    pending_timeout_seconds: float = field(10.0, "how long a request to an app's version waits for an "
                                                 "instance while none is serving (one starting or being replaced)")
    request_timeout_seconds: float = field(70.0, "how long to wait for an instance's answer")
    ready_file: pathlib.Path | None = field(None, "write the bound address here once serving")
    workers: int = field(1, "router processes serving the listen address (SO_REUSEPORT), each with its own NATS "
                            "connection; more than 1: a parent starts them, replaces one that dies, and stops "
                            "them all on SIGTERM (see router/workers.py); use one per core")
    worker: int = field(0, "set by a router with workers for each of its worker processes (1..workers): listen "
                           "with SO_REUSEPORT on the parent's port; 0: not a worker")
    log_level: str = field("INFO", "log level")
    log_format: str = field("text", "log format: text or json")

    def __post_init__(self) -> None:
        for name in ("apps", "dev_app"):
            for item in filter(None, getattr(self, name).split(",")):
                app, sep, version = item.partition("=")
                if not sep or not app or not version:
                    raise ValueError(f"{name}: expected app=version, got {item!r}")
        if self.header_timeout_seconds < 0 or self.idle_timeout_seconds < 0 or self.body_grace_seconds < 0:
            raise ValueError("header_timeout_seconds, idle_timeout_seconds, body_grace_seconds: must not be negative")
        if self.otlp_endpoint:
            traces_url(self.otlp_endpoint)  # a precise error at start, not a failed export later
        if self.workers < 1 or self.worker < 0:
            raise ValueError("workers: must be at least 1; worker: must not be negative")
        if self.workers > 1 and self.worker:
            raise ValueError("worker: a worker process runs with workers 1")
        if not self.body_min_bytes_per_second > 0:
            raise ValueError("body_min_bytes_per_second: must be more than 0")
        if self.max_request_bytes < 0 or self.max_response_bytes < 0:
            raise ValueError("max_request_bytes, max_response_bytes: must not be negative")
        self.custom_domain_map()
        for net in self.trusted_proxies:
            try:
                ipaddress.ip_network(net)
            except ValueError:
                raise ValueError(f"trusted_proxies: {net!r} is not a network like 10.0.0.0/8") from None
        parse_app_dirs(self.app_dirs)
        if self.control_plane:
            if not self.control_token:
                raise ValueError("control_token: required with control_plane (KILN_ROUTER_CONTROL_TOKEN)")
            if self.apps or self.app_dirs or self.dev_app:
                raise ValueError("control_plane: versions come from the control plane; drop apps, app_dirs, dev_app")
        self.admin_map()
        if self.blobstore_addr and not self.service_secret:
            raise ValueError("service_secret: required with blobstore_addr (KILN_ROUTER_SERVICE_SECRET)")
        if self.images_addr and not self.service_secret:
            raise ValueError("service_secret: required with images_addr (KILN_ROUTER_SERVICE_SECRET)")
        if self.oidc_issuer and not (self.oidc_client_id and self.oidc_client_secret):
            raise ValueError("oidc_issuer: needs oidc_client_id and oidc_client_secret too")

    def custom_domain_map(self) -> dict[str, str]:
        """Custom domain -> app (served by the app's default version)."""
        versions = self.default_versions()
        out = {}
        for item in filter(None, (i.strip() for i in self.custom_domains.split(","))):
            host, sep, app = item.partition("=")
            if not sep or not host or not app:
                raise ValueError(f"custom_domains: expected host=app, got {item!r}")
            if app not in versions and not self.control_plane:
                raise ValueError(f"custom_domains: app {app!r} has no default version in apps")
            out[host.lower().rstrip(".")] = app
        return out

    def admin_map(self) -> dict[str, frozenset[str]]:
        """App -> the lower-cased emails of its administrators."""
        return parse_app_emails(self.admins, "admins")

    def default_versions(self) -> dict[str, str]:
        """The app -> default version map from ``apps`` and ``dev_app``."""
        pairs = [i.partition("=") for i in filter(None, f"{self.apps},{self.dev_app}".split(","))]
        return {app: version for app, _, version in pairs}
