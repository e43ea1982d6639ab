"""Settings of ``python -m runtime``."""

from __future__ import annotations

import dataclasses
import pathlib
import uuid

from kiln.bus import DEFAULT_URL
from kiln.config import GrpcServiceConfig, field


def _instance_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig(GrpcServiceConfig):
    """Runtime instance settings (env prefix ``KILN_RUNTIME_``).

    ``listen`` serves gRPC health checking for the instance.
    """

    app_dir: pathlib.Path = field(pathlib.Path("."), "directory of the app (holds app.yaml)")
    app_id: str = field("", "the app's id (default: app.yaml's application, else the directory name)")
    version_id: str = field("", "major version (default: app.yaml's version, else 'v1')")
    minor_version: int = field(1, "minor version, so CURRENT_VERSION_ID is major.minor")
    instance_id: str = dataclasses.field(default_factory=_instance_id,
                                         metadata={"help": "this instance's id (default: random)"})
    nats_url: str = field(DEFAULT_URL, "NATS server URL(s), comma-separated")
    datastore_addr: str = field("127.0.0.1:50051", "datastore_svc gRPC address given to the app")
    memcache_addr: str = field("127.0.0.1:50052", "memcache_svc gRPC address given to the app")
    urlfetch_addr: str = field("127.0.0.1:50053", "urlfetch_svc gRPC address given to the app")
    mail_addr: str = field("127.0.0.1:50054", "mail_svc gRPC address given to the app")
    images_addr: str = field("127.0.0.1:50055", "images_svc gRPC address given to the app")
    auth_domain: str = field("gmail.com", "AUTH_DOMAIN given to the app")
    default_hostname: str = field("localhost:8080", "DEFAULT_VERSION_HOSTNAME given to the app")
    dev: bool = field(False, "development server: SERVER_SOFTWARE is Development/x.y")
    request_deadline_seconds: float = field(60.0, "the request timer: how long a handler may run")
    heartbeat_seconds: float = field(1.0, "how often the instance reports its load to the instance manager")
    deadline_grace_seconds: float = field(1.0, "after DeadlineExceededError is raised in a handler, how long it "
                                               "may take to write its own response")
    max_concurrent_requests: int = field(0, "requests served at once (0: app.yaml's automatic_scaling value, else 10)")
