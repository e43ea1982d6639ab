"""Wiring of the datastore service: engine from config, servicer, gRPC server."""

from __future__ import annotations

import logging

from datastore_svc.config import DatastoreConfig
from datastore_svc.engine.base import Engine
from datastore_svc.service import DatastoreService
from kiln import grpcserver
from kiln.pb.datastore.v1 import datastore_pb2, datastore_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = datastore_pb2.DESCRIPTOR.services_by_name["DatastoreService"].full_name


async def open_engine(cfg: DatastoreConfig) -> Engine:
    """Pick the engine named by ``cfg.storage``; drivers are imported lazily."""
    if cfg.storage == "cassandra":
        from datastore_svc.engine import cassandra
        return await cassandra.create(cfg.cassandra_hosts, cfg.cassandra_keyspace,
                                      cfg.cassandra_datacenter, cfg.cassandra_replication)
    from datastore_svc.engine import embedded
    return await embedded.create(cfg.data_dir)


def registration(engine: Engine, cfg: DatastoreConfig) -> grpcserver.Registration:
    """The servicer registration for a gRPC server."""
    return grpcserver.Registration(
        SERVICE_NAME, datastore_pb2_grpc.add_DatastoreServiceServicer_to_server,
        DatastoreService(engine, secret=cfg.service_secret.get()))


async def serve(cfg: DatastoreConfig) -> None:
    """Run the datastore service until SIGTERM."""
    engine = await open_engine(cfg)
    await grpcserver.serve(cfg, [registration(engine, cfg)], on_stop=engine.close)
