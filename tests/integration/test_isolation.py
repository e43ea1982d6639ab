"""The OS layer of the sandbox: two apps, each run by runtime.manager as its own Unix user on a private copy of its
files; neither can read the other's files, process memory or environment, even with code the Python layer allows
(reading files is allowed there). Through router, NATS, the instance manager and the runtime."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse

import pytest

from kiln_platform.supervisor import python_module
from runtime import isolation
from tests.integration.apps import wait_for
from tests.integration.conftest import service_env

pytestmark = pytest.mark.nats

MAIN = r'''
import json, os, pathlib, urllib.parse

def attempt(action):
    try:
        return {"ok": action()}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}

def app(environ, start_response):
    query = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
    path = environ["PATH_INFO"]
    if path == "/whoami":
        body = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
                "here": str(pathlib.Path(__file__).resolve().parent)}
    elif path == "/read":
        body = attempt(lambda: pathlib.Path(query["path"]).read_text())
    elif path == "/list":
        body = attempt(lambda: sorted(os.listdir(query["path"])))
    elif path == "/memory":
        def peek():
            pid = int(query["pid"])
            maps = pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines()
            start = int(maps[0].split("-")[0], 16)
            with open(f"/proc/{pid}/mem", "rb") as mem:
                mem.seek(start)
                return mem.read(16).hex()
        body = attempt(peek)
    elif path == "/import":
        body = attempt(lambda: __import__(query["name"]).__file__)
    elif path == "/environ":
        body = attempt(lambda: pathlib.Path(f"/proc/{query['pid']}/environ").read_text())
    elif path == "/services":
        from kiln.api import datastore, memcache
        def use():
            entity = datastore.Entity("Note", name="n")
            entity["text"] = query["text"]
            datastore.Put(entity)
            memcache.set("note", query["text"])
            return [datastore.Get(entity.key())["text"], memcache.get("note")]
        body = attempt(use)
    else:
        body = {"alive": True}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
'''

APPS = ("isola", "isolb")
ISOLATION_PARENT = pathlib.Path("/var/lib/kiln-tests")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, supervisor, nats_url, grpc_services):
    if os.geteuid() != 0 or isolation.platform_blocked():
        pytest.fail("per-app users need root and a Python other users can run: "
                    "python -m runtime.isolation prepare (as root) says what it changes; .ci/run runs it")
    # The isolation root must be reachable by app users (not under pytest's private temporary directory) and
    # outside /tmp, which each instance sees as its own tmpfs: then only the app users' permissions separate apps.
    ISOLATION_PARENT.mkdir(parents=True, exist_ok=True)
    ISOLATION_PARENT.chmod(0o711)
    root = pathlib.Path(tempfile.mkdtemp(prefix="kiln-isolation-", dir=ISOLATION_PARENT))
    run = supervisor.run_dir
    env = service_env()
    router = supervisor.start("router-isolation", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", "example.test",
        "--apps", ",".join(f"{a}=v1" for a in APPS), "--ready-file", str(run / "router-isolation.addr")),
        env=env, ready_file=run / "router-isolation.addr")
    sources = {}
    for app_id in APPS:
        app_dir = sources[app_id] = tmp_path_factory.mktemp(app_id)
        (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                          "libraries:\n- name: six\n  version: latest\n"
                                          "handlers:\n- url: /.*\n  script: main.app\n")
        (app_dir / "requirements.txt").write_text("itsdangerous==2.2.0\n")
        (app_dir / "main.py").write_text(MAIN)
        (app_dir / "secret.txt").write_text(f"{app_id}'s private data")
        supervisor.start(f"manager-{app_id}", python_module(
            "runtime.manager", "--app-dir", str(app_dir), "--app-id", app_id, "--version-id", "v1",
            "--nats-url", nats_url, "--run-dir", str(run / f"{app_id}-instances"), "--isolation", "user",
            "--isolation-root", str(root), "--ready-file", str(run / f"manager-{app_id}.ready"), "--",
            "--listen", "127.0.0.1:0", "--datastore-addr", grpc_services["datastore"], "--memcache-addr",
            grpc_services["memcache"]), env=env, ready_file=run / f"manager-{app_id}.ready", timeout=120)
    yield router.address, root, sources, run
    for app_id in APPS:
        for child in [c for c in supervisor.children if c.name == f"manager-{app_id}"]:
            child.proc.terminate()
            child.proc.wait(timeout=30)
            supervisor.children.remove(child)
    shutil.rmtree(root, ignore_errors=True)


def call(stack, app_id, url_path, **query):
    address = stack[0]
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.request("GET", url_path + ("?" + urllib.parse.urlencode(query) if query else ""),
                     headers={"Host": f"{app_id}.example.test"})
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def whoami(stack, app_id):
    found = {}
    wait_for(lambda: found.update(call(stack, app_id, "/whoami")) or found, 30)
    return found


def test_each_app_runs_as_its_own_unprivileged_user(stack):
    a, b = whoami(stack, "isola"), whoami(stack, "isolb")
    assert a["uid"] != 0 and b["uid"] != 0 and a["uid"] != b["uid"]
    assert a["gid"] == a["uid"] and a["groups"] == []


def test_an_app_reads_its_own_files(stack):
    here = whoami(stack, "isola")["here"]
    assert call(stack, "isola", "/read", path=f"{here}/secret.txt") == {"ok": "isola's private data"}


# Refused by the kernel: closed to the app's user, or not there at all (under /tmp, which is the instance's own).
REFUSED = ("PermissionError", "FileNotFoundError")


def test_an_app_cannot_read_or_list_another_apps_files(stack):
    other = whoami(stack, "isolb")["here"]
    assert call(stack, "isola", "/read", path=f"{other}/secret.txt")["error"] == "PermissionError"
    assert call(stack, "isola", "/list", path=other)["error"] == "PermissionError"
    source = stack[2]["isolb"]  # nor the directory it was deployed from
    assert call(stack, "isola", "/read", path=f"{source}/secret.txt")["error"] in REFUSED


def instance_pids(stack, app_id):
    """Host pids of the app's instances' processes (the manager's child and everything under it)."""
    state = json.loads((stack[3] / f"{app_id}-instances" / "instances.json").read_text())
    found, todo = [], [i["pid"] for i in state]
    while todo:
        pid = todo.pop()
        found.append(pid)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return found


def runtime_pid(stack, app_id):
    """The host pid of one instance's runtime process (not the wrapper or the namespace's init)."""
    whoami(stack, app_id)
    for pid in instance_pids(stack, app_id):
        if pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")[1:3] == [b"-m", b"runtime"]:
            return pid
    raise AssertionError(f"no runtime process of {app_id}")


# What app code that got past the Python layer would run: plain reads, as the app's user, judged by the kernel alone.
PEEK = r"""
import pathlib, sys
pid = int(sys.argv[1])
for read in (lambda: pathlib.Path(f"/proc/{pid}/maps").read_text(), lambda: open(f"/proc/{pid}/mem", "rb").read(16),
             lambda: pathlib.Path(f"/proc/{pid}/environ").read_text()):
    try:
        read()
        print("read")
    except PermissionError:
        print("PermissionError")
"""


def test_an_app_cannot_read_another_apps_process_memory_or_environment(stack):
    other_pid = runtime_pid(stack, "isolb")
    uid = whoami(stack, "isola")["uid"]
    assert os.stat(f"/proc/{other_pid}").st_uid == whoami(stack, "isolb")["uid"]
    # The Python layer refuses first (SandboxError is a PermissionError; in its PID namespace the process is not
    # even there) ...
    memory = call(stack, "isola", "/memory", pid=other_pid)
    assert memory["error"] in (*REFUSED, "SandboxError"), memory
    assert call(stack, "isola", "/environ", pid=other_pid)["error"] in (*REFUSED, "SandboxError")
    # ... and the kernel refuses the app's user as well.
    done = subprocess.run([sys.executable, "-c", PEEK, str(other_pid)], user=uid, group=uid, extra_groups=[],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.stdout.split() == ["PermissionError"] * 3, done.stdout + done.stderr


def test_an_instance_sees_only_its_own_processes(stack):
    listed = call(stack, "isola", "/list", path="/proc")["ok"]
    # Its namespace's init (root's, the wrapper) and its runtime; no other app's process, nor the platform's.
    assert sorted(int(p) for p in listed if p.isdigit()) == [1, whoami(stack, "isola")["pid"]]


def test_an_app_cannot_read_the_platforms_data(stack, supervisor):
    run = supervisor.run_dir  # NATS store, service logs, the embedded datastore's files live under here
    assert call(stack, "isola", "/list", path=str(run))["error"] in REFUSED
    registry = stack[1] / "app-users.json"
    assert call(stack, "isola", "/read", path=str(registry))["error"] == "PermissionError"


def test_the_same_app_keeps_its_user_and_apps_never_share_one(stack):
    users = json.loads((stack[1] / "app-users.json").read_text())
    assert set(users) == set(APPS) and len(set(users.values())) == len(APPS)
    assert users["isola"] == whoami(stack, "isola")["uid"]


def test_an_isolated_app_imports_its_libraries_and_requirements_from_its_own_copy(stack):
    here = pathlib.Path(whoami(stack, "isola")["here"])  # .../apps/isola/VERSION/app
    six = call(stack, "isola", "/import", name="six")["ok"]
    assert six.startswith(f"{here.parent}/libraries/")
    assert call(stack, "isola", "/import", name="itsdangerous")["ok"].startswith(f"{here.parent}/requirements/")


def from_inside(pid: int, host: str, port: int) -> str:
    """Try a TCP connection from inside process ``pid``'s network namespace: "connected" or the error."""
    code = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
            "    print('connected')\nexcept OSError as exc:\n    print(type(exc).__name__, exc.errno)")
    done = subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", code, host, str(port)],
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def test_an_instance_has_a_network_of_its_own_with_nothing_on_it(stack, grpc_services, nats_url):
    if isolation.network_blocked():
        pytest.fail(f"network namespaces are needed here: {isolation.network_blocked()}")
    pid = runtime_pid(stack, "isola")
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    nats_host, _, nats_port = nats_url.removeprefix("nats://").rpartition(":")
    ds_host, _, ds_port = grpc_services["datastore"].rpartition(":")
    # The same connections from here succeed: only the namespace stops them.
    assert from_inside(os.getpid(), nats_host, int(nats_port)) == "connected"
    assert from_inside(pid, nats_host, int(nats_port)).startswith("ConnectionRefusedError")
    assert from_inside(pid, ds_host, int(ds_port)).startswith("ConnectionRefusedError")
    # A port open on every address of this machine, reached by its address on the network (not loopback).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, socket.create_server(("0.0.0.0", 0)) as server:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing interface's address
            outside = probe.getsockname()[0]
        except OSError:  # a machine without a route beyond loopback: the loopback checks above are the test
            return
        port = server.getsockname()[1]
        assert from_inside(os.getpid(), outside, port) == "connected"
        assert from_inside(pid, outside, port).startswith("OSError 101")  # ENETUNREACH


def test_an_instance_without_a_network_still_uses_nats_and_the_services(stack):
    assert call(stack, "isola", "/services", text="through the sockets") == {
        "ok": ["through the sockets", "through the sockets"]}
