"""Wiring of images_svc: Pillow's process-wide limits, the servicer, the gRPC server."""

from __future__ import annotations

from images_svc import imaging
from images_svc.blobs import Blobs
from images_svc.config import ImagesConfig
from images_svc.service import ImagesService
from kiln_platform import grpcserver
from kiln.pb.images.v1 import images_pb2, images_pb2_grpc

SERVICE_NAME = images_pb2.DESCRIPTOR.services_by_name["ImagesService"].full_name


async def serve(cfg: ImagesConfig) -> None:
    """Run the service until SIGTERM."""
    imaging.configure(cfg.max_pixels)
    blobs = Blobs(str(cfg.blobstore_addr), max_message_bytes=cfg.max_message_bytes) if cfg.blobstore_addr else None
    service = ImagesService(max_pixels=cfg.max_pixels, workers=cfg.workers, max_waiting=cfg.max_waiting,
                            jpeg_draft=cfg.jpeg_draft, blobs=blobs,
                            cache_bytes=int(cfg.serving_cache_mb * 1024 * 1024))
    registration = grpcserver.Registration(SERVICE_NAME, images_pb2_grpc.add_ImagesServiceServicer_to_server,
                                           service)
    await grpcserver.serve(cfg, [registration], on_stop=service.close)
