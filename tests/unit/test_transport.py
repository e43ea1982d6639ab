"""kiln.api's one client transport: every API module goes through it, and a status becomes the module's error
in one function (no sockets: statuses are built as the services send them)."""

from __future__ import annotations

import ast
import pathlib

import grpc
import pytest

from kiln import errors
from kiln.api import _rpc, datastore_errors, images, mail, memcache, urlfetch
from tests.unit.fake_datastore import FakeRpcError

API = pathlib.Path(_rpc.__file__).parent
# What only the transport may touch: making channels, the token metadata, and reading a status.
TRANSPORT_ONLY = {"insecure_channel", "secure_channel", "trailing_metadata", "RpcError", "app_token", "future"}


def _names_used(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    attrs = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return attrs | ({"authorization"} & strings)


@pytest.mark.parametrize("module", sorted(p.name for p in API.glob("*.py") if p.name != "_rpc.py"))
def test_api_modules_build_no_transport_of_their_own(module):
    assert not _names_used(API / module) & (TRANSPORT_ONLY | {"authorization"})


def test_every_channel_has_the_message_size_above_the_services_limit_and_keepalive():
    options = dict(_rpc.CHANNEL_OPTIONS)
    assert options["grpc.max_receive_message_length"] >= 40 * 1024 * 1024
    assert options["grpc.max_send_message_length"] >= 40 * 1024 * 1024
    # Servers refuse pings more often than every five minutes, and pings on idle connections, by default.
    assert options["grpc.keepalive_time_ms"] >= 300_000 and options["grpc.keepalive_permit_without_calls"] == 0


def test_a_module_code_names_its_error():
    exc = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "sender not allowed", "UNAUTHORIZED_SENDER")
    found = _rpc.error_from(exc, mail._ERRORS)
    assert type(found) is mail.InvalidSenderError and str(found) == "sender not allowed"


def test_a_status_without_a_module_code_names_the_modules_error():
    found = _rpc.error_from(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"), datastore_errors.ERRORS)
    assert type(found) is datastore_errors.Timeout


@pytest.mark.parametrize("status", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DATA_LOSS])
def test_unclassified_statuses_become_the_modules_root_error(status):
    found = _rpc.error_from(FakeRpcError(status, "boom"), datastore_errors.ERRORS)
    assert type(found) is datastore_errors.InternalError
    assert type(_rpc.error_from(FakeRpcError(status, "boom"), images._ERRORS)) is images.Error


def test_kilns_own_code_is_used_where_the_module_has_none():
    found = _rpc.error_from(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "add it", "NEED_INDEX"),
                            datastore_errors.ERRORS)
    assert type(found) is errors.NeedIndexError


def test_a_module_may_add_a_code_that_names_the_calls_argument():
    table = images._ERRORS.with_codes({"INVALID_BLOB_KEY": lambda _d: images.InvalidBlobKeyError("bk-1")})
    found = _rpc.error_from(FakeRpcError(grpc.StatusCode.NOT_FOUND, "no blob", "INVALID_BLOB_KEY"), table)
    assert isinstance(found, images.InvalidBlobKeyError) and "bk-1" in str(found)


def test_statuses_without_details_are_named_by_their_code():
    found = _rpc.error_from(FakeRpcError(grpc.StatusCode.UNAVAILABLE, ""), urlfetch._ERRORS)
    assert type(found) is urlfetch.InternalTransientError and "UNAVAILABLE" in str(found)


def test_memcache_refusals_are_value_errors_as_app_engine_raised():
    found = _rpc.error_from(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad key", "BAD_REQUEST"), memcache._ERRORS)
    assert type(found) is ValueError and "bad key" in str(found)


def test_a_user_rpc_without_a_call_refuses_to_wait():
    with pytest.raises(AssertionError, match="no call was made"):
        _rpc.UserRPC().wait()


def test_a_user_rpc_decodes_the_error_and_runs_its_callback_once(monkeypatch):
    monkeypatch.setenv("KILN_APP_TOKEN", "tok")
    ran = []

    def failing(request, *, timeout, metadata):
        assert timeout == 7 and metadata == (("authorization", "Bearer tok"),)
        raise FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad url", "INVALID_URL")

    rpc = _rpc.UserRPC(7, callback=lambda: ran.append(1)).make_call(failing, b"", table=urlfetch._ERRORS, now=True)
    with pytest.raises(urlfetch.InvalidURLError, match="bad url"):
        rpc.get_result()
    rpc.wait()
    assert ran == [1]


@pytest.mark.parametrize("name", ["KILN_APP_TOKEN", "KILN_DATASTORE_ADDR", "KILN_MEMCACHE_ADDR"])
def test_a_thread_that_sees_a_request_local_empty_environ_still_has_the_process_settings(monkeypatch, name):
    # Google's SDK (wrap_wsgi_app, legacy context mode) replaces os.environ with a request-local mapping: a thread
    # serving no request (kiln's SDK call workers) sees it empty.
    monkeypatch.setenv(name, "set-by-the-runtime")
    _rpc.reset()
    _rpc.remember_settings()
    monkeypatch.setattr("os.environ", {})
    try:
        assert _rpc.setting(name) == "set-by-the-runtime"
        if name == "KILN_APP_TOKEN":
            assert _rpc.metadata() == (("authorization", "Bearer set-by-the-runtime"),)
    finally:
        _rpc.reset()


def test_a_setting_changed_by_the_environment_wins_over_the_remembered_one(monkeypatch):
    monkeypatch.setenv("KILN_APP_TOKEN", "first")
    _rpc.reset()
    _rpc.remember_settings()
    monkeypatch.setenv("KILN_APP_TOKEN", "second")
    try:
        assert _rpc.app_token() == "second"
    finally:
        _rpc.reset()


def test_reset_forgets_remembered_settings(monkeypatch):
    monkeypatch.setenv("KILN_APP_TOKEN", "gone-after-reset")
    _rpc.remember_settings()
    monkeypatch.delenv("KILN_APP_TOKEN")
    _rpc.reset()
    assert _rpc.app_token() == ""


def test_the_call_metadata_follows_the_app_token_when_it_changes(monkeypatch):
    monkeypatch.setenv("KILN_APP_TOKEN", "app-a.first")
    assert _rpc.metadata() == (("authorization", "Bearer app-a.first"),)
    monkeypatch.setenv("KILN_APP_TOKEN", "app-a.second")
    assert _rpc.metadata() == (("authorization", "Bearer app-a.second"),)
