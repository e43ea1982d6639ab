"""``python -m console``: run kiln's web console."""

from console.app import serve
from console.config import ConsoleConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("console", ConsoleConfig, serve))
