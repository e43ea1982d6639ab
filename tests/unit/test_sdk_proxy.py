"""kiln's API proxy for Google's SDK (kiln.sdk.proxy): stubs, tickets, call states, futures, threads, errors.

The SDK itself makes the calls (its apiproxy, UserRPC, and its API modules); the services behind the proxy are
test services, or kiln's services that need no socket (user, capability_service, system); modules has its own
tests (test_sdk_modules.py).
"""

from __future__ import annotations

import threading

import pytest

APP = "unit-app"
TICKET = "HTTP_X_APPENGINE_API_TICKET"


class Gate:
    """A test service: each call waits for its key's event (so a test decides the order calls finish in)."""

    name = "gate"

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.threads: dict[str, int] = {}
        self.started: dict[str, threading.Event] = {}

    def expect(self, key: str) -> threading.Event:
        self.started[key] = threading.Event()
        event = self.events[key] = threading.Event()
        return event

    def handle(self, method, request, response, ctx):
        from google.appengine.runtime import apiproxy_errors

        key = request.destination_url
        self.threads[key] = threading.get_ident()
        if key in self.started:
            self.started[key].set()
        if key in self.events:
            assert self.events[key].wait(10), f"the test never released {key}"
        if method == "Fail":
            raise apiproxy_errors.ApplicationError(7, f"failed {key}")
        response.login_url = f"done:{key}:{ctx.app_id}"


@pytest.fixture(scope="module")
def sdk(gae_sdk):
    from kiln.sdk import proxy

    gate = Gate()
    installed = proxy.install(APP, [*proxy.default_services(), gate])
    return installed, gate


@pytest.fixture
def ticket(sdk, monkeypatch):
    from kiln.sdk import tickets

    environ = {"DEFAULT_VERSION_HOSTNAME": "unit-app.example.test"}
    minted = tickets.open_ticket(APP, environ)
    monkeypatch.setenv(TICKET, minted)
    yield minted
    tickets.close(minted)


def gate_rpc(key, method="Open", callback=None):
    from google.appengine.api import apiproxy_stub_map, user_service_pb2

    rpc = apiproxy_stub_map.UserRPC("gate", callback=callback)
    rpc.make_call(method, user_service_pb2.CreateLoginURLRequest(destination_url=key),
                  user_service_pb2.CreateLoginURLResponse())
    return rpc


def test_every_service_the_sdk_knows_keeps_kilns_stub_after_wrap_wsgi_apps_default_stub(sdk):
    from google.appengine.api import apiproxy_stub_map
    from google.appengine.runtime import default_api_stub

    from kiln.sdk import proxy

    default_api_stub.Register(default_api_stub.DefaultApiStub())  # what wrap_wsgi_app() does
    for name in proxy.SDK_SERVICES:
        assert isinstance(apiproxy_stub_map.apiproxy.GetStub(name), proxy.KilnStub), name


@pytest.mark.parametrize("call", ["memcache", "users", "sync"])
def test_a_call_without_a_ticket_fails_as_the_sdk_fails_it(sdk, monkeypatch, call):
    from google.appengine.api import apiproxy_stub_map, memcache, user_service_pb2, users
    from google.appengine.runtime import apiproxy_errors

    monkeypatch.delenv(TICKET, raising=False)
    with pytest.raises(apiproxy_errors.RPCFailedError, match="^Attempted RPC call without active security ticket$"):
        if call == "memcache":
            memcache.get("k")  # raised although memcache's client swallows its calls' errors
        elif call == "users":
            users.create_login_url("/")
        else:
            apiproxy_stub_map.MakeSyncCall("user", "CreateLoginURL",
                                           user_service_pb2.CreateLoginURLRequest(destination_url="/"),
                                           user_service_pb2.CreateLoginURLResponse())


def test_a_ticket_whose_request_ended_is_refused_saying_so(sdk, monkeypatch):
    from google.appengine.api import memcache, users
    from google.appengine.runtime import apiproxy_errors

    from kiln.sdk import tickets

    with tickets.opened(APP, {}) as ended:
        pass
    monkeypatch.setenv(TICKET, ended)
    for call in (lambda: users.create_login_url("/"), lambda: memcache.set("k", 1)):
        with pytest.raises(apiproxy_errors.RPCFailedError, match="its request has ended"):
            call()


def test_a_ticket_this_instance_never_issued_is_refused(sdk, monkeypatch):
    from google.appengine.api import users
    from google.appengine.runtime import apiproxy_errors

    monkeypatch.setenv(TICKET, "forged-ticket")
    with pytest.raises(apiproxy_errors.RPCFailedError, match="not issued to a request of this instance"):
        users.create_logout_url("/")


def test_a_ticket_of_another_app_is_refused(sdk, monkeypatch):
    from google.appengine.api import users
    from google.appengine.runtime import apiproxy_errors

    from kiln.sdk import tickets

    with tickets.opened("other-app", {}) as theirs:
        monkeypatch.setenv(TICKET, theirs)
        with pytest.raises(apiproxy_errors.RPCFailedError, match="issued to another app"):
            users.create_login_url("/")


@pytest.mark.parametrize("service, call", [("channel", "CreateChannel"), ("search", "Search"), ("file", "Open"),
                                           ("xmpp", "SendMessage"), ("logservice", "Read"),
                                           ("no_such_service", "Anything")])
def test_a_service_kiln_does_not_serve_fails_with_call_not_found_naming_it(sdk, ticket, service, call):
    from google.appengine.api import apiproxy_stub_map, api_base_pb2
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.CallNotFoundError, match=f"kiln does not provide the App Engine service "
                                                                f"'{service}' yet"):
        apiproxy_stub_map.MakeSyncCall(service, call, api_base_pb2.VoidProto(), api_base_pb2.VoidProto())


def test_a_taskqueue_call_kiln_does_not_serve_gets_call_not_found_naming_the_method(sdk, ticket):
    from google.appengine.api import apiproxy_stub_map
    from google.appengine.api.taskqueue import taskqueue_service_bytes_pb2 as gae
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.CallNotFoundError, match=r"taskqueue\.UpdateQueue\(\) is not served"):
        apiproxy_stub_map.MakeSyncCall("taskqueue", "UpdateQueue", gae.TaskQueueUpdateQueueRequest(),
                                       gae.TaskQueueUpdateQueueResponse())


def test_a_call_goes_running_then_finishing_and_its_callback_runs_once_it_finished(sdk, ticket):
    from google.appengine.api import apiproxy_rpc

    _, gate = sdk
    release = gate.expect("states")
    seen = []
    rpc = gate_rpc("states", callback=lambda: seen.append((rpc.state, rpc.future.done())))
    assert rpc.state == apiproxy_rpc.RPC.RUNNING
    assert gate.started["states"].wait(10)  # a worker runs it: reading its future now does not take it over
    assert not rpc.future.done()
    release.set()
    assert rpc.get_result() is None
    assert rpc.state == apiproxy_rpc.RPC.FINISHING
    assert rpc.future.done()
    rpc.wait()
    assert seen == [(apiproxy_rpc.RPC.FINISHING, True)]  # once, as the SDK's UserRPC calls it
    assert rpc.response.login_url == f"done:states:{APP}"


def test_a_synchronous_call_runs_on_the_callers_thread(sdk, ticket):
    from google.appengine.api import users

    _, gate = sdk
    url = users.create_login_url("/")
    assert url == "/_ah/login?continue=%2F"
    rpc = gate_rpc("inline")
    rpc.get_result()
    # Claimed by wait() unless a worker took it first; a synchronous call taken by the caller costs no hop.
    assert gate.threads["inline"] == threading.get_ident() or rpc.response.login_url == f"done:inline:{APP}"


def test_calls_made_asynchronously_run_on_workers_while_the_caller_works(sdk, ticket):
    _, gate = sdk
    release = gate.expect("background")
    rpc = gate_rpc("background")
    assert gate.started["background"].wait(10)  # started although nobody waits for it
    assert gate.threads["background"] != threading.get_ident()
    release.set()
    rpc.get_result()


def test_reading_the_future_of_a_call_no_worker_started_runs_it_on_the_readers_thread(sdk, ticket):
    from google.appengine.api import apiproxy_stub_map

    from kiln.sdk import proxy

    _, gate = sdk
    busy = [f"busy{i}" for i in range(proxy.WORKERS)]
    releases = [gate.expect(key) for key in busy]
    held = [gate_rpc(key) for key in busy]
    for key in busy:  # every worker is held by a call
        assert gate.started[key].wait(10)
    queued = gate_rpc("queued")
    assert apiproxy_stub_map.UserRPC.wait_any([queued]) is queued  # ndb's wait: no worker was free
    assert gate.threads["queued"] == threading.get_ident()
    for release in releases:
        release.set()
    apiproxy_stub_map.UserRPC.wait_all(held)
    assert {r.response.login_url for r in held} == {f"done:{k}:{APP}" for k in busy}


def test_wait_any_returns_the_call_that_finished_first_of_several(sdk, ticket):
    from google.appengine.api import apiproxy_stub_map

    _, gate = sdk
    releases = {key: gate.expect(key) for key in ("first", "second", "third")}
    rpcs = [gate_rpc(key) for key in ("first", "second", "third")]
    for key in ("first", "second", "third"):
        assert gate.started[key].wait(10)
    releases["second"].set()
    assert apiproxy_stub_map.UserRPC.wait_any(rpcs) is rpcs[1]
    releases["third"].set()
    rpcs[2].future.result(10)
    assert apiproxy_stub_map.UserRPC.wait_any([rpcs[0], rpcs[2]]) is rpcs[2]
    releases["first"].set()
    apiproxy_stub_map.UserRPC.wait_all(rpcs)
    assert [r.get_result() for r in rpcs] == [None, None, None]
    assert [r.response.login_url for r in rpcs] == [f"done:{k}:{APP}" for k in ("first", "second", "third")]


def test_a_services_error_reaches_the_caller_and_the_callback_runs_once(sdk, ticket):
    from google.appengine.runtime import apiproxy_errors

    calls = []
    rpc = gate_rpc("failing", method="Fail", callback=lambda: calls.append(1))
    with pytest.raises(apiproxy_errors.ApplicationError) as raised:
        rpc.check_success()
    assert (raised.value.application_error, raised.value.error_detail) == (7, "failed failing")
    rpc.wait()
    assert calls == [1]


def test_cancel_fails_a_requests_calls_in_flight_and_refuses_its_later_ones(sdk, ticket):
    from google.appengine.runtime import apiproxy_errors

    from kiln.sdk import tickets

    _, gate = sdk
    release = gate.expect("cancelled")
    rpc = gate_rpc("cancelled")
    assert gate.started["cancelled"].wait(10)
    assert tickets.cancel(ticket) == 1
    with pytest.raises(apiproxy_errors.CancelledError):
        rpc.check_success()
    release.set()
    with pytest.raises(apiproxy_errors.CancelledError):
        gate_rpc("after-cancel")


def test_a_thread_started_during_a_request_calls_with_its_ticket_until_the_request_ends(sdk, monkeypatch):
    from google.appengine.api import users
    from google.appengine.runtime import apiproxy_errors

    from kiln.sdk import tickets

    results = []
    go_on = threading.Event()

    def thread_body():
        results.append(users.create_login_url("/during"))
        go_on.wait(10)
        try:
            users.create_login_url("/after")
        except apiproxy_errors.RPCFailedError as exc:
            results.append(str(exc))

    with tickets.opened(APP, {}) as minted:
        monkeypatch.setenv(TICKET, minted)  # the process environment a thread of the request sees
        thread = threading.Thread(target=thread_body)
        thread.start()
        while not results:
            thread.join(0.01)
    go_on.set()
    thread.join(10)
    assert results[0] == "/_ah/login?continue=%2Fduring"
    assert "its request has ended" in results[1]


def test_user_service_errors_become_the_users_modules_exceptions(sdk, ticket):
    from google.appengine.api import users

    with pytest.raises(users.RedirectTooLongError):
        users.create_login_url("/" + "x" * 3000)
    assert users.create_logout_url("/bye") == "/_ah/logout?continue=%2Fbye"


def test_capabilities_are_enabled(sdk, ticket):
    from google.appengine.api import capabilities

    assert capabilities.CapabilitySet("datastore_v3", capabilities=["write"]).is_enabled()
    assert capabilities.CapabilitySet("memcache").is_enabled()


def test_system_stats_describe_this_process(sdk, ticket):
    from google.appengine.api.runtime import runtime

    assert runtime.memory_usage().current > 0
    assert runtime.cpu_usage().total > 0


def test_background_threads_are_refused_where_scaling_does_not_allow_them(sdk, ticket):
    from google.appengine.api import background_thread

    with pytest.raises(background_thread.FrontendsNotSupported):
        background_thread.start_new_background_thread(print, ["never"])
