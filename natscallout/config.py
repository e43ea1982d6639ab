"""The callout's settings (``KILN_NATSCALLOUT_*``)."""

from __future__ import annotations

import dataclasses
import typing

from kiln_platform.config import GrpcServiceConfig, Secret, ListenAddress, field
from kiln_platform.natsauth import issuer_public_key


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalloutConfig(GrpcServiceConfig):
    """NATS auth callout settings (env prefix ``KILN_NATSCALLOUT_``)."""

    env_prefix: typing.ClassVar[str] = "NATSCALLOUT"  # its environment variables are KILN_NATSCALLOUT_<SETTING>

    not_required = frozenset({"service_secret"})

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50061), "host:port to serve gRPC health checking on")
    nats_url: str = field("", "NATS URL(s) with the platform's user (put credentials in the environment)",
                          required=True)
    issuer_seed: Secret = field(Secret(""), "the callout issuer's account nkey seed (SA…); nats-server's "
                                            "auth_callout.issuer is its public key (make one with "
                                            "`python -m kiln_platform.natsauth --new-callout-seed`)", required=True)
    app_secret: Secret = field(Secret(""), "the secret apps' NATS passwords are derived from "
                                           "(KILN_NATS_APP_SECRET)", required=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        issuer_public_key(self.issuer_seed.get())
