"""Settings of ``python -m runtime``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing
import uuid

from kiln_platform.config import GrpcServiceConfig, Secret, field


def _instance_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig(GrpcServiceConfig):
    """Runtime instance settings (env prefix ``KILN_RUNTIME_``).

    ``listen`` serves gRPC health checking for the instance. The instance holds
    its app's identity token, never the service secret that signs tokens: app
    code can read its own process's environment (``/proc/self/environ``), so a
    secret there would let it act as any app.
    """

    env_prefix: typing.ClassVar[str] = "RUNTIME"  # its environment variables are KILN_RUNTIME_<SETTING>

    not_required: typing.ClassVar[frozenset[str]] = frozenset({"service_secret"})

    app_dir: pathlib.Path = field(pathlib.Path("."), "directory of the app (holds app.yaml)")
    app_id: str = field("", "the app's id (default: app.yaml's application, else the directory name)")
    version_id: str = field("", "major version (default: app.yaml's version, else 'v1')")
    minor_version: int = field(1, "minor version, so CURRENT_VERSION_ID is major.minor")
    instance_id: str = dataclasses.field(default_factory=_instance_id,
                                         metadata={"help": "this instance's id (default: random)"})
    app_token: Secret = field(Secret(""), "this app's identity token for kiln's services (the instance manager "
                                          "mints it)", required=True)
    library_path: str = field("", "directories of the platform libraries app.yaml selected (os.pathsep-separated; "
                                  "runtime.manager installs them)")
    requirements_path: str = field("", "directory of the packages of the version's requirements.txt")
    private_dirs: str = field("", "directories app code may not read, os.pathsep-separated: kiln's run and data "
                                  "directories (runtime.manager sets them)")
    nats_url: str = field("", "NATS server URL(s), comma-separated", required=True)
    nats_socket: str = field("", "a Unix socket that reaches NATS, for an instance without a network of its own: "
                                 "the instance listens on its loopback and forwards there (runtime.manager sets it)")
    otlp_socket: str = field("", "a Unix socket that reaches the OTLP collector, for an instance without a network "
                                 "of its own: the instance listens on its loopback and exports there "
                                 "(runtime.manager sets it)")
    datastore_addr: str = field("127.0.0.1:50051", "datastore_svc gRPC address given to the app")
    memcache_addr: str = field("127.0.0.1:50052", "memcache_svc gRPC address given to the app")
    urlfetch_addr: str = field("127.0.0.1:50053", "urlfetch_svc gRPC address given to the app")
    mail_addr: str = field("127.0.0.1:50054", "mail_svc gRPC address given to the app")
    images_addr: str = field("127.0.0.1:50055", "images_svc gRPC address given to the app")
    identity_addr: str = field("127.0.0.1:50058", "identity_svc gRPC address given to the app")
    taskqueue_addr: str = field("127.0.0.1:50059", "taskqueue_svc gRPC address given to the app")
    blobstore_addr: str = field("127.0.0.1:50062", "blobstore_svc gRPC address given to the app")
    modules_addr: str = field("", "the control plane's gRPC address, where the app's SDK asks which services and "
                                  "versions the app has (App Engine's Modules API; runtime.host sets it); empty: "
                                  "answer from the one version this instance runs (kiln dev)")
    auth_domain: str = field("gmail.com", "AUTH_DOMAIN given to the app")
    default_hostname: str = field("localhost:8080", "DEFAULT_VERSION_HOSTNAME given to the app")
    dev: bool = field(False, "development server: SERVER_SOFTWARE is Development/x.y")
    request_deadline_seconds: float = field(60.0, "the request timer: how long a handler may run")
    heartbeat_seconds: float = field(1.0, "how often the instance reports its load to the instance manager")
    deadline_grace_seconds: float = field(1.0, "after DeadlineExceededError is raised in a handler, how long it "
                                               "may take to write its own response")
    memory_limit_mb: int = field(0, "instance memory: past it after a request the instance is replaced, and past "
                                    "1.25 times it at any moment it stops at once (0: app.yaml's instance_class)")
    max_concurrent_requests: int = field(0, "requests served at once (0: app.yaml's automatic_scaling value, else 10)")
    inflight_fd: int = field(-1, "a pipe to the instance manager, told of each request's start and end so that it "
                                 "answers them should the instance die (runtime.inflight; runtime.manager sets it)")
    allow_missing_syscall_filter: bool = field(False, "start even where the seccomp filter cannot be installed (no "
                                                      "libseccomp, or no seccomp in the kernel), with a critical "
                                                      "log line; never in production")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.service_secret:
            raise ValueError("service_secret: the runtime must not hold the service secret (app code could read it); "
                             "give it the app's token with --app-token or KILN_RUNTIME_APP_TOKEN")
