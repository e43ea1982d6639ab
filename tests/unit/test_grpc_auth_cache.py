"""The server's one authentication rule stays exact when its work is remembered: verified app tokens until they
expire, and each method's wrapped handler (no sockets: the guard is driven with a stand-in call context)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from kiln.errors import UnauthenticatedError
from kiln_platform import auth, grpcserver

SECRET = "s3cret"


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_a_remembered_token_is_refused_once_it_expires(monkeypatch):
    tokens = grpcserver.AppTokens(SECRET)
    token = auth.mint_app_token(SECRET, "app-a", expires_at=2_000_000_000)
    monkeypatch.setattr(time, "time", lambda: 1_999_999_999.0)
    assert tokens.authenticate(_md(token)) == "app-a"
    assert tokens.authenticate(_md(token)) == "app-a"
    monkeypatch.setattr(time, "time", lambda: 2_000_000_001.0)
    with pytest.raises(UnauthenticatedError, match="expired"):
        tokens.authenticate(_md(token))


def test_a_token_differing_from_a_remembered_one_is_verified_afresh():
    tokens = grpcserver.AppTokens(SECRET)
    token = auth.mint_app_token(SECRET, "app-a")
    assert tokens.authenticate(_md(token)) == "app-a"
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    with pytest.raises(UnauthenticatedError, match="signature"):
        tokens.authenticate(_md(forged))
    with pytest.raises(UnauthenticatedError):
        tokens.authenticate(_md(token.replace("app-a", "app-b", 1)))


def test_a_token_remembered_under_one_secret_is_refused_under_another():
    token = auth.mint_app_token(SECRET, "app-a")
    assert grpcserver.AppTokens(SECRET).authenticate(_md(token)) == "app-a"
    with pytest.raises(UnauthenticatedError):
        grpcserver.AppTokens("other-secret").authenticate(_md(token))


def test_refused_tokens_are_not_remembered():
    tokens = grpcserver.AppTokens(SECRET)
    for i in range(50):
        with pytest.raises(UnauthenticatedError):
            tokens.authenticate(_md(f"app-a.{i:064x}"))
    assert len(tokens._verified) == 0


def test_the_remembered_tokens_are_bounded():
    tokens = grpcserver.AppTokens(SECRET)
    for i in range(grpcserver.MAX_VERIFIED_TOKENS + 10):
        token = auth.mint_app_token(SECRET, "app-a", expires_at=4_000_000_000 + i)
        assert tokens.authenticate(_md(token)) == "app-a"
    assert len(tokens._verified) <= grpcserver.MAX_VERIFIED_TOKENS


class _Aborted(Exception):
    pass


class _Context:
    """What the wrappers use of a grpc.aio call context."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self.aborted: tuple[Any, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details)
        raise _Aborted


class _Details:
    method = "/test.Svc/Who"


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def service(self, handler_call_details: Any) -> Any:
        return self.handler


def _answer(wrapped: Any, context: _Context) -> Any:
    async def run() -> Any:
        try:
            return await wrapped.unary_unary(b"", context)
        except _Aborted:
            return None
    return asyncio.run(run())


def _serve(generic: grpc.GenericRpcHandler, context: _Context) -> tuple[Any, Any]:
    """One call: the handler the guarded generic handler gives for the method, and what it answered (None when
    aborted)."""
    wrapped = generic.service(_Details())
    return wrapped, _answer(wrapped, context)


async def _who(request: Any, context: Any) -> str:
    return grpcserver.caller_app()


def test_each_method_is_wrapped_once_and_every_call_is_still_authenticated():
    inner = _Generic(grpc.unary_unary_rpc_method_handler(_who))
    generic = grpcserver.CallGuard(grpcserver.AppTokens(SECRET)).generic(inner)
    good = _Context(_md(auth.mint_app_token(SECRET, "app-a")))
    first, answer = _serve(generic, good)
    assert answer == "app-a"
    refused = _Context(_md(auth.mint_app_token("other-secret", "app-a")))
    again, answer = _serve(generic, refused)
    assert again is first
    assert answer is None and refused.aborted is not None
    assert refused.aborted[0] is grpc.StatusCode.UNAUTHENTICATED
    anonymous = _Context(())
    assert _serve(generic, anonymous)[1] is None
    assert anonymous.aborted is not None and anonymous.aborted[0] is grpc.StatusCode.UNAUTHENTICATED


def test_a_method_whose_handler_changed_is_wrapped_afresh():
    async def one(request: Any, context: Any) -> str:
        return "one"

    async def two(request: Any, context: Any) -> str:
        return "two"

    inner = _Generic(grpc.unary_unary_rpc_method_handler(one))
    generic = grpcserver.CallGuard(grpcserver.AppTokens(SECRET)).generic(inner)
    good = _Context(_md(auth.mint_app_token(SECRET, "app-a")))
    assert _serve(generic, good)[1] == "one"
    inner.handler = grpc.unary_unary_rpc_method_handler(two)
    assert _serve(generic, good)[1] == "two"


class _Recorder:
    """What a grpc.aio server records of the handlers added to it."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic += list(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})


def test_every_handler_added_through_the_guarded_server_authenticates_its_calls():
    raw = grpc.unary_unary_rpc_method_handler(_who)
    recorder = _Recorder()
    guarded = grpcserver._GuardedServer(recorder, grpcserver.CallGuard(grpcserver.AppTokens(SECRET)))  # type: ignore[arg-type]
    guarded.add_registered_method_handlers("test.Svc", {"Who": raw})
    guarded.add_generic_rpc_handlers([_Generic(raw)])
    handlers = [generic.service(_Details()) for generic in recorder.generic]
    assert len(handlers) == 2
    for handler in handlers:
        assert handler is not raw
        refused = _Context(_md(auth.mint_app_token("other-secret", "app-a")))
        assert _answer(handler, refused) is None
        assert refused.aborted is not None and refused.aborted[0] is grpc.StatusCode.UNAUTHENTICATED
        assert _answer(handler, _Context(_md(auth.mint_app_token(SECRET, "app-b")))) == "app-b"


def test_the_guarded_server_offers_no_way_to_add_an_unwrapped_handler():
    guarded = grpcserver._GuardedServer(_Recorder(), grpcserver.CallGuard())  # type: ignore[arg-type]
    assert [n for n in dir(guarded) if n.startswith("add_")] == ["add_generic_rpc_handlers",
                                                                 "add_registered_method_handlers"]
    with pytest.raises(AttributeError):
        guarded.add_insecure_port  # type: ignore[attr-defined]  # noqa: B018


def test_handlers_offered_for_registration_are_served_generically_so_grpcs_loop_waits_on_one_future():
    recorder = _Recorder()
    guarded = grpcserver._GuardedServer(recorder, grpcserver.CallGuard(grpcserver.AppTokens(SECRET)))  # type: ignore[arg-type]
    guarded.add_registered_method_handlers("test.Svc", {"Who": grpc.unary_unary_rpc_method_handler(_who)})
    assert recorder.registered == {}
    assert recorder.generic[0].service(_Details()) is not None
