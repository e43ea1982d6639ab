"""URL Fetch: kiln.api.urlfetch against a real urlfetch_svc, which fetches from real local HTTP and HTTPS servers
that behave well and badly. The app 'fetcher' is allowed the internal address 127.0.0.2 (where the servers
listen); 127.0.0.1 — where kiln's own services live — stays forbidden to every app."""

from __future__ import annotations

import json

import grpc
import pytest

from kiln.api import _rpc, urlfetch
from kiln.pb.urlfetch.v1 import urlfetch_pb2 as pb
from kiln.pb.urlfetch.v1 import urlfetch_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration import webservers
from tests.integration.conftest import SECRET, app_metadata, service_env

pytestmark = pytest.mark.nats

ALLOWED = "127.0.0.2"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def service(supervisor):
    ready = supervisor.run_dir / "urlfetch-policy.addr"
    child = supervisor.start("urlfetch-policy", python_module(
        "urlfetch_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
        "--allow-internal", f"fetcher={ALLOWED}/32"), env=service_env(), ready_file=ready)
    return child.address


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    with webservers.serving(ALLOWED) as plain, webservers.serving("127.0.0.1") as internal, \
            webservers.serving(ALLOWED, tls_dir=tmp_path_factory.mktemp("tls")) as tls:
        yield {"http": plain.base, "internal": internal.base, "https": tls.base,
               "internal_port": internal.server_address[1]}


@pytest.fixture
def as_app(service, monkeypatch):
    """Make this test process an app's SDK: service address and the app's token."""
    def use(app_id: str) -> None:
        from kiln_platform import auth
        monkeypatch.setenv("KILN_URLFETCH_ADDR", service)
        monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app_id))
        _rpc.reset()
    use("fetcher")
    yield use
    _rpc.reset()


def echo(result):
    assert result.status_code == 200
    return json.loads(result.content)


def test_get_returns_status_headers_and_content(as_app, servers):
    result = urlfetch.fetch(servers["http"] + "/echo?q=1", headers={"X-Custom": "yes"})
    body = echo(result)
    assert body["method"] == "GET" and body["path"] == "/echo?q=1" and body["headers"]["X-Custom"] == "yes"
    assert result.headers["content-type"] == "application/json" and result.headers["X-MULTI"] == "a"
    assert result.final_url is None and result.content_was_truncated is False


def test_user_agent_carries_the_app_id_after_the_apps_own(as_app, servers):
    agent = echo(urlfetch.fetch(servers["http"] + "/echo", headers={"User-Agent": "mine/1"}))["headers"]["User-Agent"]
    assert agent == "mine/1 AppEngine-Google; (+http://code.google.com/appengine; appid: fetcher)"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_methods_with_a_payload_send_it(as_app, servers, method):
    body = echo(urlfetch.fetch(servers["http"] + "/echo", payload=b"data=1", method=method))
    assert (body["method"], body["body"]) == (method, "data=1")


@pytest.mark.parametrize("method, name", [(urlfetch.DELETE, "DELETE"), (urlfetch.GET, "GET"), ("delete", "DELETE")])
def test_methods_without_a_payload_ignore_one(as_app, servers, method, name):
    body = echo(urlfetch.fetch(servers["http"] + "/echo", payload=b"ignored", method=method))
    assert (body["method"], body["body"]) == (name, "")


def test_head_has_headers_and_no_content(as_app, servers):
    result = urlfetch.fetch(servers["http"] + "/echo", method=urlfetch.HEAD)
    assert result.status_code == 200 and result.content == b"" and result.headers["Content-Type"] == "application/json"


def test_an_unknown_method_is_refused(as_app, servers):
    with pytest.raises(urlfetch.InvalidMethodError):
        urlfetch.fetch(servers["http"] + "/", method="TRACE")


def test_error_statuses_are_results_not_exceptions(as_app, servers):
    result = urlfetch.fetch(servers["http"] + "/status?code=404")
    assert (result.status_code, result.content) == (404, b"status 404")


def test_redirects_are_followed_and_final_url_reported(as_app, servers):
    target = servers["http"] + "/echo?landed=1"
    result = urlfetch.fetch(servers["http"] + "/redirect?to=" + target.replace("&", "%26").replace("?", "%3F"))
    assert echo(result)["path"] == "/echo?landed=1" and result.final_url == target


def test_a_post_redirected_with_303_becomes_a_get(as_app, servers):
    url = servers["http"] + "/redirect?status=303&to=/echo"
    body = echo(urlfetch.fetch(url, payload=b"x", method="POST"))
    assert (body["method"], body["body"]) == ("GET", "")


def test_redirects_are_returned_when_not_followed(as_app, servers):
    result = urlfetch.fetch(servers["http"] + "/redirect?to=/elsewhere", follow_redirects=False)
    assert result.status_code == 302 and result.headers["Location"] == "/elsewhere"


def test_a_redirect_loop_stops_after_five(as_app, servers):
    with pytest.raises(urlfetch.TooManyRedirectsError):
        urlfetch.fetch(servers["http"] + "/loop")


def test_a_response_over_32_mb_is_an_error_unless_truncation_is_allowed(as_app, servers):
    with pytest.raises(urlfetch.ResponseTooLargeError):
        urlfetch.fetch(servers["http"] + f"/big?n={33 * MB}", deadline=30)
    result = urlfetch.fetch(servers["http"] + "/endless", allow_truncated=True, deadline=30)
    assert result.content_was_truncated is True and len(result.content) == 32 * MB


def test_a_response_of_exactly_the_limit_is_whole(as_app, servers):
    result = urlfetch.fetch(servers["http"] + f"/big?n={32 * MB}", deadline=30)
    assert len(result.content) == 32 * MB and result.content_was_truncated is False


def test_a_slow_server_meets_the_deadline_and_the_service_keeps_serving(as_app, servers):
    with pytest.raises(urlfetch.DeadlineExceededError):
        urlfetch.fetch(servers["http"] + "/drip", deadline=1)
    assert urlfetch.fetch(servers["http"] + "/").status_code == 200


@pytest.mark.parametrize("url", ["ftp://127.0.0.2/file", "http:///nohost", "http://127.0.0.2:22/",
                                 "http://user:pw@127.0.0.2:8080/", "not a url", "http://127.0.0.2:99999/"])
def test_invalid_urls_are_refused(as_app, url):
    with pytest.raises(urlfetch.InvalidURLError):
        urlfetch.fetch(url)


def test_loopback_where_kilns_services_live_is_forbidden(as_app, servers):
    with pytest.raises(urlfetch.ForbiddenDestinationError, match="127.0.0.1"):
        urlfetch.fetch(servers["internal"] + "/")


def test_a_name_that_resolves_to_loopback_is_forbidden(as_app, servers):
    with pytest.raises(urlfetch.ForbiddenDestinationError, match="localhost"):
        urlfetch.fetch(f"http://localhost:{servers['internal_port']}/")


def test_a_redirect_to_a_forbidden_address_is_refused(as_app, servers):
    with pytest.raises(urlfetch.ForbiddenDestinationError):
        urlfetch.fetch(servers["http"] + "/redirect?to=" + servers["internal"] + "/")


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1:8080/",
                                 "http://[::1]:8080/", "http://[::ffff:127.0.0.1]:8080/", "http://0.0.0.0:8080/"])
def test_link_local_private_and_mapped_addresses_are_forbidden(as_app, url):
    with pytest.raises(urlfetch.ForbiddenDestinationError):
        urlfetch.fetch(url, deadline=2)


def test_an_app_without_the_allowance_cannot_reach_an_internal_address(as_app, servers):
    as_app("other-app")
    with pytest.raises(urlfetch.ForbiddenDestinationError):
        urlfetch.fetch(servers["http"] + "/")


def test_https_with_an_untrusted_certificate_fails_unless_validation_is_off(as_app, servers):
    with pytest.raises(urlfetch.SSLCertificateError):
        urlfetch.fetch(servers["https"] + "/", validate_certificate=True)
    with pytest.raises(urlfetch.SSLCertificateError):
        urlfetch.fetch(servers["https"] + "/")  # None validates: the safe choice
    assert urlfetch.fetch(servers["https"] + "/", validate_certificate=False).content == b"hello from 127.0.0.2"


def test_hostile_replies_are_download_errors(as_app, servers):
    with pytest.raises(urlfetch.DownloadError):
        urlfetch.fetch(servers["http"] + "/garbage")
    with pytest.raises(urlfetch.DownloadError):
        urlfetch.fetch(servers["http"] + "/hangup")
    assert urlfetch.fetch(servers["http"] + "/").status_code == 200


def test_a_payload_over_10_mb_is_refused_before_sending(as_app, servers):
    with pytest.raises(urlfetch.PayloadTooLargeError):
        urlfetch.fetch(servers["http"] + "/echo", payload=b"x" * (10 * MB + 1), method="POST")


def test_asynchronous_fetches_run_together_and_call_back(as_app, servers):
    called = []
    rpcs = [urlfetch.create_rpc(deadline=10, callback=lambda i=i: called.append(i)) for i in range(3)]
    for rpc in rpcs:
        urlfetch.make_fetch_call(rpc, servers["http"] + "/slow?s=0.3")
    assert [rpc.get_result().content for rpc in rpcs] == [b"slow"] * 3
    assert sorted(called) == [0, 1, 2]


def raw_fetch(service, request, app="fetcher"):
    with grpc.insecure_channel(service) as channel:
        return urlfetch_pb2_grpc.UrlFetchServiceStub(channel).Fetch(request, metadata=app_metadata(app), timeout=10)


def test_the_service_refuses_header_injection(service):
    request = pb.FetchRequest(url="http://127.0.0.2:8080/", headers=[pb.Header(name="X-A", value="1\r\nHost: evil")])
    with pytest.raises(grpc.RpcError) as err:
        raw_fetch(service, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "line break" in err.value.details()


def test_the_service_refuses_an_oversized_payload_with_its_code(service):
    request = pb.FetchRequest(method=pb.METHOD_POST, url="http://127.0.0.2:8080/", payload=b"x" * (10 * MB + 1))
    with pytest.raises(grpc.RpcError) as err:
        raw_fetch(service, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.value.trailing_metadata())["kiln-error-code"] == "PAYLOAD_TOO_LARGE"


def test_the_service_refuses_calls_without_an_app_token(service):
    with grpc.insecure_channel(service) as channel, pytest.raises(grpc.RpcError) as err:
        urlfetch_pb2_grpc.UrlFetchServiceStub(channel).Fetch(pb.FetchRequest(url="http://127.0.0.2/"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_apps_host_and_forwarding_headers_are_not_sent(as_app, servers):
    headers = echo(urlfetch.fetch(servers["http"] + "/echo", headers={
        "Host": "evil.example", "X-Forwarded-For": "1.2.3.4", "X-AppEngine-Inbound-AppId": "someone-else"}))["headers"]
    assert headers["Host"].startswith("127.0.0.2:")
    assert "X-Forwarded-For" not in headers and "X-AppEngine-Inbound-AppId" not in headers
