"""Run a command that dies with the process that started it: ``diewithparent.py PARENT_PID CMD [ARGS...]``.

Run as a script (by path) by :mod:`kiln.supervisor`, never imported.

Sets ``PR_SET_PDEATHSIG`` (SIGTERM) and then execs the command, which keeps
the setting. The supervisor starts children through this small script rather
than with ``subprocess``'s ``preexec_fn``: running Python code in a child
forked from a process that uses gRPC can abort in gRPC's fork handlers
(seen in CI: "epoll_wait error: Bad file descriptor", SIGABRT before exec).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not argv[1].isdigit():
        print("usage: diewithparent.py PARENT_PID CMD [ARGS...]", file=sys.stderr)
        return 2
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(argv[1]):
        return 1  # the parent died before the signal was armed
    os.execvp(argv[2], argv[2:])
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
