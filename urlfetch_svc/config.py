"""Settings of ``python -m urlfetch_svc``."""

from __future__ import annotations

import dataclasses
import typing

from kiln_platform.config import GrpcServiceConfig, Secret, HostPort, ListenAddress, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class UrlFetchConfig(GrpcServiceConfig):
    """URL fetch service settings (env prefix ``KILN_URLFETCH_``)."""

    env_prefix: typing.ClassVar[str] = "URLFETCH"  # its environment variables are KILN_URLFETCH_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50053), "host:port to serve gRPC on")
    # A 32 MB response plus its envelope must fit in one message.
    max_message_bytes: int = field(40 * 1024 * 1024, "largest gRPC message accepted or sent, in bytes")
    allow_internal: str = field("", "internal networks an app may fetch from, app=CIDR[;CIDR][,app2=...]; '*' is "
                                    "every app (default: none — loopback, private and link-local are refused)")
    internal_networks: tuple[str, ...] = field((), "more networks to treat as internal (cluster networks on public "
                                       "addresses), CIDR[,CIDR]")
    front_doors: tuple[HostPort, ...] = field((), "the routers, IP:PORT[,IP:PORT]: every app may fetch them (how apps call apps), "
                                 "even on internal addresses")
    apps_domains: tuple[str, ...] = field((), "domains apps are served under (APP.DOMAIN), comma-separated: fetches there "
                                  "carry X-AppEngine-Inbound-AppId when redirects are not followed")
    inbound_secret: Secret = field(Secret(""), "key that signs X-AppEngine-Inbound-AppId for the routers (the "
                                                "same as the routers' --inbound-secret)")
    max_in_flight: int = field(64, "fetches performed at once (each may hold a 32 MB response)")
