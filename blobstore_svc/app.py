"""Wiring of blobstore_svc: the store picked by ``storage``, the servicer, the gRPC server."""

from __future__ import annotations

from blobstore_svc.config import BlobstoreConfig
from blobstore_svc.service import BlobstoreService
from blobstore_svc.store import EmbeddedStore, Store
from kiln.pb.blobstore.v1 import blobstore_pb2, blobstore_pb2_grpc
from kiln_platform import grpcserver

SERVICE_NAME = blobstore_pb2.DESCRIPTOR.services_by_name["BlobstoreService"].full_name


def _cassandra(cfg: BlobstoreConfig) -> Store:
    from blobstore_svc.cassandra_store import CassandraStore
    return CassandraStore(cfg)


async def serve(cfg: BlobstoreConfig) -> None:
    """Run the service until SIGTERM."""
    store = cfg.pick({"embedded": lambda: EmbeddedStore(cfg.data_dir), "cassandra": lambda: _cassandra(cfg)})
    await store.open()
    service = BlobstoreService(store, max_blob_bytes=cfg.max_blob_bytes, upload_url_seconds=cfg.upload_url_seconds)
    registration = grpcserver.Registration(SERVICE_NAME, blobstore_pb2_grpc.add_BlobstoreServiceServicer_to_server,
                                           service)
    await grpcserver.serve(cfg, [registration], on_stop=store.close)
