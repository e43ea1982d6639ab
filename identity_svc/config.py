"""Settings of ``python -m identity_svc``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.config import GrpcServiceConfig, ListenAddress, Secret, StorageConfig, field

# App Engine's access tokens lived an hour.
DEFAULT_ACCESS_TOKEN_SECONDS = 3600
# A new key for each app every day; the previous day's stays published (see identity_svc.keys).
DEFAULT_ROTATION_SECONDS = 86_400


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentityConfig(StorageConfig, GrpcServiceConfig):
    """App identity service settings (env prefix ``KILN_IDENTITY_``); storage settings from :class:`StorageConfig`."""

    env_prefix: typing.ClassVar[str] = "IDENTITY"  # its environment variables are KILN_IDENTITY_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50058), "host:port to serve gRPC on")
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/identity").expanduser(),
                                   "directory of the key store (SQLite)")
    cassandra_keyspace: str = field("kiln_identity", "keyspace for apps' signing keys")
    key_secret: Secret = field(Secret(""), "encrypts apps' private keys at rest (AES-256-GCM; at least 16 "
                                           "characters). Keep it "
                                           "with the deployment's other secrets: keys stored under another "
                                           "key_secret cannot be used", required=True)
    rotation_seconds: int = field(DEFAULT_ROTATION_SECONDS, "a new signing key becomes current for each app every "
                                                            "this many seconds (the previous one stays published "
                                                            "for one more period)")
    access_token_seconds: int = field(DEFAULT_ACCESS_TOKEN_SECONDS, "lifetime of access tokens, in seconds (at most "
                                                                    "rotation_seconds)")
    apps_domain: str = field("localhost", "the deployment's apps domain: an app's service account is APP@DOMAIN")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.key_secret or len(self.key_secret.get()) < 16:
            raise ValueError("key_secret: required, at least 16 characters (set KILN_IDENTITY_KEY_SECRET)")
        if self.rotation_seconds < 2:
            raise ValueError("rotation_seconds: must be at least 2")
        if not 1 <= self.access_token_seconds <= self.rotation_seconds:
            raise ValueError("access_token_seconds: must be from 1 to rotation_seconds (a token must expire while "
                             "the key that signed it is still published)")
        if not self.apps_domain or any(c.isspace() or c in "@/" for c in self.apps_domain):
            raise ValueError(f"apps_domain: {self.apps_domain!r} is not a domain name")
