"""The callout's settings (``KILN_NATSCALLOUT_*``)."""

from __future__ import annotations

import dataclasses

from kiln_platform.bus import DEFAULT_URL
from kiln_platform.config import GrpcServiceConfig, Secret, ListenAddress, field
from kiln_platform.natsauth import issuer_public_key


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalloutConfig(GrpcServiceConfig):
    """NATS auth callout settings (env prefix ``KILN_NATSCALLOUT_``)."""

    requires_service_secret = False

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50061), "host:port to serve gRPC health checking on")
    nats_url: str = field(DEFAULT_URL, "NATS URL(s) with the platform's user (put credentials in the environment)")
    issuer_seed: Secret = field(Secret(""), "the callout issuer's account nkey seed (SA…); nats-server's "
                                            "auth_callout.issuer is its public key (required)")
    app_secret: Secret = field(Secret(""), "the secret apps' NATS passwords are derived from "
                                           "(KILN_NATS_APP_SECRET; required)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.app_secret:
            raise ValueError("app_secret: required (KILN_NATSCALLOUT_APP_SECRET)")
        if not self.issuer_seed:
            raise ValueError("issuer_seed: required (KILN_NATSCALLOUT_ISSUER_SEED; make one with "
                             "`python -m kiln_platform.natsauth --new-callout-seed`)")
        issuer_public_key(self.issuer_seed.get())
