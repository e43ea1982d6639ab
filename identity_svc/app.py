"""Wiring of identity_svc: the key store (SQLite or Cassandra), the keyring, the gRPC servicer."""

from __future__ import annotations

import logging

from identity_svc import keys
from identity_svc.config import IdentityConfig
from identity_svc.keyring import Keyring
from identity_svc.service import PUBLIC_METHODS, IdentityService
from identity_svc.store import KeyStore, SqliteKeyStore
from kiln.pb.identity.v1 import identity_pb2, identity_pb2_grpc
from kiln_platform import grpcserver

log = logging.getLogger(__name__)

SERVICE_NAME = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name


def open_store(cfg: IdentityConfig) -> KeyStore:
    """The configured store; Cassandra's driver is imported only when used."""
    def on_cassandra() -> KeyStore:
        from identity_svc.cassandra_store import CassandraKeyStore
        return CassandraKeyStore(cfg)
    return cfg.pick({"embedded": lambda: SqliteKeyStore(cfg.data_dir / "keys.sqlite3"), "cassandra": on_cassandra})


async def serve(cfg: IdentityConfig) -> None:
    """Run the service until SIGTERM."""
    store = open_store(cfg)
    await store.open()
    keyring = Keyring(store, keys.Sealer(cfg.key_secret.get()), keys.Rotation(cfg.rotation_seconds),
                      token_seconds=cfg.access_token_seconds)
    servicer = IdentityService(keyring, apps_domain=cfg.apps_domain, token_seconds=cfg.access_token_seconds)
    registration = grpcserver.Registration(SERVICE_NAME, identity_pb2_grpc.add_IdentityServiceServicer_to_server,
                                           servicer, public_methods=PUBLIC_METHODS)

    async def stop() -> None:
        await keyring.close()
        await store.close()

    await grpcserver.serve(cfg, [registration], on_stop=stop)
