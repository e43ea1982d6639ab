"""The two servers the memcached comparisons talk to: Debian's memcached (the reference) and a kiln memcache shard
speaking the text protocol (``python -m memcache_svc --text-listen``), each a real process on its own port."""

from __future__ import annotations

import os
import shutil

import pytest

from kiln_platform.supervisor import Child, Supervisor, free_port, python_module
from tests.integration.conftest import service_env

MISSING = ("memcached, the reference these tests compare kiln with, is not installed: "
           "apt-get install memcached (Debian's package memcached)")


def start_memcached(supervisor: Supervisor, name: str) -> tuple[Child, int]:
    """Debian's memcached on a free loopback port, TCP only, with its default limits (64 MB, 1 MB items)."""
    binary = shutil.which("memcached")
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses to run as root without -u
    child = supervisor.start(name, [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", *user],
                             ready_port=port)
    return child, port


def start_kiln_text(supervisor: Supervisor, name: str) -> tuple[Child, int]:
    """A kiln memcache shard whose memcached text protocol serves app ``tools``."""
    port = free_port()
    ready = supervisor.run_dir / f"{name}.addr"
    child = supervisor.start(name, python_module("memcache_svc", "--listen", "127.0.0.1:0", "--ready-file",
                                                 str(ready), "--text-listen", f"127.0.0.1:{port}", "--text-app",
                                                 "tools"), env=service_env(), ready_file=ready)
    return child, port
