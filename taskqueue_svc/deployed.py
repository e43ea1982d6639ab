"""Queues of deployed apps: each app's default version's ``queue.yaml``, from the control plane
(:class:`kiln_platform.deployclient.DefaultVersionFile` says when it is re-read). A queue that stays the same keeps
its delivery loop; a changed one restarts it; a removed one stops (its tasks stay stored, and run again if the queue
comes back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from kiln_platform import queueyaml
from kiln_platform.deployclient import DefaultVersionFile, VersionSource

Apply = Callable[[str, queueyaml.QueueYaml], Awaitable[None]]


class DeployedQueues(DefaultVersionFile[queueyaml.QueueYaml]):
    """Keeps the service's queues equal to the default versions' queue.yaml files."""

    def __init__(self, source: VersionSource, apply: Apply) -> None:
        super().__init__(source, "queue.yaml", lambda version: version.queue_yaml,
                         lambda text, filename: queueyaml.parse(text, filename=filename),
                         lambda: queueyaml.QueueYaml({queueyaml.DEFAULT_QUEUE: queueyaml.DEFAULT}), apply)
