"""How much memory an instance holds now: its cgroup's usage where it has one, else the resident set of its
process and every descendant (``/proc``). Read when the manager's metrics are scraped
(``kiln_runtime_instance_memory_bytes``); a process that ends meanwhile counts nothing."""

from __future__ import annotations

import contextlib
import os
import pathlib

PROC = pathlib.Path("/proc")
MAX_PROCESSES = 1024  # processes of one instance counted (an app cannot make the manager walk without end)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes(pid: int, proc: pathlib.Path = PROC) -> int:
    """The resident memory of ``pid`` and its descendants, in bytes (0 for a process gone)."""
    total, todo = 0, [pid]
    seen: set[int] = set()
    while todo and len(seen) < MAX_PROCESSES:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((proc / str(current) / "statm").read_text().split()[1]) * _PAGE
        with contextlib.suppress(OSError):
            for task in (proc / str(current) / "task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    todo.extend(int(child) for child in (task / "children").read_text().split())
    return total
