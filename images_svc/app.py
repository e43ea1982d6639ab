"""Wiring of images_svc.

The contract (``kiln.pb.images.v1.ImagesService``) is served and discoverable by
reflection and health checks; its methods answer UNIMPLEMENTED until issue #7
builds them.
"""

from __future__ import annotations

from images_svc.config import ImagesConfig
from kiln import grpcserver
from kiln.pb.images.v1 import images_pb2

SERVICE = images_pb2.DESCRIPTOR.services_by_name["ImagesService"]


async def serve(cfg: ImagesConfig) -> None:
    """Run the service until SIGTERM."""
    await grpcserver.serve(cfg, [], [(SERVICE.full_name, grpcserver.unimplemented(SERVICE, issue="issue #7"))])
