"""The server's one authentication rule stays exact when its work is remembered: verified app tokens until they
expire, and each method's wrapped handler (no sockets: the interceptor is driven with a stand-in call context)."""

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


def _serve(interceptor: grpcserver.ErrorInterceptor, handler: Any, context: _Context) -> tuple[Any, Any]:
    """One call: the handler the interceptor gives for the method, and what it answered (None when aborted)."""
    async def continuation(details: Any) -> Any:
        return handler

    async def run() -> tuple[Any, Any]:
        wrapped = await interceptor.intercept_service(continuation, _Details())
        try:
            return wrapped, await wrapped.unary_unary(b"", context)
        except _Aborted:
            return wrapped, None
    return asyncio.run(run())


def test_each_method_is_wrapped_once_and_every_call_is_still_authenticated():
    async def who(request: Any, context: Any) -> str:
        return grpcserver.caller_app()

    handler = grpc.unary_unary_rpc_method_handler(who)
    interceptor = grpcserver.ErrorInterceptor(grpcserver.AppTokens(SECRET))
    good = _Context(_md(auth.mint_app_token(SECRET, "app-a")))
    first, answer = _serve(interceptor, handler, good)
    assert answer == "app-a"
    refused = _Context(_md(auth.mint_app_token("other-secret", "app-a")))
    again, answer = _serve(interceptor, handler, refused)
    assert again is first
    assert answer is None and refused.aborted is not None
    assert refused.aborted[0] is grpc.StatusCode.UNAUTHENTICATED
    anonymous = _Context(())
    assert _serve(interceptor, handler, anonymous)[1] is None
    assert anonymous.aborted is not None and anonymous.aborted[0] is grpc.StatusCode.UNAUTHENTICATED


def test_a_method_whose_handler_changed_is_wrapped_afresh():
    async def one(request: Any, context: Any) -> str:
        return "one"

    async def two(request: Any, context: Any) -> str:
        return "two"

    interceptor = grpcserver.ErrorInterceptor(grpcserver.AppTokens(SECRET))
    good = _Context(_md(auth.mint_app_token(SECRET, "app-a")))
    assert _serve(interceptor, grpc.unary_unary_rpc_method_handler(one), good)[1] == "one"
    assert _serve(interceptor, grpc.unary_unary_rpc_method_handler(two), good)[1] == "two"
