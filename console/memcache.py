"""The Memcache page: the app's cache statistics, look up / set / delete a key, flush the cache.

Keys are encoded as the app's own client encodes them (:func:`kiln.api.memcache._encode_key`: UTF-8, SHA-1 past
250 bytes), so a key typed here is the key the app uses. Values are shown by their type flag and never
unpickled (they are the app's data, not the console's to run); text the console sets is a ``str`` to the app.
"""

from __future__ import annotations

from aiohttp import web

from console import render
from console.backend import Services
from kiln.api import memcache as sdk
from kiln.errors import BadRequestError
from kiln.pb.memcache.v1 import memcache_pb2 as pb

MAX_SHOWN = 4096  # bytes of a value shown
_TYPES = {sdk.TYPE_BYTES: "bytes", sdk.TYPE_STR: "str", sdk.TYPE_PICKLED: "pickled object", sdk.TYPE_INT: "int",
          sdk.TYPE_BOOL: "bool"}


def encode_key(text: str, namespace: str) -> bytes:
    """The stored key for ``text`` (as the app's client makes it).

    Raises:
        BadRequestError: the key is empty, or the namespace too long.
    """
    if not text:
        raise BadRequestError("key: a memcache key must not be empty")
    if len(namespace.encode("utf-8")) > 100:
        raise BadRequestError("namespace: at most 100 bytes")
    return sdk._encode_key(text, b"")


def shown(item: pb.Item) -> tuple[str, str]:
    """An item's type and value as text (bytes and pickles as hex, cut at :data:`MAX_SHOWN`)."""
    kind = _TYPES.get(item.flags, f"flags {item.flags}")
    data = item.value[:MAX_SHOWN]
    if item.flags in (sdk.TYPE_STR, sdk.TYPE_INT, sdk.TYPE_BOOL):
        text = data.decode("utf-8", "replace")
    else:
        text = data.hex(" ")
    return kind, text + (" …" if len(item.value) > MAX_SHOWN else "")


def _field(form: object, name: str) -> str:
    value = form.get(name, "") if hasattr(form, "get") else ""
    return value if isinstance(value, str) else ""


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def show_page(request: web.Request, *, key: str, namespace: str, message: str = "") -> web.Response:
        stats = await services.call("memcache", "Stats", pb.StatsRequest())
        found: tuple[str, str] | None = None
        looked_up = bool(key)
        if key:
            answer = await services.call("memcache", "Get", pb.GetRequest(namespace=namespace,
                                                                          keys=[encode_key(key, namespace)]))
            found = shown(answer.items[0]) if answer.items else None
        lookups = stats.hits + stats.misses
        return render.page(request, "memcache.html", fragment="memcache_main.html", stats=stats,
                           hit_ratio=f"{100 * stats.hits / lookups:.1f}%" if lookups else "–", key=key,
                           namespace=namespace, found=found, looked_up=looked_up, message=message)

    async def memcache_page(request: web.Request) -> web.StreamResponse:
        return await show_page(request, key=request.query.get("key", ""), namespace=request.query.get("ns", ""))

    async def set_key(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key, namespace, value = _field(form, "key"), _field(form, "ns"), _field(form, "value")
        data = value.encode("utf-8")
        if len(data) > sdk.MAX_VALUE_SIZE:
            raise BadRequestError(f"value: at most {sdk.MAX_VALUE_SIZE} bytes")
        answer = await services.call("memcache", "Set", pb.SetRequest(namespace=namespace, items=[
            pb.Item(key=encode_key(key, namespace), value=data, flags=sdk.TYPE_STR)], policy=pb.SET_POLICY_SET))
        stored = answer.statuses[0] == pb.SET_STATUS_STORED
        return await show_page(request, key=key, namespace=namespace,
                               message=f"Set {key!r}." if stored else f"{key!r} was not stored.")

    async def delete_key(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        key, namespace = _field(form, "key"), _field(form, "ns")
        answer = await services.call("memcache", "Delete", pb.DeleteRequest(namespace=namespace,
                                                                            keys=[encode_key(key, namespace)]))
        deleted = answer.statuses[0] == pb.DELETE_STATUS_DELETED
        return await show_page(request, key="", namespace=namespace,
                               message=f"Deleted {key!r}." if deleted else f"{key!r} was not in the cache.")

    async def flush(request: web.Request) -> web.StreamResponse:
        await services.call("memcache", "Flush", pb.FlushRequest())
        return await show_page(request, key="", namespace="", message="Flushed the cache: every key is gone.")

    return [web.get("/memcache", memcache_page), web.post("/memcache/set", set_key),
            web.post("/memcache/delete", delete_key), web.post("/memcache/flush", flush)]
