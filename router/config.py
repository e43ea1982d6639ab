"""Settings of ``python -m router``."""

from __future__ import annotations

import dataclasses
import pathlib

from kiln.bus import DEFAULT_URL
from kiln.config import field, parse_hostport


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouterConfig:
    """Router settings (env prefix ``KILN_ROUTER_``)."""

    listen: str = field("127.0.0.1:8080", "host:port to serve HTTP on")
    nats_url: str = field(DEFAULT_URL, "NATS server URL(s), comma-separated")
    domain: str = field("localhost", "apps are served at APP.DOMAIN and VERSION-dot-APP.DOMAIN")
    apps: str = field("", "default version per app until the control plane serves it: app=version[,app=version]")
    dev_app: str = field("", "development mode: every host reaches this app's default version (app=version)")
    max_request_bytes: int = field(32 * 1024 * 1024, "larger request bodies get 413 without reaching the app")
    request_timeout_seconds: float = field(70.0, "how long to wait for an instance's answer")
    ready_file: pathlib.Path | None = field(None, "write the bound address here once serving")
    log_level: str = field("INFO", "log level")
    log_format: str = field("text", "log format: text or json")

    def __post_init__(self) -> None:
        parse_hostport(self.listen, "listen")
        for name in ("apps", "dev_app"):
            for item in filter(None, getattr(self, name).split(",")):
                app, sep, version = item.partition("=")
                if not sep or not app or not version:
                    raise ValueError(f"{name}: expected app=version, got {item!r}")
        if self.max_request_bytes < 0:
            raise ValueError("max_request_bytes: must not be negative")

    def default_versions(self) -> dict[str, str]:
        """The app -> default version map from ``apps`` and ``dev_app``."""
        pairs = [i.partition("=") for i in filter(None, f"{self.apps},{self.dev_app}".split(","))]
        return {app: version for app, _, version in pairs}
