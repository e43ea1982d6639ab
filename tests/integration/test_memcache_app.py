"""An app uses kiln.api.memcache through kiln dev: values persist between requests on any instance, per namespace.
Through router, NATS, the runtime and memcache_svc."""

from __future__ import annotations

import json
import textwrap

import pytest

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
