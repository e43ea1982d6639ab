"""What ``kiln dev`` shows of its services as it happens: the lines of one logger in a child's text log (the task
queue's ``taskqueue_svc.events``: a task dropped after its retry limits, a queue paused or resumed), read from
where the last call stopped."""

from __future__ import annotations

import pathlib


class LogEvents:
    """New messages of ``logger`` in the text log at ``path`` (kiln_platform.log's format)."""

    def __init__(self, path: pathlib.Path, logger: str) -> None:
        self._path = path
        self._marker = f" {logger} ["
        self._offset = 0
        self._partial = b""

    def new(self) -> list[str]:
        """The messages written since the last call (a line still being written waits for the next one)."""
        try:
            with open(self._path, "rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        out = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            at = line.find(self._marker)
            if at >= 0:
                out.append(line[line.find("] ", at) + 2:])
        return out
