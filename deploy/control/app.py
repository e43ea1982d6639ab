"""Wiring of the control plane: the store, the NATS connection events go out on, the gRPC service."""

from __future__ import annotations

import logging

from deploy.control import tokens
from deploy.control.config import ControlConfig
from deploy.control.gateway import Gateway
from deploy.control.hosts import Hosts
from deploy.control.indexes import IndexApplier
from deploy.control.instances import Instances, stopper
from deploy.control.modules import ModulesService
from deploy.control.service import DeployService
from deploy.control.store import EmbeddedStore, Store
from kiln_platform import bus, grpcserver
from kiln.pb.deploy.v1 import deploy_pb2, deploy_pb2_grpc, events_pb2
from kiln.pb.modules.v1 import modules_pb2, modules_pb2_grpc
from kiln.pb.runtime.v1 import events_pb2 as runtime_events_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = deploy_pb2.DESCRIPTOR.services_by_name["DeployService"].full_name
MODULES_SERVICE_NAME = modules_pb2.DESCRIPTOR.services_by_name["ModulesService"].full_name


async def open_store(cfg: ControlConfig) -> Store:
    """The configured store, opened; Cassandra's driver is imported only when used."""
    async def embedded() -> Store:
        return EmbeddedStore(cfg.data_dir.expanduser())

    async def on_cassandra() -> Store:
        from deploy.control.cassandra_store import CassandraStore
        store = CassandraStore(cfg)
        await store.open()
        return store
    return await cfg.pick({"embedded": embedded, "cassandra": on_cassandra})


async def serve(cfg: ControlConfig) -> None:
    """Run the control plane until SIGTERM."""
    store = await open_store(cfg)
    nc = await bus.connect(cfg.nats_url, name="deploy-control")

    async def publish(subject: str, data: bytes) -> None:
        await nc.publish(subject, data)
        await nc.flush()

    hosts = Hosts()

    async def on_host(msg: object) -> None:
        try:
            hosts.observe(events_pb2.HostHeartbeat.FromString(msg.data))  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a malformed heartbeat is ignored
            log.warning("ignoring a malformed runtime host heartbeat")
    await nc.subscribe(bus.DEPLOY_HOST_SUBJECT, cb=on_host)
    instances = Instances(stopper(nc))

    async def on_instance(msg: object) -> None:
        named = bus.heartbeat_of(msg.subject)  # type: ignore[attr-defined]
        try:
            beat = runtime_events_pb2.InstanceHeartbeat.FromString(msg.data)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a malformed heartbeat is ignored
            # At debug level: an app's own process sends these, and could send them many times a second.
            log.debug("ignoring a malformed instance heartbeat on %s", msg.subject)  # type: ignore[attr-defined]
            return
        if named is not None:
            instances.observe(*named, beat)
    await nc.subscribe(bus.HEARTBEAT_SUBJECTS, cb=on_instance)
    await nc.publish(bus.DEPLOY_HOST_REPORT_SUBJECT, b"")  # hosts report now, not at their next heartbeat
    await nc.flush()
    indexes = IndexApplier(str(cfg.datastore_addr), cfg.service_secret.get()) if cfg.datastore_addr else None
    service = DeployService(store, service_secret=cfg.service_secret.get(), publish=publish, hosts=hosts,
                            instances=instances, blob_grace_seconds=cfg.blob_grace_seconds, indexes=indexes)

    # kiln's developer commands reach the app's services through here, with a deploy token (deploy/control/gateway.py).
    gateway = Gateway({setting: str(getattr(cfg, setting)) if getattr(cfg, setting) else None
                       for setting in ("logs_addr", "datastore_addr", "cron_addr", "taskqueue_addr",
                                       "memcache_addr", "mail_addr")},
                      cfg.service_secret.get())

    async def stop() -> None:
        await service.close()
        await gateway.close()
        await bus.shutdown(nc)
        await store.close()

    registration = grpcserver.Registration(SERVICE_NAME, deploy_pb2_grpc.add_DeployServiceServicer_to_server, service)
    # Apps' instances ask for their own services and versions with the app's token (App Engine's Modules API);
    # that token is accepted by ModulesService alone, deploy tokens by DeployService alone.
    modules = grpcserver.Registration(MODULES_SERVICE_NAME, modules_pb2_grpc.add_ModulesServiceServicer_to_server,
                                      ModulesService(store),
                                      authenticator=grpcserver.AppTokens(cfg.service_secret.get()))
    await grpcserver.serve(cfg, [registration, modules], gateway.handlers(), on_stop=stop,
                           authenticator=tokens.DeployTokens(cfg.admin_secret.get()))
