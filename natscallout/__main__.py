"""``python -m natscallout``: the NATS auth callout."""

from kiln_platform import service_main
from natscallout.app import serve
from natscallout.config import CalloutConfig

if __name__ == "__main__":
    raise SystemExit(service_main.run("natscallout", CalloutConfig, serve))
