"""An app uses kiln.api.memcache through kiln dev: values persist between requests on any instance, per namespace.
Through router, NATS, the runtime and memcache_svc."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import textwrap

import grpc
import pytest

from kiln.api import memcache
from kiln.pb.memcache.v1 import memcache_pb2, memcache_pb2_grpc
from kiln_platform import auth
from tests.integration import apps
from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import datetime, json
    from kiln.api import memcache, namespace_manager

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/put":
            memcache.set("when", datetime.date(2026, 11, 25))
            memcache.set("hits", 0)
            namespace_manager.set_namespace("tenant-a")
            memcache.set("hits", 100)
            body = {"ok": True}
        else:
            if environ.get("QUERY_STRING") == "ns=tenant-a":
                namespace_manager.set_namespace("tenant-a")
            body = {"when": str(memcache.get("when")), "hits": memcache.incr("hits")}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("cached"), {"main.py": MAIN}) as srv:
        yield srv


def get(server, path):
    status, _, body = fetch(server, path)
    assert status == 200, body
    return json.loads(body)


def test_an_app_keeps_values_between_requests_with_their_type_and_namespace(server):
    assert get(server, "/put") == {"ok": True}
    assert get(server, "/read") == {"when": "2026-11-25", "hits": 1}
    assert get(server, "/read") == {"when": "2026-11-25", "hits": 2}
    assert get(server, "/read?ns=tenant-a") == {"when": "None", "hits": 101}


OWING = textwrap.dedent(r'''
    import os
    from kiln.api import memcache

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/set":
            body = str(memcache.set("k", "old"))
        else:  # /delete, while the test has stopped the shard: past its deadline, so this instance owes it
            body = f"{memcache.delete('k')} {os.environ['GAE_INSTANCE']}"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.encode()]
''')


def test_an_instance_that_stops_owing_a_delete_sends_it_before_it_exits(tmp_path):
    with running(tmp_path / "owing", {"main.py": OWING}) as srv:
        assert fetch(srv, "/set")[2] == b"True"
        shard = next(c for c in srv.supervisor.children if c.name == "memcache_svc")
        shard.proc.send_signal(signal.SIGSTOP)
        try:
            status, _, body = fetch(srv, "/delete")
            result, instance = body.decode().split()
            assert (status, int(result)) == (200, memcache.DELETE_NETWORK_FAILURE)
            pid = srv.instances()[instance]
            os.kill(pid, signal.SIGTERM)  # stops at once; its shard rests a few seconds more
        finally:
            shard.proc.send_signal(signal.SIGCONT)
        apps.wait_for(lambda: not pathlib.Path(f"/proc/{pid}").exists(), 60)
        with grpc.insecure_channel(shard.address) as channel:  # as the next instance would read it
            found = memcache_pb2_grpc.MemcacheServiceStub(channel).Get(
                memcache_pb2.GetRequest(keys=[b"k"]), timeout=10,
                metadata=(("authorization", f"Bearer {auth.mint_app_token(srv._secret, srv.app_id)}"),))
        assert not found.items
