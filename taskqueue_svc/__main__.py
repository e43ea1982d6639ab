"""``python -m taskqueue_svc``: run the task queue service."""

from kiln_platform import service_main
from taskqueue_svc.app import serve
from taskqueue_svc.config import TaskQueueConfig

if __name__ == "__main__":
    raise SystemExit(service_main.run("taskqueue_svc", TaskQueueConfig, serve))
