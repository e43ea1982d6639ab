"""Handing secrets to a child process through a pipe, never through its environment or a file.

A process's environment is readable by every process of the same Unix user
(``/proc/PID/environ``), and so is every file that user owns: an app instance
running as kiln's own user (``--isolation none``) could read both. So the
parent writes the child's secrets into a pipe (:func:`pipe`) and the child
reads them once at start (:func:`receive`), before it runs anything else:
the secrets then live only in the child's memory. ``KILN_SECRETS_FD`` names
the pipe's descriptor; it is not a secret.

The receiving process also makes itself non-dumpable (``PR_SET_DUMPABLE`` 0),
so that other processes of its user cannot read its memory, environment or
descriptors through ``/proc`` either (root still can: that is for the OS
layer, per-app users, to prevent).
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Mapping

__all__ = ["FD_VARIABLE", "pipe", "receive", "undumpable"]

FD_VARIABLE = "KILN_SECRETS_FD"
_PR_SET_DUMPABLE = 4


def pipe(secrets: Mapping[str, str]) -> int:
    """A readable descriptor holding ``secrets`` (JSON), to pass to one child; the caller closes it after spawning.

    The secrets must fit the pipe's buffer (64 KiB on Linux), which the write would otherwise block on.
    """
    data = json.dumps(dict(secrets)).encode()
    read_end, write_end = os.pipe()
    try:
        if len(data) > 65536:
            raise ValueError("secrets too large for a pipe handover")
        os.write(write_end, data)
    finally:
        os.close(write_end)
    return read_end


def receive(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus the secrets handed over through ``KILN_SECRETS_FD`` (if set), read once and closed.

    Raises:
        ValueError: the descriptor does not hold a JSON object of strings.
    """
    out = {k: v for k, v in environ.items() if k != FD_VARIABLE}
    fd_text = environ.get(FD_VARIABLE)
    if not fd_text:
        return out
    undumpable()
    fd = int(fd_text)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    secrets = json.loads(b"".join(chunks) or b"{}")
    if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
        raise ValueError(f"{FD_VARIABLE}: expected a JSON object of strings")
    os.environ.pop(FD_VARIABLE, None)
    out.update(secrets)
    return out


def undumpable() -> None:
    """Make this process non-dumpable: other processes of its user cannot read it through ``/proc`` or ptrace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
