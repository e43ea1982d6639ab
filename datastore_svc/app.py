"""Wiring of the datastore service: engine from config, servicer, gRPC server."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from collections.abc import Awaitable, Callable

from datastore_svc.config import DatastoreConfig
from datastore_svc.engine.base import Engine
from datastore_svc.catalog import AutoIndexFile
from datastore_svc import outbox
from datastore_svc.service import DatastoreService
from kiln.api._rpc import CHANNEL_OPTIONS
from kiln_platform import auth, grpcserver
from kiln.pb.datastore.v1 import datastore_pb2, datastore_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = datastore_pb2.DESCRIPTOR.services_by_name["DatastoreService"].full_name


async def open_engine(cfg: DatastoreConfig) -> Engine:
    """Pick the engine named by ``cfg.storage``; drivers are imported lazily."""
    async def on_embedded() -> Engine:
        from datastore_svc.engine import embedded
        return await embedded.create(cfg.data_dir, consistency=cfg.consistency)

    async def on_cassandra() -> Engine:
        from datastore_svc.engine import cassandra
        return await cassandra.create(cfg, index_shards=cfg.cassandra_index_shards)
    return await cfg.pick({"embedded": on_embedded, "cassandra": on_cassandra})


def servicer(engine: Engine, cfg: DatastoreConfig, tasks: outbox.Outbox | None = None) -> DatastoreService:
    """The servicer, configured."""
    auto = AutoIndexFile(pathlib.Path(cfg.auto_index_file)) if cfg.auto_index_file else None
    return DatastoreService(engine, index_cache_seconds=cfg.index_cache_seconds,
                            auto_index=auto, tasks=tasks)


def task_forwarder(engine: Engine, cfg: DatastoreConfig) -> tuple[outbox.Outbox, Callable[[], Awaitable[None]]]:
    """The outbox that adds committed transactions' tasks to ``cfg.taskqueue``, as each app (short-lived tokens)."""
    assert cfg.taskqueue is not None
    secret = cfg.service_secret.get()

    def token_for(app: str) -> str:
        return auth.mint_app_token(secret, app, expires_at=int(time.time()) + 300)
    return outbox.forwarder(engine, str(cfg.taskqueue), token_for, CHANNEL_OPTIONS,
                            sweep_seconds=cfg.tasks_sweep_seconds, sweep_after_seconds=cfg.tasks_sweep_after_seconds)


async def serve(cfg: DatastoreConfig) -> None:
    """Run the datastore service until SIGTERM."""
    engine = await open_engine(cfg)
    tasks, close_tasks = task_forwarder(engine, cfg) if cfg.taskqueue else (None, None)
    service = servicer(engine, cfg, tasks)
    upkeep = [asyncio.create_task(engine.maintain())]
    if tasks is not None:
        upkeep.append(asyncio.create_task(tasks.run()))

    async def stop() -> None:
        for job in upkeep:
            job.cancel()
        await asyncio.gather(*upkeep, return_exceptions=True)
        if tasks is not None and close_tasks is not None:
            await tasks.close()
            await close_tasks()
        await service.close()
        await engine.close()

    registration = grpcserver.Registration(
        SERVICE_NAME, datastore_pb2_grpc.add_DatastoreServiceServicer_to_server, service)
    await grpcserver.serve(cfg, [registration], on_stop=stop)
