"""An instance's resident memory read from /proc (runtime/memory.py): its process and every descendant."""

from __future__ import annotations

import os
import subprocess
import sys

from runtime.memory import resident_bytes

# A child that holds 64 MiB (touched, so resident) and says so, then waits for its stdin to close.
HOLDER = "import sys; block = bytearray(64 << 20); print('held', flush=True); sys.stdin.read()"


def _own_statm_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_the_resident_memory_of_a_process_counts_its_children():
    alone = resident_bytes(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with_child = resident_bytes(os.getpid())
        assert with_child - alone >= 64 << 20
        assert resident_bytes(child.pid) >= 64 << 20
    finally:
        child.communicate("")


def test_a_process_alone_counts_its_own_resident_set():
    own = _own_statm_bytes()
    assert 0.8 * own <= resident_bytes(os.getpid()) <= 1.25 * own


def test_a_process_that_is_gone_counts_nothing():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    assert resident_bytes(gone.pid) == 0
