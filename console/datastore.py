"""The Datastore page: namespaces and kinds, a paged table of a kind's entities, one entity, delete.

Everything comes from datastore_svc's own queries as the console's app: ``__namespace__`` and ``__kind__``
metadata queries for the lists, a kind query with cursors for the table, Get for one entity, Delete. A value is
laid out by :mod:`console.values` and escaped by the templates.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from aiohttp import web

from console import render, values
from console.backend import Services
from kiln.errors import BadRequestError, NotFoundError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

PAGE = 20  # entities per page
MAX_LISTED = 1000  # namespaces or kinds listed, at most
MAX_NAME = 1500


def _text(query: web.Request | dict[str, str], name: str) -> str:
    getter = query.query if isinstance(query, web.Request) else query
    value = getter.get(name, "")
    if len(value) > MAX_NAME:
        raise BadRequestError(f"{name}: at most {MAX_NAME} characters")
    return value


def encode_cursor(cursor: bytes) -> str:
    """A query cursor as URL text."""
    return base64.urlsafe_b64encode(cursor).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> bytes:
    """The cursor :func:`encode_cursor` made (the service checks it is one of its own).

    Raises:
        BadRequestError: ``text`` is not base64.
    """
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("cursor: not a page of this table (start again from the first page)") from None


def list_url(namespace: str, kind: str, cursor: str = "") -> str:
    """The table page of ``kind`` in ``namespace`` (from ``cursor``)."""
    params = {"ns": namespace, "kind": kind} | ({"cursor": cursor} if cursor else {})
    return "/datastore?" + urllib.parse.urlencode(params)


async def _names(services: Services, namespace: str, kind: str) -> list[str]:
    request = pb.RunQueryRequest(partition_id=pb.PartitionId(namespace=namespace),
                                 query=pb.Query(kind=kind, keys_only=True, limit=MAX_LISTED))
    answer = await services.call("datastore", "RunQuery", request)
    return [r.entity.key.path[-1].name for r in answer.batch.entity_results]


async def namespaces(services: Services) -> list[str]:
    """The app's namespaces ("" is the default one, whose key has an id, not a name)."""
    return await _names(services, "", "__namespace__")


async def kinds(services: Services, namespace: str) -> list[str]:
    """The kinds with entities in ``namespace``."""
    return [k for k in await _names(services, namespace, "__kind__") if k]


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def datastore_page(request: web.Request) -> web.StreamResponse:
        namespace, kind, cursor = _text(request, "ns"), _text(request, "kind"), _text(request, "cursor")
        names = await namespaces(services)
        if namespace not in names:
            names.insert(0, namespace)
        kind_names = await kinds(services, namespace)
        rows: list[tuple[pb.Entity, str, dict[str, values.Shown]]] = []
        columns: list[str] = []
        next_url = ""
        if kind:
            query = pb.Query(kind=kind, limit=PAGE)
            if cursor:
                query.start_cursor = decode_cursor(cursor)
            answer = await services.call("datastore", "RunQuery", pb.RunQueryRequest(
                partition_id=pb.PartitionId(namespace=namespace), query=query))
            for result in answer.batch.entity_results:
                entity = result.entity
                rows.append((entity, values.encode_key(entity.key),
                             {name: values.show(v) for name, v in entity.properties.items()}))
            columns = sorted({name for _, _, props in rows for name in props})
            if answer.batch.more_results != pb.QueryResultBatch.MORE_RESULTS_TYPE_NO_MORE_RESULTS and \
                    len(rows) == PAGE:
                next_url = list_url(namespace, kind, encode_cursor(answer.batch.end_cursor))
        return render.page(request, "datastore.html", fragment="datastore_table.html", namespaces=names,
                           namespace=namespace, kinds=kind_names, kind=kind, rows=rows, columns=columns,
                           next_url=next_url, first_url=list_url(namespace, kind) if cursor else "",
                           key_path=values.key_path, deleted=request.query.get("deleted", "")[:MAX_NAME])

    async def entity_page(request: web.Request) -> web.StreamResponse:
        key = values.decode_key(_text(request, "key"))
        answer = await services.call("datastore", "Get", pb.GetRequest(keys=[key]))
        if not answer.results or not answer.results[0].HasField("entity"):
            raise NotFoundError(f"no entity {values.key_path(key)} (it may have been deleted)")
        entity = answer.results[0].entity
        props = [(name, values.show(entity.properties[name], full=True)) for name in sorted(entity.properties)]
        namespace = key.partition_id.namespace
        return render.page(request, "entity.html", key=key, encoded=values.encode_key(key), props=props,
                           path=values.key_path(key), namespace=namespace,
                           back_url=list_url(namespace, key.path[-1].kind), key_path=values.key_path)

    async def delete(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        raw = form.get("key")
        key = values.decode_key(raw if isinstance(raw, str) else "")
        # A stale page may name an entity deleted since: say so rather than report a delete that did nothing.
        found = await services.call("datastore", "Get", pb.GetRequest(keys=[key]))
        if not found.results or not found.results[0].HasField("entity"):
            raise NotFoundError(f"no entity {values.key_path(key)}: it was already deleted")
        await services.call("datastore", "Delete", pb.DeleteRequest(keys=[key]))
        target = list_url(key.partition_id.namespace, key.path[-1].kind) + "&" + urllib.parse.urlencode(
            {"deleted": values.key_path(key)})
        if render.is_htmx(request):
            return web.Response(status=204, headers={"HX-Location": target})
        raise web.HTTPSeeOther(target)

    return [web.get("/datastore", datastore_page), web.get("/datastore/entity", entity_page),
            web.post("/datastore/delete", delete)]
