"""The OS layer around each instance, whatever the isolation mode: processes it starts die with it (a PID namespace),
its /tmp, /var/tmp and /dev/shm are its own bounded tmpfs, and the kernel holds its memory. Through router, NATS,
runtime.manager (``--isolation user`` and ``none``, as root) and the runtime.

Code that got past the Python layer is played by processes the test starts inside the instance's namespaces as the
instance's user (``nsenter``): the Python layer refuses ``os.fork`` and file writes to the app itself."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import uuid

import pytest

from kiln_platform.supervisor import python_module
from runtime import isolation
from tests.integration.apps import runtime_below, wait_for
from tests.integration.conftest import service_env

pytestmark = pytest.mark.nats

MAIN = r'''
import json, os

KEPT = []

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/huge":  # one allocation far beyond the instance's memory (F1: 384 MB, hard limit 480 MB)
        KEPT.append(bytearray(1200 << 20))
    body = json.dumps({"instance": os.environ["INSTANCE_ID"], "uid": os.getuid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''
APP_YAML = ("runtime: python27\napi_version: 1\nthreadsafe: true\ninstance_class: F1\n"
            "handlers:\n- url: /.*\n  script: main.app\n")
ISOLATION_PARENT = pathlib.Path("/var/lib/kiln-tests")


@pytest.fixture(scope="module")
def router(supervisor, nats_url):
    run = supervisor.run_dir
    apps = ",".join(f"confine-{mode}=v1" for mode in ("user", "none"))
    child = supervisor.start("router-confinement", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test", "--apps", apps,
        "--ready-file", str(run / "router-confinement.addr")), env=service_env(),
        ready_file=run / "router-confinement.addr")
    return child.address


class Version:
    """One app version run by its own runtime.manager."""

    def __init__(self, mode: str, router: str, manager, run: pathlib.Path) -> None:
        self.app_id = f"confine-{mode}"
        self.mode = mode
        self.router = router
        self.manager = manager
        self.run = run

    def call(self, path: str) -> tuple[int, dict[str, object]]:
        host, _, port = self.router.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request("GET", path, headers={"Host": f"{self.app_id}.example.test"})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, json.loads(body) if resp.status == 200 else {"body": body.decode(errors="replace")}
        finally:
            conn.close()

    def serving(self) -> dict[str, object]:
        found: dict[str, object] = {}
        wait_for(lambda: found.update(self.call("/")[1]) or "instance" in found, 60)
        return found

    def instance_pid(self) -> int:
        """The manager's child for the one ready instance (the wrapper outside the instance's PID namespace)."""
        state = json.loads((self.run / "instances.json").read_text())
        return next(i["pid"] for i in state if i["ready"])

    def runtime_pid(self) -> int:
        return runtime_below(self.instance_pid())

    def inside(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the instance's PID and mount namespaces, as its user: what escaped app code could do."""
        uid = int(self.serving()["uid"])
        as_user = ["-S", str(uid), "-G", str(uid)] if uid else []
        return subprocess.run(["nsenter", "-t", str(self.runtime_pid()), "-p", "-m", *as_user, "--", *argv],
                              capture_output=True, text=True, timeout=60, check=check)

    def manager_log(self) -> str:
        return self.manager.log_tail(10_000)


@pytest.fixture(params=["user", "none"])
def version(request, tmp_path_factory, supervisor, nats_url, grpc_services, router):
    if os.geteuid() != 0 or isolation.namespaces_blocked() or isolation.platform_blocked():
        pytest.fail("instance confinement needs root and a kernel with PID and mount namespaces (.ci/run runs the "
                    f"tests as root): {isolation.namespaces_blocked() or isolation.platform_blocked()}")
    mode = request.param
    app_dir = tmp_path_factory.mktemp(f"confine-{mode}")
    (app_dir / "app.yaml").write_text(APP_YAML)
    (app_dir / "main.py").write_text(MAIN)
    ISOLATION_PARENT.mkdir(parents=True, exist_ok=True)
    ISOLATION_PARENT.chmod(0o711)
    root = pathlib.Path(tempfile.mkdtemp(prefix="kiln-confinement-", dir=ISOLATION_PARENT))
    run = supervisor.run_dir / f"confine-{mode}-{uuid.uuid4().hex[:8]}"
    name = f"manager-{run.name}"
    manager = supervisor.start(name, python_module(
        "runtime.manager", "--app-dir", str(app_dir), "--app-id", f"confine-{mode}", "--version-id", "v1",
        "--nats-url", nats_url, "--run-dir", str(run), "--isolation", mode, "--isolation-root", str(root),
        "--ready-file", str(supervisor.run_dir / f"{name}.ready"), "--", "--listen", "127.0.0.1:0",
        "--datastore-addr", grpc_services["datastore"]),
        env=service_env(), ready_file=supervisor.run_dir / f"{name}.ready", timeout=120)
    yield Version(mode, router, manager, run)
    if manager.proc.poll() is None:
        manager.proc.terminate()
        manager.proc.wait(timeout=60)
    supervisor.children.remove(manager)


DAEMON = ("import os, sys, time\n"
          "if os.fork(): os._exit(0)\n"
          "os.setsid()\n"
          "if os.fork(): os._exit(0)\n"
          "null = os.open(os.devnull, os.O_RDWR)\n"
          "for fd in (0, 1, 2): os.dup2(null, fd)\n"
          "time.sleep(3600)  # marker: {marker}\n")


def start_daemon(version: Version) -> str:
    """Start a double-forked, setsid daemon inside the instance; return the marker that finds it."""
    marker = uuid.uuid4().hex
    version.inside(sys.executable, "-c", DAEMON.format(marker=marker))
    wait_for(lambda: daemons(marker), 30)
    return marker


def daemons(marker: str) -> list[int]:
    """Host pids of processes whose command line carries ``marker``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return [p for p in found if p != os.getpid()]


def test_a_daemon_an_instance_starts_dies_when_the_instance_stops(version):
    marker = start_daemon(version)
    os.kill(version.instance_pid(), signal.SIGTERM)  # what the manager does to stop an instance
    wait_for(lambda: not daemons(marker), 30)


def test_a_daemon_an_instance_starts_dies_when_its_manager_is_killed(version):
    marker = start_daemon(version)
    version.manager.proc.kill()
    version.manager.proc.wait(timeout=30)
    wait_for(lambda: not daemons(marker), 60)


def test_a_daemon_dies_when_the_instance_is_killed_outright(version):
    marker = start_daemon(version)
    os.kill(version.instance_pid(), signal.SIGKILL)
    wait_for(lambda: not daemons(marker), 30)


def test_an_instances_temporary_directories_are_one_private_bounded_tmpfs(version):
    name = f"kiln-confinement-{uuid.uuid4().hex}"
    script = ("import os, sys\n"
              "open(f'/tmp/{sys.argv[1]}', 'w').write('x')\n"
              "print(sorted(os.path.exists(f'{d}/{sys.argv[1]}') for d in ('/tmp', '/var/tmp', '/dev/shm')))\n"
              "print(os.statvfs('/dev/shm').f_blocks * os.statvfs('/dev/shm').f_frsize >> 20)\n")
    shown, size = version.inside(sys.executable, "-c", script, name).stdout.split("\n")[:2]
    assert shown == "[True, True, True]"  # one tmpfs at all three
    assert int(size) == 384  # F1's memory
    assert not any(pathlib.Path(d, name).exists() for d in ("/tmp", "/var/tmp", "/dev/shm"))  # not the host's


@pytest.mark.parametrize("where", ["/tmp", "/var/tmp", "/dev/shm"])
def test_writing_past_the_temporary_area_fails_with_no_space(version, where):
    done = version.inside("sh", "-c", f"head -c 400M /dev/zero > {where}/fill", check=False)
    assert done.returncode != 0 and "No space left on device" in done.stderr


def test_one_allocation_far_beyond_the_limit_fails_its_request_and_replaces_the_instance(version):
    before = version.serving()["instance"]
    status, body = version.call("/huge")
    assert status == 500, body
    wait_for(lambda: version.serving()["instance"] != before, 60)
    line = f"instance {before} used at most "
    wait_for(lambda: line in version.manager_log(), 30)
    peak = version.manager_log().split(line)[1].split()[0]
    # The kernel refused the allocation: the instance's memory never passed its hard limit (F1: 480 MB).
    assert int(peak) <= isolation.hard_memory_mb(384)
    assert "Exceeded hard memory limit of 480 MB" in "".join(
        p.read_text() for p in version.run.glob("instance-*.log"))
