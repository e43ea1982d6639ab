"""How the app-facing SDK reaches kiln's services.

One gRPC channel per service per process, created on first use from the
address the runtime exported (``KILN_<SERVICE>_ADDR``), and the app's identity
token (``KILN_APP_TOKEN``) sent with every call. gRPC errors become kiln's
typed errors in one place, :func:`call`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc

from kiln import errors

T = TypeVar("T")

_lock = threading.Lock()
_stubs: dict[str, Any] = {}

DEFAULT_TIMEOUT = 30.0
# A URL Fetch response may carry 32 MB of content plus its envelope.
MAX_MESSAGE_BYTES = 40 * 1024 * 1024


def stub(service: str, factory: Callable[[grpc.Channel], T]) -> T:
    """The process-wide stub for ``service`` (e.g. ``"DATASTORE"``)."""
    with _lock:
        found = _stubs.get(service)
        if found is None:
            address = os.environ.get(f"KILN_{service}_ADDR")
            if not address:
                raise errors.UnavailableError(
                    f"KILN_{service}_ADDR is not set: run the app under kiln (kiln dev or a runtime instance)")
            channel = grpc.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
            found = _stubs[service] = factory(channel)
        return found


def reset() -> None:
    """Forget channels (after the environment changed, e.g. in tests)."""
    with _lock:
        _stubs.clear()


def app_token() -> str:
    """The app's identity token, which every call carries."""
    return os.environ.get("KILN_APP_TOKEN", "")


def call(method: Callable[..., T], request: Any, *, timeout: float = DEFAULT_TIMEOUT) -> T:
    """Call a stub method with the app token; gRPC errors become kiln errors."""
    token = app_token()
    try:
        return method(request, timeout=timeout, metadata=(("authorization", f"Bearer {token}"),))
    except grpc.RpcError as exc:
        # types-grpcio types this as _Metadatum objects, never None; at runtime it is None or
        # (key, value) pairs, with str values for keys without the "-bin" suffix.
        pairs = cast("tuple[tuple[str, str], ...] | None", exc.trailing_metadata())
        trailing = dict(pairs or ())
        raise errors.from_grpc(exc.code(), exc.details(), trailing.get(errors.ERROR_CODE_KEY)) from None
