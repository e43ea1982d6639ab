"""Wiring of cron_svc.

The contract (``kiln.pb.cron.v1.CronService``) is served and discoverable by
reflection and health checks; its methods answer UNIMPLEMENTED until issue #8
builds them.
"""

from __future__ import annotations

from cron_svc.config import CronConfig
from kiln import grpcserver
from kiln.pb.cron.v1 import cron_pb2

SERVICE = cron_pb2.DESCRIPTOR.services_by_name["CronService"]


async def serve(cfg: CronConfig) -> None:
    """Run the service until SIGTERM."""
    await grpcserver.serve(cfg, [], [(SERVICE.full_name, grpcserver.unimplemented(SERVICE, issue="issue #8"))])
