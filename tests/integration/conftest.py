"""Fixtures that start real parts: nats-server, the services (as real
``python -m`` processes on port 0), and a Cassandra node.

Cassandra: ``KILN_TEST_CASSANDRA=host:port`` uses a running node; otherwise
``deploy/cassandra.sh`` starts one for the session under a temporary data dir
and stops it afterwards.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import grpc
import pytest

from kiln_platform.supervisor import Supervisor, free_port, python_module
from kiln_platform import auth
from kiln.pb.datastore.v1 import datastore_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "integration-test-secret"
# Short, so that indexes declared by tests start building quickly.
INDEX_CACHE_SECONDS = 0.2
SERVICES = {
    "datastore": "datastore_svc", "memcache": "memcache_svc", "urlfetch": "urlfetch_svc",
    "mail": "mail_svc", "images": "images_svc", "cron": "cron_svc", "identity": "identity_svc",
    "blobstore": "blobstore_svc",
}


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in [*SERVICES, "manager", "logs", "control"]:
        env[f"KILN_{name.upper()}_SERVICE_SECRET"] = SECRET
    env["KILN_ROUTER_SESSION_SECRET"] = "integration-session-secret"
    env["KILN_CRON_PLATFORM_SECRET"] = "integration-platform-secret"
    env["KILN_CONTROL_ADMIN_SECRET"] = "integration-admin-secret"
    env["KILN_IDENTITY_KEY_SECRET"] = "integration-identity-key-secret"
    return env


def runtime_env(app_id: str) -> dict[str, str]:
    """What a runtime instance started by hand gets: no secrets, only its app's token (as runtime.manager gives)."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("KILN_") and "SECRET" in k)}
    env["KILN_RUNTIME_APP_TOKEN"] = auth.mint_app_token(SECRET, app_id)
    return env


def app_metadata(app_id: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {auth.mint_app_token(SECRET, app_id)}"),)


@pytest.fixture(scope="session")
def supervisor(tmp_path_factory):
    sup = Supervisor(tmp_path_factory.mktemp("run"))
    yield sup
    sup.stop_all()


@pytest.fixture(scope="session")
def nats_url(supervisor, tmp_path_factory):
    return f"nats://{supervisor.start_nats(tmp_path_factory.mktemp('nats')).address}"


@pytest.fixture(scope="session")
def grpc_services(supervisor, tmp_path_factory, nats_url):
    """Every gRPC service started with ``python -m``; datastore on the embedded engine, mail to an outbox."""
    data = tmp_path_factory.mktemp("datastore")
    run = supervisor.run_dir
    children = {}
    for name, module in SERVICES.items():
        args = ["--listen", "127.0.0.1:0", "--ready-file", str(run / f"{module}.addr")]
        if name == "datastore":
            args += ["--data-dir", str(data), "--index-cache-seconds", str(INDEX_CACHE_SECONDS)]
        if name == "mail":
            args += ["--nats-url", nats_url, "--outbox-dir", str(tmp_path_factory.mktemp("outbox"))]
        if name == "cron":
            args += ["--nats-url", nats_url]
        if name == "identity":
            args += ["--data-dir", str(tmp_path_factory.mktemp("identity"))]
        if name == "blobstore":
            args += ["--data-dir", str(tmp_path_factory.mktemp("blobstore-data"))]
        children[name] = supervisor.spawn(module, python_module(module, *args), env=service_env(),
                                          ready_file=run / f"{module}.addr")
    return {name: Supervisor.wait_ready(child, ready_file=run / f"{SERVICES[name]}.addr").address
            for name, child in children.items()}


@pytest.fixture(scope="session")
def datastore_addr(grpc_services):
    return grpc_services["datastore"]


@pytest.fixture(scope="session")
def cassandra_hosts(tmp_path_factory):
    """A real Cassandra node: KILN_TEST_CASSANDRA, or one started by deploy/cassandra.sh."""
    given = os.environ.get("KILN_TEST_CASSANDRA")
    if given:
        yield given
        return
    data_dir = tmp_path_factory.mktemp("cassandra")
    cql_port, storage_port = free_port(), free_port()
    env = {**os.environ, "KILN_CASSANDRA_FAST": "1"}
    done = subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "start", "--data-dir", str(data_dir),
                           "--cql-port", str(cql_port), "--storage-port", str(storage_port), "--heap", "768M"],
                          capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"could not start Cassandra:\n{done.stdout}\n{done.stderr}")
    try:
        yield done.stdout.strip().splitlines()[-1]
    finally:  # killed, not drained: its data is the session's and thrown away (a graceful stop took ~55 s)
        subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "kill", "--data-dir", str(data_dir)],
                       capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def datastore_cassandra_addr(supervisor, cassandra_hosts):
    run = supervisor.run_dir
    ready = run / "datastore_cassandra.addr"
    child = supervisor.start("datastore_svc-cassandra", python_module(
        "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--storage", "cassandra",
        "--cassandra-hosts", cassandra_hosts, "--cassandra-keyspace", "kiln_test", "--cassandra-index-shards", "3",
        "--index-cache-seconds", str(INDEX_CACHE_SECONDS)),
        env=service_env(), ready_file=ready, timeout=180)
    return child.address


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def datastore_stub(request):
    """A DatastoreService stub, once per engine."""
    addr = request.getfixturevalue("datastore_addr" if request.param == "embedded" else "datastore_cassandra_addr")
    channel = grpc.insecure_channel(addr)
    stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
    stub.channel = channel  # for tests that send raw bytes
    yield stub
    channel.close()
