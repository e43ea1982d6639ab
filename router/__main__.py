"""``python -m router``: run the HTTP front door."""

from kiln_platform import service_main
from router.app import serve
from router.config import RouterConfig

if __name__ == "__main__":
    raise SystemExit(service_main.run("router", RouterConfig, serve))
