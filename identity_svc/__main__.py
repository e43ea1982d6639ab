"""``python -m identity_svc``: run the app identity service."""

from identity_svc.app import serve
from identity_svc.config import IdentityConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("identity_svc", IdentityConfig, serve))
