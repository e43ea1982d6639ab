"""``python -m cron_svc``: run the cron service."""

from cron_svc.app import serve
from cron_svc.config import CronConfig
from kiln_platform import service_main

if __name__ == "__main__":
    raise SystemExit(service_main.run("cron_svc", CronConfig, serve))
