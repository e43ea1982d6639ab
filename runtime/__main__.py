"""``python -m runtime``: run one app instance."""

from kiln_platform import service_main
from runtime.app import serve
from runtime.config import RuntimeConfig

if __name__ == "__main__":
    raise SystemExit(service_main.run("runtime", RuntimeConfig, serve))
