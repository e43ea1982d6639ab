"""Settings of ``python -m taskqueue_svc``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.config import GrpcServiceConfig, HostPort, ListenAddress, Secret, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskQueueConfig(GrpcServiceConfig):
    """task queue service settings (env prefix ``KILN_TASKQUEUE_``)."""

    env_prefix: typing.ClassVar[str] = "TASKQUEUE"  # its environment variables are KILN_TASKQUEUE_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50059), "host:port to serve gRPC on")
    nats_url: str = field("", "NATS server URL(s) whose JetStream holds the tasks and their names", required=True)
    queue_yaml: tuple[str, ...] = field((), "each app's queue.yaml from local files: app=/path/queue.yaml[,...] "
                                             "(kiln dev); an app without one has the default queue only")
    control_plane: HostPort | None = field(None, "the control plane's gRPC address: every app's queues come from "
                                                 "its default version's queue.yaml, updated when the default changes")
    control_token: Secret = field(Secret(""), "a platform read token for the control plane")
    resync_seconds: float = field(30.0, "how often queue.yaml files are re-read from the control plane (events "
                                        "update them at once; this catches missed events)")
    router_url: str = field("http://127.0.0.1:8080", "the router push tasks go through")
    apps_domain: str = field("localhost", "the router's domain: a task of APP goes to Host APP.<apps_domain> "
                                          "(TARGET-dot-APP.<apps_domain> with a target)")
    platform_secret: Secret = field(Secret(""), "the router's platform_secret: signs task requests",
                                    required=True)
    request_timeout_seconds: float = field(600.0, "how long a task's request may run (App Engine: 10 minutes)")
    default_max_concurrent: int = field(100, "tasks of one queue sent at once when its queue.yaml sets no "
                                             "max_concurrent_requests")
    lease_seconds: float = field(30.0, "how long a replica's hold on a task and its concurrency slots lasts "
                                       "unrenewed: a replica that dies has its tasks redelivered and its slots "
                                       "freed after this (it renews them every third of it while it lives); "
                                       "the same on every replica: it is the queue consumers' ack_wait")
    stream_replicas: int = field(1, "JetStream replicas of the task stream and name bucket (3 on a NATS cluster)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.request_timeout_seconds <= 0 or self.default_max_concurrent < 1 or not self.lease_seconds >= 1:
            raise ValueError("request_timeout_seconds, default_max_concurrent: must be positive; lease_seconds: at "
                             "least 1")
        self.queue_files()
        if self.control_plane and not self.control_token:
            raise ValueError("control_token: required with control_plane (KILN_TASKQUEUE_CONTROL_TOKEN)")

    def queue_files(self) -> dict[str, pathlib.Path]:
        """App -> its queue.yaml."""
        out = {}
        for item in self.queue_yaml:
            app, sep, path = item.partition("=")
            if not sep or not app or not path:
                raise ValueError(f"queue_yaml: expected app=/path/queue.yaml, got {item!r}")
            out[app.strip()] = pathlib.Path(path.strip())
        return out
