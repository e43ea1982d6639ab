"""The Datastore page: namespaces and kinds, a paged table of a kind's entities, one entity (edit, delete), a new
entity, the GQL console, and the app's composite indexes with their states.

Everything comes from datastore_svc's own queries as the console's app: ``__namespace__`` and ``__kind__``
metadata queries for the lists, a kind query with cursors for the table, Get for one entity, Delete, GQL run
by the service's own parser (``RunQuery`` with ``gql_query``; its next pages by the cursor, in a link signed by
:mod:`console.pagetokens`), and ``ListIndexes`` for the indexes. A value is laid out by :mod:`console.values` and
escaped by the templates; the entity form is read and type-checked by :mod:`console.forms`.

A save reads the entity in a transaction, compares it with what the page showed (a fingerprint the form carries)
and commits the one upsert only if it is unchanged: a stale page never re-creates an entity deleted meanwhile nor
overwrites a change made since. A wrong field is shown by its field and nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping

from aiohttp import web
from markupsafe import Markup, escape

from console import forms, pagetokens, render, values
from console.backend import Services
from kiln.errors import (AlreadyExistsError, BadRequestError, ConflictError, KilnError, NeedIndexError,
                         NotFoundError)
from kiln.pb.datastore.v1 import datastore_pb2 as pb

PAGE = 20  # entities per page
MAX_LISTED = 1000  # namespaces or kinds listed, at most
MAX_NAME = 1500
MAX_GQL = 10_000  # characters of a GQL query
GQL_ROWS = 50  # results the GQL console shows (LIMIT and OFFSET in the query reach the others)
NEW_ROWS = 3  # empty rows for new properties under an entity's own
CREATE_ROWS = 6  # empty rows on the new-entity form

Row = tuple[pb.Entity, str, dict[str, values.Shown]]

# Each field's type menu, rendered once per process (one per selected type): the entity page with its form renders
# in half the CPU it took with the template building the 21 options of each row.
_TYPE_MENUS = {
    chosen: Markup("".join(f'<option value="{escape(name)}"{" selected" if name == chosen else ""}>{escape(label)}'
                           "</option>" for name, label in forms.type_options()))
    for chosen, _ in forms.type_options()}


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


def table(results: Iterable[pb.EntityResult]) -> tuple[list[Row], list[str]]:
    """Query results as the entity table's rows, and its columns (every property name, sorted)."""
    rows: list[Row] = [(r.entity, values.encode_key(r.entity.key),
                        {name: values.show(v) for name, v in r.entity.properties.items()}) for r in results]
    return rows, sorted({name for _, _, props in rows for name in props})


@dataclasses.dataclass(frozen=True)
class ShownIndex:
    """One composite index as the indexes page lists it."""

    kind: str
    ancestor: bool
    properties: tuple[tuple[str, str], ...]  # (name, "asc" or "desc"), in index order
    state: str  # "building", "serving", "deleting", "error" (or "unknown" from a newer service)
    error: str  # why it could not be built (state "error")


_INDEX_STATES = {pb.CompositeIndex.STATE_BUILDING: "building", pb.CompositeIndex.STATE_SERVING: "serving",
                 pb.CompositeIndex.STATE_DELETING: "deleting", pb.CompositeIndex.STATE_ERROR: "error"}


def shown_index(index: pb.CompositeIndex) -> ShownIndex:
    """``index`` (from ``ListIndexes``) laid out for the page."""
    return ShownIndex(
        kind=index.kind, ancestor=index.ancestor,
        properties=tuple((p.property.name, "desc" if p.direction == pb.PropertyOrder.DIRECTION_DESCENDING else "asc")
                         for p in index.properties),
        state=_INDEX_STATES.get(index.state, "unknown"), error=index.error)


def gql_url(namespace: str, text: str, cursor: str = "") -> str:
    """The GQL page running ``text`` in ``namespace`` (from the page ``cursor`` starts)."""
    return "/datastore/gql?" + urllib.parse.urlencode({"ns": namespace, "q": text} | ({"cursor": cursor} if cursor else {}))


def next_gql_query(answer: pb.RunQueryResponse, shown: int) -> pb.Query | None:
    """The structured query that returns what follows ``answer`` (None when nothing does).

    The service answered with the query it compiled; the rest starts at the batch's end cursor, skips what is left
    of the OFFSET, and returns what is left of the LIMIT.
    """
    batch = answer.batch
    if shown < GQL_ROWS or batch.more_results != pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED or \
            not batch.end_cursor:
        return None
    rest = pb.Query()
    rest.CopyFrom(answer.query)
    rest.start_cursor = batch.end_cursor
    rest.offset = max(0, answer.query.offset - batch.skipped_results)
    if answer.query.HasField("limit"):
        if answer.query.limit <= shown:
            return None
        rest.limit = answer.query.limit - shown
    return rest


def _gql_context(namespace: str, text: str) -> str:
    return f"gql\0{namespace}\0{text}"


def gql_page_token(tokens: pagetokens.PageTokens, namespace: str, text: str, rest: pb.Query, first: int) -> str:
    """The signed token of the page that runs ``rest`` (of the GQL ``text``), its first result numbered ``first``."""
    return tokens.sign(_gql_context(namespace, text), first.to_bytes(8, "big") + rest.SerializeToString())


def open_gql_page(tokens: pagetokens.PageTokens, namespace: str, text: str, token: str) -> tuple[pb.Query, int]:
    """The query and first result number a :func:`gql_page_token` carries for ``text`` in ``namespace``.

    Raises:
        BadRequestError: the token was not made by this console for this query, or was changed.
    """
    payload = tokens.open(_gql_context(namespace, text), token)
    return pb.Query.FromString(payload[8:]), int.from_bytes(payload[:8], "big")


def entity_url(key: pb.Key, **notice: str) -> str:
    """The entity page of ``key`` (with a ``notice`` such as ``saved=1``)."""
    return "/datastore/entity?" + urllib.parse.urlencode({"key": values.encode_key(key)} | notice)


def _form_text(form: Mapping[str, object]) -> dict[str, str]:
    return {name: value for name, value in form.items() if isinstance(value, str)}


def _moved(request: web.Request, target: str) -> web.StreamResponse:
    if render.is_htmx(request):
        return web.Response(status=204, headers={"HX-Location": target})
    raise web.HTTPSeeOther(target)


class _Transaction:
    """One datastore transaction: reads in it, then one upsert committed (or everything rolled back)."""

    def __init__(self, services: Services, handle: bytes) -> None:
        self._services, self.handle, self.done = services, handle, False

    async def get(self, key: pb.Key) -> pb.Entity | None:
        answer = await self._services.call("datastore", "Get", pb.GetRequest(
            keys=[key], read_options=pb.ReadOptions(transaction=self.handle)))
        return answer.results[0].entity if answer.results and answer.results[0].HasField("entity") else None

    async def put(self, entity: pb.Entity) -> None:
        self.done = True  # a failed commit ends the transaction too
        await self._services.call("datastore", "Commit", pb.CommitRequest(
            transaction=self.handle, mutations=[pb.Mutation(upsert=entity)]))


@contextlib.asynccontextmanager
async def _transaction(services: Services, namespace: str) -> AsyncIterator[_Transaction]:
    begun = await services.call("datastore", "BeginTransaction", pb.BeginTransactionRequest(
        partition_id=pb.PartitionId(namespace=namespace)))
    txn = _Transaction(services, begun.transaction)
    try:
        yield txn
    finally:
        if not txn.done:
            with contextlib.suppress(KilnError):  # nothing was written; the service expires it anyway
                await services.call("datastore", "Rollback", pb.RollbackRequest(transaction=txn.handle))


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def datastore_page(request: web.Request) -> web.StreamResponse:
        namespace, kind, cursor = _text(request, "ns"), _text(request, "kind"), _text(request, "cursor")
        names = await namespaces(services)
        if namespace not in names:
            names.insert(0, namespace)
        kind_names = await kinds(services, namespace)
        rows: list[Row] = []
        columns: list[str] = []
        next_url = ""
        if kind:
            query = pb.Query(kind=kind, limit=PAGE)
            if cursor:
                query.start_cursor = decode_cursor(cursor)
            answer = await services.call("datastore", "RunQuery", pb.RunQueryRequest(
                partition_id=pb.PartitionId(namespace=namespace), query=query))
            rows, columns = table(answer.batch.entity_results)
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
                           back_url=list_url(namespace, key.path[-1].kind), key_path=values.key_path,
                           saved=request.query.get("saved") == "1",
                           form=_edit_form(values.encode_key(key), forms.fingerprint(entity),
                                        forms.to_fields(entity) + forms.blank_rows(NEW_ROWS)))

    async def save(request: web.Request) -> web.StreamResponse:
        form = _form_text(await request.post())
        key = values.decode_key(form.get("key", ""))
        path = values.key_path(key)
        try:
            rows = forms.read_rows(form)
        except forms.FieldError as exc:
            raise BadRequestError(str(exc)) from None
        namespace = key.partition_id.namespace
        async with _transaction(services, namespace) as txn:
            current = await txn.get(key)
            if current is None:
                raise NotFoundError(f"no entity {path}: it was deleted since this page was loaded; nothing was saved")
            if forms.fingerprint(current) != form.get("version"):
                raise ConflictError(f"{path} changed since this page was loaded; nothing was saved (reload the page "
                                    "to edit what is stored now)")
            entity, fields = forms.apply(current, rows, namespace)
            if forms.has_errors(fields):
                return _form_page(request, path, form=_edit_form(
                    values.encode_key(key), forms.fingerprint(current), fields + forms.blank_rows(NEW_ROWS)))
            await txn.put(entity)
        return _moved(request, entity_url(key, saved="1"))

    async def new_page(request: web.Request) -> web.StreamResponse:
        return render.page(request, "entity_new.html", form=_create_form(
            _text(request, "ns"), _text(request, "kind"), "", "", forms.blank_rows(CREATE_ROWS)))

    async def create(request: web.Request) -> web.StreamResponse:
        form = _form_text(await request.post())
        namespace, kind, name, parent_text = (_text(form, n).strip() for n in ("ns", "kind", "name", "parent"))
        try:
            rows = forms.read_rows(form)
        except forms.FieldError as exc:
            raise BadRequestError(str(exc)) from None
        entity, fields = forms.apply(None, rows, namespace)
        problems: dict[str, str] = {}
        if not kind:
            problems["kind"] = "a new entity needs a kind"
        elif kind.startswith("__") and kind.endswith("__"):
            problems["kind"] = "kinds like __this__ are reserved by the datastore"
        key = pb.Key(partition_id=pb.PartitionId(namespace=namespace))
        if parent_text:
            try:
                key.path.extend(forms.parse_key(parent_text, namespace).path)
            except forms.FieldError as exc:
                problems["parent"] = str(exc)
        if problems or forms.has_errors(fields):
            return _form_page(request, "New entity", form=_create_form(
                namespace, kind, name, parent_text, fields + forms.blank_rows(2), problems))
        if not name:  # the service allocates the id in the one Put
            entity.key.CopyFrom(key)
            entity.key.path.add(kind=kind)
            answer = await services.call("datastore", "Put", pb.PutRequest(entities=[entity]))
            return _moved(request, entity_url(answer.keys[0], saved="1"))
        key.path.add(kind=kind, name=name)
        entity.key.CopyFrom(key)
        async with _transaction(services, namespace) as txn:
            if await txn.get(key) is not None:  # creating never overwrites
                raise AlreadyExistsError(f"{values.key_path(key)} already exists; nothing was written (open it "
                                         "to edit it)")
            await txn.put(entity)
        return _moved(request, entity_url(key, saved="1"))

    tokens = pagetokens.PageTokens()

    async def gql_page(request: web.Request) -> web.StreamResponse:
        namespace, text = _text(request, "ns"), request.query.get("q", "")
        if len(text) > MAX_GQL:
            raise BadRequestError(f"q: at most {MAX_GQL} characters")
        token = request.query.get("cursor", "")
        rows: list[Row] = []
        columns: list[str] = []
        error = needed = next_url = ""
        first = 1
        ran = False
        if token:  # a next page: the rest of the query, as the service compiled it for the first page
            rest, first = open_gql_page(tokens, namespace, text, token)
            run = pb.RunQueryRequest(partition_id=pb.PartitionId(namespace=namespace), query=rest,
                                     batch_size=GQL_ROWS)
        else:
            run = pb.RunQueryRequest(partition_id=pb.PartitionId(namespace=namespace),
                                     gql_query=pb.GqlQuery(query_string=text), batch_size=GQL_ROWS)
        if token or text.strip():
            try:
                answer = await services.call("datastore", "RunQuery", run)
            except NeedIndexError as exc:
                error, _, needed = str(exc).partition("\n\n")
            except BadRequestError as exc:
                error = str(exc)
            else:
                ran = True
                rows, columns = table(answer.batch.entity_results[:GQL_ROWS])
                following = next_gql_query(answer, len(rows))
                if following is not None:
                    next_url = gql_url(namespace, text, gql_page_token(tokens, namespace, text, following,
                                                                       first + len(rows)))
        return render.page(request, "gql.html", fragment="gql_results.html", namespace=namespace, query=text,
                           rows=rows, columns=columns, error=error, needed=needed, ran=ran, first=first,
                           next_url=next_url, first_url=gql_url(namespace, text) if token else "",
                           key_path=values.key_path)

    async def indexes_page(request: web.Request) -> web.StreamResponse:
        answer = await services.call("datastore", "ListIndexes", pb.ListIndexesRequest())
        shown = sorted((shown_index(i) for i in answer.indexes), key=lambda i: (i.kind, i.properties, i.ancestor))
        return render.page(request, "indexes.html", indexes=shown)

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
            web.post("/datastore/delete", delete), web.post("/datastore/save", save),
            web.get("/datastore/new", new_page), web.post("/datastore/create", create),
            web.get("/datastore/gql", gql_page), web.get("/datastore/indexes", indexes_page)]


def _edit_form(encoded: str, version: str, fields: list[forms.Field]) -> dict[str, object]:
    return {"action": "/datastore/save", "key": encoded, "version": version, "fields": fields,
            "menus": _TYPE_MENUS, "create": None}


def _create_form(namespace: str, kind: str, name: str, parent: str, fields: list[forms.Field],
                 problems: Mapping[str, str] | None = None) -> dict[str, object]:
    return {"action": "/datastore/create", "key": "", "version": "", "fields": fields,
            "menus": _TYPE_MENUS,
            "create": {"ns": namespace, "kind": kind, "name": name, "parent": parent,
                       "problems": dict(problems or {})}}


def _form_page(request: web.Request, title: str, form: dict[str, object]) -> web.Response:
    """The form again with each wrong field's message by it (422: nothing was written)."""
    return render.page(request, "entity_form_page.html", fragment="entity_form.html", status=422, title=title,
                       form=form)
