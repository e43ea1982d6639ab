"""The control plane's developer gateway (``deploy/control/gateway.py``): an app's services reached with only the
control plane's address and a deploy token, forwarded as that app and no other, on a real nats-server and real
services."""

from __future__ import annotations

import signal
import time
import uuid

import grpc
import pytest

from kiln.pb.cron.v1 import cron_pb2, cron_pb2_grpc
from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln.pb.memcache.v1 import memcache_pb2, memcache_pb2_grpc
from kiln_platform import auth as app_auth
from kiln_platform.supervisor import free_port, python_module
from tests.integration.conftest import SECRET, service_env
from tests.integration.test_control_plane import start_control, token

pytestmark = pytest.mark.nats

DEAD_LOGS = f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def gateway(supervisor, tmp_path_factory, nats_url, datastore_addr):
    """A control plane that forwards to the session's datastore, to a logs_svc that is down, and to no cron_svc."""
    return start_control(supervisor, tmp_path_factory, nats_url, "control-gateway", "--datastore-addr",
                         datastore_addr, "--logs-addr", DEAD_LOGS)


def new_app() -> str:
    return f"gw-{uuid.uuid4().hex[:8]}"


def put_through(gateway: str, tok: str, app: str | None, name: str) -> None:
    """Put an entity of kind Note named ``name`` through the gateway, naming ``app`` in the metadata (or not)."""
    meta = (("authorization", f"Bearer {tok}"),) + ((("kiln-app", app),) if app else ())
    entity = dpb.Entity(key=dpb.Key(path=[dpb.PathElement(kind="Note", name=name)]))
    with grpc.insecure_channel(gateway) as channel:
        datastore_pb2_grpc.DatastoreServiceStub(channel).Put(dpb.PutRequest(entities=[entity]), metadata=meta,
                                                             timeout=30)


def found_as(datastore_addr: str, app: str, name: str) -> bool:
    """Whether app ``app`` (its own token, straight to the datastore) finds the Note named ``name``."""
    key = dpb.Key(path=[dpb.PathElement(kind="Note", name=name)])
    with grpc.insecure_channel(datastore_addr) as channel:
        reply = datastore_pb2_grpc.DatastoreServiceStub(channel).Get(
            dpb.GetRequest(keys=[key]), timeout=30,
            metadata=(("authorization", f"Bearer {app_auth.mint_app_token(SECRET, app)}"),))
    return reply.results[0].HasField("entity")


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_an_admin_token_reaches_the_apps_datastore_as_that_app_only(gateway, datastore_addr):
    app, other = new_app(), new_app()
    put_through(gateway, token(app), app, "hello")
    assert found_as(datastore_addr, app, "hello")
    assert not found_as(datastore_addr, other, "hello")


def test_a_token_for_one_app_names_the_app(gateway, datastore_addr):
    app = new_app()
    put_through(gateway, token(app), None, "implied")
    assert found_as(datastore_addr, app, "implied")


def test_a_token_of_another_app_is_refused_and_writes_nothing(gateway, datastore_addr):
    app, other = new_app(), new_app()
    err = refusal(lambda: put_through(gateway, token(other), app, "intruder"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and app in err.details()
    assert not found_as(datastore_addr, app, "intruder")
    assert not found_as(datastore_addr, other, "intruder")


def test_a_read_token_is_refused(gateway, datastore_addr):
    app = new_app()
    err = refusal(lambda: put_through(gateway, token("*", "read", "router"), app, "reader"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not found_as(datastore_addr, app, "reader")


def test_a_token_for_every_app_must_name_one(gateway, datastore_addr):
    app = new_app()
    err = refusal(lambda: put_through(gateway, token("*", "admin", "operator"), None, "anyone"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "which app" in err.details()
    put_through(gateway, token("*", "admin", "operator"), app, "named")
    assert found_as(datastore_addr, app, "named")


@pytest.mark.parametrize("bearer", ["", "kiln1.bogus", "app-token"])
def test_a_call_without_a_deploy_token_is_unauthenticated(gateway, datastore_addr, bearer):
    app = new_app()
    tok = app_auth.mint_app_token(SECRET, app) if bearer == "app-token" else bearer  # an app's own token opens nothing
    err = refusal(lambda: put_through(gateway, tok, app, "anonymous"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not found_as(datastore_addr, app, "anonymous")


def test_a_malformed_app_name_is_refused(gateway):
    err = refusal(lambda: put_through(gateway, token("*", "admin", "operator"), "Not An App!", "x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_service_the_control_plane_was_not_given_is_refused_naming_the_setting(gateway):
    app = new_app()
    with grpc.insecure_channel(gateway) as channel:
        err = refusal(lambda: cron_pb2_grpc.CronServiceStub(channel).ListJobs(
            cron_pb2.ListJobsRequest(app_id=app), metadata=(("authorization", f"Bearer {token(app)}"),), timeout=30))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cron_svc" in err.details() and "--cron-addr" in err.details()


def test_an_unreachable_service_is_unavailable_naming_it(gateway):
    app = new_app()
    with grpc.insecure_channel(gateway) as channel:
        err = refusal(lambda: logs_pb2_grpc.LogsServiceStub(channel).Query(
            logs_pb2.QueryRequest(app_id=app), metadata=(("authorization", f"Bearer {token(app)}"),), timeout=30))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "logs_svc" in err.details() and DEAD_LOGS in err.details()


def test_the_services_own_refusal_comes_back_as_it_was_and_the_gateway_keeps_serving(gateway, datastore_addr):
    app = new_app()
    meta = (("authorization", f"Bearer {token(app)}"), ("kiln-app", app))
    with grpc.insecure_channel(gateway) as channel:
        raw = channel.unary_unary("/kiln.pb.datastore.v1.DatastoreService/Put")  # bytes in, bytes out
        err = refusal(lambda: raw(b"\xff\xff\xff", metadata=meta, timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in err.details()
    put_through(gateway, token(app), app, "after")
    assert found_as(datastore_addr, app, "after")


def memcache_stats(gateway: str, app: str) -> grpc.RpcError | None:
    """Call the app's memcache Stats through ``gateway``: ``None`` when it answered, else the error."""
    with grpc.insecure_channel(gateway) as channel:
        try:
            memcache_pb2_grpc.MemcacheServiceStub(channel).Stats(
                memcache_pb2.StatsRequest(), metadata=(("authorization", f"Bearer {token(app)}"),), timeout=30)
        except grpc.RpcError as exc:
            return exc
    return None


def test_a_service_that_restarts_is_reached_through_the_gateway_as_soon_as_it_listens(supervisor, tmp_path_factory,
                                                                                      nats_url):
    address = f"127.0.0.1:{free_port()}"

    def start_memcache(name: str):
        ready = supervisor.run_dir / f"{name}.addr"
        return supervisor.start(name, python_module("memcache_svc", "--listen", address, "--ready-file", str(ready)),
                                env=service_env(), ready_file=ready)

    shard = start_memcache("memcache-gw-first")
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-gw-restart", "--memcache-addr", address)
    app = new_app()
    assert memcache_stats(control, app) is None
    shard.proc.send_signal(signal.SIGKILL)
    shard.proc.wait(10)
    supervisor.children.remove(shard)
    # Down for 12 s of calls: gRPC's own reconnect backoff would by then wait about 7 s between attempts.
    down_until = time.monotonic() + 12
    while time.monotonic() < down_until:
        err = memcache_stats(control, app)
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE and address in err.details()
    start_memcache("memcache-gw-again")
    assert memcache_stats(control, app) is None  # the first call after the restart, not a retried one
