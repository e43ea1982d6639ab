"""Secrets reach a child through a pipe (kiln_platform.handover): in its memory, never in its environment."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from kiln_platform.supervisor import Supervisor

CHILD = """
import ctypes, json, os
from kiln_platform import handover
received = handover.receive(os.environ)
dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
with open("/proc/self/environ", "rb") as f:
    environ = f.read().decode("latin-1")
result = {"received": received, "environ": environ, "dumpable": dumpable, "fds": sorted(os.listdir("/proc/self/fd"))}
with open(os.environ["OUT"], "w") as out:
    json.dump(result, out)
"""


def run_child(tmp_path: pathlib.Path, secrets: dict[str, str] | None) -> dict[str, object]:
    sup = Supervisor(tmp_path / "run")
    out = tmp_path / "out.json"
    child = sup.spawn("child", [sys.executable, "-c", CHILD], env={"OUT": str(out), "PYTHONPATH": str(
        pathlib.Path(__file__).resolve().parents[2])}, secrets=secrets)
    assert child.proc.wait(timeout=60) == 0, child.log_tail()
    result: dict[str, object] = json.loads(out.read_text())
    return result


def test_secrets_reach_the_child_in_memory_and_never_its_environment(tmp_path: pathlib.Path) -> None:
    result = run_child(tmp_path, {"KILN_X_SERVICE_SECRET": "s3cret-value"})
    received = result["received"]
    assert isinstance(received, dict) and received["KILN_X_SERVICE_SECRET"] == "s3cret-value"
    assert "KILN_SECRETS_FD" not in received
    assert "s3cret-value" not in str(result["environ"])


def test_the_child_holding_secrets_is_not_dumpable_and_keeps_no_pipe_open(tmp_path: pathlib.Path) -> None:
    result = run_child(tmp_path, {"KILN_X_SERVICE_SECRET": "s3cret-value"})
    assert result["dumpable"] == 0
    assert result["fds"] == ["0", "1", "2", "3"]  # stdio and the /proc/self/fd listing itself


def test_a_child_without_secrets_is_left_dumpable(tmp_path: pathlib.Path) -> None:
    result = run_child(tmp_path, None)
    assert result["dumpable"] == 1
    received = result["received"]
    assert isinstance(received, dict) and received["OUT"] == str(tmp_path / "out.json")
    assert not [name for name in received if "SECRET" in name]


@pytest.mark.parametrize("payload", [b"[1, 2]", b'{"A": 1}', b"not json"])
def test_a_malformed_handover_is_refused(payload: bytes) -> None:
    import os

    from kiln_platform import handover

    read_end, write_end = os.pipe()
    os.write(write_end, payload)
    os.close(write_end)
    with pytest.raises(ValueError):
        handover.receive({"KILN_SECRETS_FD": str(read_end)})
