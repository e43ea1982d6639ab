"""The first ten minutes of a new user (issue 15): installing says kiln's own lines, a port in use is one line
naming ``--port``, closing the terminal stops ``kiln dev`` as Ctrl-C does, and each run's logs are its own.
Real ``kiln dev`` processes (``python -m deploy.cli dev``), real sockets and signals."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from kiln_platform.supervisor import StartError, Supervisor
from tests.integration.apps import THREADSAFE_YAML
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.nats

APP = "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"


def _app(tmp_path: pathlib.Path) -> pathlib.Path:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(THREADSAFE_YAML)
    (app_dir / "main.py").write_text(APP)
    return app_dir


def _kiln_dev(app_dir: pathlib.Path, data_dir: pathlib.Path, *args: str) -> subprocess.Popen[str]:
    """kiln dev with its stdout on a pipe and its stderr in ``stderr.txt`` beside the data directory."""
    # A session of its own, as a terminal gives its foreground job: signals to the group reach kiln dev alone.
    with open(data_dir.parent / "stderr.txt", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "deploy.cli", "dev", str(app_dir), "--console-port", "0",
                                 "--data-dir", str(data_dir), *args], stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True, cwd=ROOT)


def _stderr(tmp_path: pathlib.Path) -> str:
    return (tmp_path / "stderr.txt").read_text()


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in pathlib.Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.update(children)
            todo += children
    return found


def _alive(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


# --- a port already in use ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("held_on", ["127.0.0.1", "0.0.0.0"])
def test_a_port_in_use_stops_kiln_dev_with_one_line_naming_port(tmp_path, held_on):
    with socket.create_server((held_on, 0)) as holder:
        port = holder.getsockname()[1]
        proc = _kiln_dev(_app(tmp_path), tmp_path / "data", "--port", str(port))
        out, _ = proc.communicate(timeout=60)
    err = _stderr(tmp_path)
    assert proc.returncode == 1
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"kiln dev: 127.0.0.1:{port} is already in use")
    assert f"--port {port + 1}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "run" / "nats-server.log").exists()  # nothing was started


# --- stopping: Ctrl-C, kill, and the terminal closing -----------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_kiln_dev_stops_every_child_in_order_on_each_stop_signal(tmp_path, sig):
    proc = _kiln_dev(_app(tmp_path), tmp_path / "data", "--port", "0")
    try:
        line, deadline = "", time.monotonic() + 90
        while "serving app" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, "kiln dev did not start"
            line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0), timeout=30) as resp:  # an instance is running
            assert resp.read() == b"ok"
        children = _descendants(proc.pid)
        assert len(children) >= 8  # nats-server, the services, router, manager, instance (and their wrappers)
        os.killpg(proc.pid, sig)  # as the terminal does: to kiln dev's process group
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = _stderr(tmp_path)
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("kiln dev: stopped")
    assert "Traceback" not in out + err
    assert [pid for pid in children if _alive(pid)] == []
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "data" / "run").rglob("*.log")}
    assert any(name.startswith("instance-") for name in logs)
    assert {name: "Traceback" for name, text in logs.items() if "Traceback" in text} == {}


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_stop_signal_while_kiln_dev_starts_stops_what_had_started(tmp_path, sig):
    proc = _kiln_dev(_app(tmp_path), tmp_path / "data", "--port", "0")
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "data" / "run" / "datastore_svc.log").exists():  # NATS is up, the services start
            assert time.monotonic() < deadline and proc.poll() is None, "kiln dev did not start its services"
            time.sleep(0.05)
        children = _descendants(proc.pid)
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = _stderr(tmp_path)
    assert (proc.returncode, out) == (1, "kiln dev: stopped before serving\n"), err
    assert "Traceback" not in err
    assert children and [pid for pid in children if _alive(pid)] == []


# --- each run's logs ---------------------------------------------------------------------------------------------


def _say_and_exit(text: str, status: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; print({text!r}, flush=True); sys.exit({status})"]


def test_the_error_shown_at_start_holds_only_this_runs_log(tmp_path):
    Supervisor(tmp_path / "run").spawn("router", _say_and_exit("the earlier run's error", 1)).proc.wait(30)
    again = Supervisor(tmp_path / "run")
    child = again.spawn("router", _say_and_exit("this run's error", 1))
    with pytest.raises(StartError) as failed:
        again.wait_ready(child, ready_file=tmp_path / "never", timeout=30)
    assert "this run's error" in str(failed.value)
    assert "earlier run" not in str(failed.value)
    assert (tmp_path / "run" / "router.log").read_text() == "this run's error\n"
    assert (tmp_path / "run" / "router.log.1").read_text() == "the earlier run's error\n"  # kept, aside


def test_a_child_restarted_in_the_same_run_keeps_its_earlier_lines(tmp_path):
    sup = Supervisor(tmp_path / "run")
    sup.spawn("manager", _say_and_exit("first start", 3)).proc.wait(30)
    sup.spawn("manager", _say_and_exit("second start", 0)).proc.wait(30)
    assert (tmp_path / "run" / "manager.log").read_text() == "first start\nsecond start\n"


def test_kiln_dev_run_again_shows_only_the_new_runs_router_log(tmp_path):
    app_dir, data_dir = _app(tmp_path), tmp_path / "data"
    for _ in range(2):
        proc = _kiln_dev(app_dir, data_dir, "--port", "0")
        line, deadline = "", time.monotonic() + 90
        while "serving app" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, "kiln dev did not start"
            line = proc.stdout.readline()
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=90)
        assert proc.returncode == 0, _stderr(tmp_path)
    for name in ("router.log", "router.log.1"):
        assert (data_dir / "run" / name).read_text().count("router serving HTTP on") == 1


# --- installing --------------------------------------------------------------------------------------------------


def test_installing_prints_only_kilns_own_lines(tmp_path):
    """A fresh checkout (the repository's files as they are now) installed by deploy/install.sh."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    checkout = tmp_path / "kiln"
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / name)
    done = subprocess.run(["bash", "deploy/install.sh"], cwd=checkout, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert lines[0].startswith("install.sh: creating .venv")
    assert [line for line in lines if not line.startswith("install.sh: ")] == []
    assert lines[-1] == "install.sh: kiln is installed: .venv/bin/kiln"
