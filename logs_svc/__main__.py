"""``python -m logs_svc``: run the logs service."""

from kiln_platform import service_main
from logs_svc.app import serve
from logs_svc.config import LogsConfig

if __name__ == "__main__":
    raise SystemExit(service_main.run("logs_svc", LogsConfig, serve))
