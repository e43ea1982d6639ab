"""A python27-style app using Google's own SDK (``google.appengine``) runs under kiln dev: the SDK is installed as a
platform library, kiln's API proxy serves its calls (memcache, users) through kiln's services, tickets bind calls
to their request, and an app written for kiln.api next to it works unchanged. Through router, NATS, the runtime
and memcache_svc.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.integration.apps import fetch, running, wait_for

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import json, os, threading
    from google.appengine.api import memcache, users
    from google.appengine.runtime import apiproxy_errors

    try:
        memcache.get("at-import")
        AT_IMPORT = "no error"
    except apiproxy_errors.RPCFailedError as exc:
        AT_IMPORT = f"{type(exc).__name__}: {exc}"

    LATE = {}
    GO_ON = threading.Event()

    def late_call():
        GO_ON.wait(30)
        try:
            users.create_login_url("/late")
            LATE["result"] = "no error"
        except apiproxy_errors.RPCFailedError as exc:
            LATE["result"] = f"{type(exc).__name__}: {exc}"

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        client = memcache.Client()
        if path == "/memcache":
            body = {
                "set": memcache.set("greeting", {"hello": "world"}),
                "get": memcache.get("greeting"),
                "bytes": memcache.set(b"\xff\x00raw", b"\x00\x01") and memcache.get(b"\xff\x00raw").hex(),
                "add_existing": memcache.add("greeting", "other"),
                "incr_missing": memcache.incr("counter"),
                "incr_initial": memcache.incr("counter", initial_value=10),
                "decr": memcache.decr("counter", 3),
                "ns_set": memcache.set("greeting", "tenant", namespace="tenant-a"),
                "ns_get": memcache.get("greeting", namespace="tenant-a"),
                "multi": sorted(memcache.get_multi(["greeting", "missing", "counter"]).keys()),
                "offset": memcache.offset_multi({"counter": 5, "fresh": 1}, initial_value=0),
                "delete": memcache.delete("greeting", namespace="tenant-a"),
                "delete_again": memcache.delete("greeting", namespace="tenant-a"),
            }
        elif path == "/cas":
            client.set("cas-key", 1)
            first = client.gets("cas-key")
            memcache.set("cas-key", 2)  # someone else writes in between
            stale = client.cas("cas-key", first + 1)
            fresh = client.gets("cas-key")
            body = {"stale_cas": stale, "fresh_cas": client.cas("cas-key", fresh + 1),
                    "now": memcache.get("cas-key")}
        elif path == "/users":
            user = users.get_current_user()
            body = {"login": users.create_login_url("/after"), "logout": users.create_logout_url("/"),
                    "user": user.email() if user else None, "admin": users.is_current_user_admin()}
        elif path == "/start-late-thread":
            threading.Thread(target=late_call, daemon=True).start()
            body = {"started": True}
        elif path == "/late":
            GO_ON.set()
            body = {"late": LATE.get("result")}
        elif path == "/grpc":
            try:
                import grpc
                own = "imported"
            except ImportError as exc:
                own = type(exc).__name__
            from google.appengine.api import images  # the SDK's module imports grpc itself
            body = {"app_imports_grpc": own, "sdk_images": images.__name__}
        elif path == "/import":
            body = {"at_import": AT_IMPORT}
        elif path == "/environment":
            body = {k: os.environ.get(k) for k in (
                "GAE_APPLICATION", "GAE_SERVICE", "GAE_VERSION", "GAE_ENV", "GAE_RUNTIME", "GOOGLE_CLOUD_PROJECT",
                "CURRENT_MODULE_ID", "DATASTORE_APP_ID", "HTTP_X_APPENGINE_HTTPS", "HTTP_X_APPENGINE_REQUEST_LOG_ID")}
            body["has_ticket"] = bool(os.environ.get("HTTP_X_APPENGINE_API_TICKET"))
        else:
            body = {}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

KILN_API = textwrap.dedent(r'''
    import json
    from kiln.api import memcache

    def app(environ, start_response):
        memcache.set("kiln-api", "still works")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"value": memcache.get("kiln-api")}).encode()]
''')

APP_YAML = ("runtime: python27\napi_version: 1\nthreadsafe: true\n"
            "handlers:\n- url: /kiln-api\n  script: kilnapi.app\n- url: /.*\n  script: main.app\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("sdkapp"), {"main.py": MAIN, "kilnapi.py": KILN_API},
                 app_yaml=APP_YAML) as srv:
        yield srv


def get(server, path):
    status, _, body = fetch(server, path)
    assert status == 200, body
    return json.loads(body)


def test_the_sdks_memcache_stores_reads_counts_and_deletes_per_namespace(server):
    assert get(server, "/memcache") == {
        "set": True, "get": {"hello": "world"}, "bytes": "0001", "add_existing": False, "incr_missing": None,
        "incr_initial": 11, "decr": 8, "ns_set": True, "ns_get": "tenant", "multi": ["counter", "greeting"],
        "offset": {"counter": 13, "fresh": 1}, "delete": 2, "delete_again": 1}


def test_the_sdks_compare_and_set_refuses_a_stale_value_and_takes_a_fresh_one(server):
    assert get(server, "/cas") == {"stale_cas": False, "fresh_cas": True, "now": 3}


def test_the_sdks_users_module_builds_kilns_sign_in_urls(server):
    assert get(server, "/users") == {"login": "/_ah/login?continue=%2Fafter", "logout": "/_ah/logout?continue=%2F",
                                     "user": None, "admin": False}


def test_a_call_at_import_time_fails_with_the_sdks_error(server):
    assert get(server, "/import") == {
        "at_import": "RPCFailedError: Attempted RPC call without active security ticket"}


def test_a_thread_that_outlives_its_request_cannot_call_with_its_ticket(server):
    assert get(server, "/start-late-thread") == {"started": True}
    get(server, "/late")  # lets the thread call, after its request has ended
    found = {}

    def answered():
        found.update(get(server, "/late"))
        return found["late"] is not None

    wait_for(answered, 20)
    assert found["late"].startswith("RPCFailedError: kiln refused the API call user.CreateLoginURL(): its ticket "
                                    "does not work: its request has ended")


def test_the_runtime_sets_app_engines_variables_and_a_ticket_per_request(server):
    found = get(server, "/environment")
    assert found.pop("has_ticket") is True
    assert found.pop("HTTP_X_APPENGINE_REQUEST_LOG_ID")
    assert found == {"GAE_APPLICATION": "sdkapp0", "GAE_SERVICE": "default", "GAE_VERSION": "v1",
                     "GAE_ENV": "standard", "GAE_RUNTIME": "python27", "GOOGLE_CLOUD_PROJECT": "sdkapp0",
                     "CURRENT_MODULE_ID": "default", "DATASTORE_APP_ID": None, "HTTP_X_APPENGINE_HTTPS": "off"}


def test_the_sdk_uses_kilns_grpc_which_the_apps_own_code_still_cannot_import(server):
    assert get(server, "/grpc") == {"app_imports_grpc": "ModuleNotFoundError",
                                    "sdk_images": "google.appengine.api.images"}


def test_an_app_written_for_kiln_api_works_unchanged_next_to_the_sdk(server):
    assert get(server, "/kiln-api") == {"value": "still works"}
