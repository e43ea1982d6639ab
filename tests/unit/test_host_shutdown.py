"""runtime.host's shutdown: every manager is signalled before any is waited on, and all are gone when it returns."""

from __future__ import annotations

import pathlib
import sys
import textwrap
from typing import Any

from kiln_platform.supervisor import Supervisor
from runtime.host import Host, Running

MANAGERS = 20

# A stand-in for a manager: on SIGTERM it marks that it was signalled, and exits cleanly only once every one of
# the MANAGERS stand-ins was signalled. A host that waited on one before signalling the next would wait out its
# grace period and kill it (exit status -9).
MANAGER = textwrap.dedent("""\
    import pathlib, signal, sys, time
    marks, me, count = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    def on_term(*_):
        (marks / f"{me}.signalled").touch()
        while len(list(marks.glob("*.signalled"))) < count:
            time.sleep(0.01)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    (marks / f"{me}.ready").write_text("ready")
    while True:
        time.sleep(1)
    """)


async def test_shutdown_signals_every_manager_before_waiting_and_returns_when_all_are_gone(tmp_path: pathlib.Path):
    source: Any = None  # shutdown never asks the control plane
    host = Host(source, tmp_path, [], [], control_plane="", stop_grace=20.0)
    marks = tmp_path / "marks"
    marks.mkdir()
    sup = Supervisor(tmp_path / "run")
    children = []
    for n in range(MANAGERS):
        children.append(sup.spawn(f"manager-{n}", [sys.executable, "-c", MANAGER, str(marks), str(n), str(MANAGERS)],
                                  ready_file=marks / f"{n}.ready"))
    for n, child in enumerate(children):
        Supervisor.wait_ready(child, ready_file=marks / f"{n}.ready")
        host.running[("app", f"v{n}")] = Running(1, child, 384)
    await host.shutdown()
    assert [c.proc.poll() for c in children] == [0] * MANAGERS  # each exited by itself, none killed
    assert host.running == {}
