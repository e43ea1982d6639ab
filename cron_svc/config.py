"""Settings of ``python -m cron_svc``."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import typing

from kiln_platform.config import GrpcServiceConfig, HostPort, ListenAddress, Secret, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class CronConfig(GrpcServiceConfig):
    """cron service settings (env prefix ``KILN_CRON_``)."""

    env_prefix: typing.ClassVar[str] = "CRON"  # its environment variables are KILN_CRON_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50056), "host:port to serve gRPC on")
    nats_url: str = field("", "NATS server URL(s) whose KV buckets hold claims, firing state and replicas",
                          required=True)
    cron_yaml: tuple[str, ...] = field((), "each app's cron.yaml from local files: app=/path/cron.yaml[,...] (kiln dev)")
    control_plane: HostPort | None = field(None, "the control plane's gRPC address: every app's jobs come from its default "
                                   "version's cron.yaml, updated when the default changes")
    control_token: Secret = field(Secret(""), "a platform read token for the control plane")
    resync_seconds: float = field(30.0, "how often cron.yaml files are re-read from the control plane (events "
                                        "update them at once; this catches missed events)")
    router_url: str = field("http://127.0.0.1:8080", "the router cron requests go through")
    apps_domain: str = field("localhost", "the router's domain: a job of APP goes to Host APP.<apps_domain> "
                                          "(TARGET-dot-APP.<apps_domain> with a target)")
    platform_secret: Secret = field(Secret(""), "the router's platform_secret: signs cron requests",
                                    required=True)
    replica_id: str = field(f"{socket.gethostname()}-{os.getpid()}", "this replica's name in claims and liveness",
                            shown_default="HOSTNAME-PID")
    liveness_seconds: float = field(6.0, "a replica silent this long is taken for dead and its firings taken over")
    request_timeout_seconds: float = field(600.0, "how long a cron request may run (App Engine: 10 minutes)")
    kv_replicas: int = field(1, "JetStream replicas of the KV buckets (3 on a NATS cluster)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.liveness_seconds < 1:
            raise ValueError("liveness_seconds: must be at least 1")
        self.cron_files()
        if self.control_plane and not self.control_token:
            raise ValueError("control_token: required with control_plane (KILN_CRON_CONTROL_TOKEN)")

    def cron_files(self) -> dict[str, pathlib.Path]:
        """App -> its cron.yaml."""
        out = {}
        for item in self.cron_yaml:
            app, sep, path = item.partition("=")
            if not sep or not app or not path:
                raise ValueError(f"cron_yaml: expected app=/path/cron.yaml, got {item!r}")
            out[app.strip()] = pathlib.Path(path.strip())
        return out
