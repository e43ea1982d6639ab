"""Wiring of urlfetch_svc: the address policies from config, the servicer, the gRPC server."""

from __future__ import annotations

from kiln_platform import grpcserver
from kiln.pb.urlfetch.v1 import urlfetch_pb2, urlfetch_pb2_grpc
from urlfetch_svc.config import UrlFetchConfig
from urlfetch_svc.policy import Policies
from urlfetch_svc.service import UrlFetchService

SERVICE_NAME = urlfetch_pb2.DESCRIPTOR.services_by_name["UrlFetchService"].full_name


async def serve(cfg: UrlFetchConfig) -> None:
    """Run the service until SIGTERM."""
    service = UrlFetchService(policies=Policies.parse(cfg.allow_internal, cfg.internal_networks, cfg.front_doors),
                              max_in_flight=cfg.max_in_flight, inbound_secret=cfg.inbound_secret.get(),
                              apps_domains=[d.lower() for d in cfg.apps_domains])
    registration = grpcserver.Registration(SERVICE_NAME, urlfetch_pb2_grpc.add_UrlFetchServiceServicer_to_server,
                                           service)
    await grpcserver.serve(cfg, [registration], on_stop=service.close)
