"""Wiring of urlfetch_svc.

The contract (``kiln.pb.urlfetch.v1.UrlFetchService``) is served and discoverable by
reflection and health checks; its methods answer UNIMPLEMENTED until issue #6
builds them.
"""

from __future__ import annotations

from urlfetch_svc.config import UrlFetchConfig
from kiln import grpcserver
from kiln.pb.urlfetch.v1 import urlfetch_pb2

SERVICE = urlfetch_pb2.DESCRIPTOR.services_by_name["UrlFetchService"]


async def serve(cfg: UrlFetchConfig) -> None:
    """Run the service until SIGTERM."""
    await grpcserver.serve(cfg, [], [(SERVICE.full_name, grpcserver.unimplemented(SERVICE, issue="issue #6"))])
