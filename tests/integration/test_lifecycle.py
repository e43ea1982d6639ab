"""Every deployable starts, reports healthy, and stops cleanly on SIGTERM."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kiln_platform.supervisor import Supervisor, python_module
from tests.integration.conftest import ROOT, SERVICES, runtime_env, service_env

pytestmark = pytest.mark.nats


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def _stop(child) -> tuple[int, str]:
    child.proc.send_signal(signal.SIGTERM)
    code = child.proc.wait(timeout=30)
    return code, child.log_path.read_text()


@pytest.mark.parametrize("module", [*sorted(SERVICES.values()), "deploy.control"])
def test_grpc_service_is_healthy_then_stops_cleanly_on_sigterm(module, tmp_path, request):
    sup = Supervisor(tmp_path)
    args = ["--listen", "127.0.0.1:0", "--ready-file", str(tmp_path / "addr")]
    if module in ("datastore_svc", "identity_svc"):
        args += ["--data-dir", str(tmp_path / "data")]
    if module == "mail_svc":  # its queue lives on JetStream
        args += ["--nats-url", request.getfixturevalue("nats_url"), "--outbox-dir", str(tmp_path / "outbox")]
    if module == "cron_svc":  # its claims and state live in NATS KV
        args += ["--nats-url", request.getfixturevalue("nats_url")]
    if module == "deploy.control":  # announces deployments on NATS
        args += ["--nats-url", request.getfixturevalue("nats_url"), "--data-dir", str(tmp_path / "control")]
    try:
        child = sup.start(module, python_module(module, *args), env=service_env(), ready_file=tmp_path / "addr")
        assert _health(child.address) == health_pb2.HealthCheckResponse.SERVING
        code, output = _stop(child)
    finally:
        sup.stop_all()
    assert code == 0
    assert "Traceback" not in output
    assert "stopped" in output


def test_service_without_secret_refuses_to_start_with_a_clear_error(tmp_path):
    sup = Supervisor(tmp_path)
    env = {k: v for k, v in service_env().items() if not k.endswith("_SERVICE_SECRET")}
    child = sup.spawn("memcache_svc", python_module("memcache_svc", "--listen", "127.0.0.1:0"), env=env)
    assert child.proc.wait(timeout=30) == 2
    output = child.log_path.read_text()
    assert "service_secret: required" in output
    assert "Traceback" not in output


def test_runtime_given_the_service_secret_refuses_to_start(tmp_path):
    sup = Supervisor(tmp_path)
    env = {**runtime_env("lifecycle"), "KILN_RUNTIME_SERVICE_SECRET": "a-secret"}
    child = sup.spawn("runtime", python_module("runtime", "--app-dir", str(ROOT / "examples" / "guestbook"),
                                                 "--nats-url", "nats://127.0.0.1:1"), env=env)
    assert child.proc.wait(timeout=30) == 2
    assert "the runtime must not hold the service secret" in child.log_path.read_text()


def test_runtime_without_an_app_token_refuses_to_start(tmp_path):
    sup = Supervisor(tmp_path)
    env = {k: v for k, v in runtime_env("lifecycle").items() if k != "KILN_RUNTIME_APP_TOKEN"}
    child = sup.spawn("runtime", python_module("runtime", "--app-dir", str(ROOT / "examples" / "guestbook"),
                                                 "--nats-url", "nats://127.0.0.1:1"), env=env)
    assert child.proc.wait(timeout=30) == 2
    assert "app_token: required" in child.log_path.read_text()


def test_runtime_and_router_are_healthy_then_stop_cleanly(nats_url, tmp_path):
    sup = Supervisor(tmp_path)
    app_dir = ROOT / "examples" / "guestbook"
    try:
        runtime = sup.start("runtime", python_module(
            "runtime", "--app-dir", str(app_dir), "--app-id", "lifecycle", "--nats-url", nats_url,
            "--listen", "127.0.0.1:0", "--ready-file", str(tmp_path / "rt")), env=runtime_env("lifecycle"),
            ready_file=tmp_path / "rt")
        router = sup.start("router", python_module(
            "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--dev-app", "lifecycle=v1",
            "--ready-file", str(tmp_path / "router")), env=service_env(), ready_file=tmp_path / "router")
        assert _health(runtime.address) == health_pb2.HealthCheckResponse.SERVING
        with urllib.request.urlopen(f"http://{router.address}/_ah/kiln/healthz", timeout=5) as resp:
            assert resp.status == 200
        results = [_stop(router), _stop(runtime)]
    finally:
        sup.stop_all()
    for code, output in results:
        assert code == 0
        assert "Traceback" not in output


def test_children_die_with_a_parent_that_is_killed_outright(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import pathlib, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from kiln_platform.supervisor import Supervisor\n"
        f"child = Supervisor(pathlib.Path({str(tmp_path / 'run')!r})).spawn('sleeper', ['sleep', '300'])\n"
        "print(child.proc.pid, flush=True)\n"
        "time.sleep(300)\n")
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped does not count)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_logs_service_stops_promptly_on_sigterm(nats_url, tmp_path):
    sup = Supervisor(tmp_path)
    try:
        child = sup.start("logs_svc", python_module(
            "logs_svc", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--data-dir", str(tmp_path / "data"),
            "--ready-file", str(tmp_path / "addr")), env={**service_env(), "KILN_LOGS_SERVICE_SECRET": "s"},
            ready_file=tmp_path / "addr")
        started = time.monotonic()
        code, output = _stop(child)
        assert code == 0, output
        assert time.monotonic() - started < 8
        assert "stopped" in output
    finally:
        sup.stop_all()
