"""An instance's resident memory read from /proc (runtime/memory.py): its process and every descendant."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from runtime.memory import resident_bytes

# A process that holds 64 MiB (touched, so resident), says so, then waits for its stdin to close.
HOLDER = "import sys; block = bytearray(64 << 20); print('held', flush=True); sys.stdin.read()"
# A process whose only child is the holder (sharing its stdin and stdout).
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {HOLDER!r}])"


def _statm_bytes(pid: int) -> int:
    """The resident set of ``pid`` alone, as the kernel gives it."""
    return int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _held(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_the_resident_memory_of_a_process_counts_its_children():
    parent = _held(PARENT)
    try:
        assert resident_bytes(parent.pid) - _statm_bytes(parent.pid) >= 64 << 20
    finally:
        parent.communicate("")


def test_a_process_without_children_counts_its_own_resident_set():
    holder = _held(HOLDER)
    try:
        own = _statm_bytes(holder.pid)
        assert own >= 64 << 20
        assert 0.9 * own <= resident_bytes(holder.pid) <= 1.1 * own  # the same memory, read a moment apart
    finally:
        holder.communicate("")


def test_a_process_that_is_gone_counts_nothing():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    assert resident_bytes(gone.pid) == 0
