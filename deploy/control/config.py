"""Settings of ``python -m deploy.control``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.config import GrpcServiceConfig, HostPort, ListenAddress, Secret, StorageConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class ControlConfig(StorageConfig, GrpcServiceConfig):
    """Control plane settings (env prefix ``KILN_CONTROL_``); storage settings from :class:`StorageConfig`.

    ``service_secret`` is the deployment's service secret: the control plane
    hands an app's identity token to holders of the app's admin token (the CLI
    reads the app's logs and data with it).
    """

    env_prefix: typing.ClassVar[str] = "CONTROL"  # its environment variables are KILN_CONTROL_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50060), "host:port to serve gRPC on")
    admin_secret: Secret = field(Secret(""), "key that signs deploy tokens (mint tokens with python -m "
                                             "deploy.control mint-token)", required=True)
    nats_url: str = field("", "NATS server URL(s) deployment events are published on", required=True)
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/control").expanduser(),
                                   "directory of the embedded store")
    cassandra_keyspace: str = field("kiln_control", "keyspace for versions and files")
    datastore_addr: HostPort | None = field(None, "datastore_svc's gRPC address: each new version's index.yaml is "
                                                  "declared there (new indexes build in the background; none is "
                                                  "deleted), and kiln indexes and kiln bulkload reach it through "
                                                  "the control plane; empty: deploys say index.yaml was not "
                                                  "applied")
    logs_addr: HostPort | None = field(None, "logs_svc's gRPC address, which kiln logs reaches through the control "
                                             "plane; empty: kiln logs is refused, naming this setting")
    cron_addr: HostPort | None = field(None, "cron_svc's gRPC address, which kiln cron reaches through the control "
                                             "plane; empty: kiln cron is refused, naming this setting")
    taskqueue_addr: HostPort | None = field(None, "taskqueue_svc's gRPC address, which kiln taskqueue reaches "
                                                  "through the control plane; empty: kiln taskqueue is refused, "
                                                  "naming this setting")
    memcache_addr: HostPort | None = field(None, "memcache_svc's gRPC address, which a cluster's console (its "
                                                 "Memcache page) reaches through the control plane; empty: that "
                                                 "page is refused, naming this setting")
    mail_addr: HostPort | None = field(None, "mail_svc's gRPC address, which a cluster's console (its Mail pages: "
                                             "the dead letters) reaches through the control plane; empty: those "
                                             "pages are refused, naming this setting")
    blob_grace_seconds: float = field(3600.0, "files no version uses are deleted once they are this old (a deploy "
                                              "in progress has uploaded files its version does not name yet)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blob_grace_seconds < 0:
            raise ValueError("blob_grace_seconds: must be 0 or more")
