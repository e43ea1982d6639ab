"""Queries of the model layer: ``db.Query`` (built with methods) and ``db.GqlQuery`` (a GQL string).

Both yield model instances of the class registered for each result's kind
(or keys, for keys-only queries), fetch results batch by batch as they are
consumed, and remember the cursor after the last result returned, so a page
of results can be continued in a later request with ``with_cursor``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from typing import Any

from kiln import gql
from kiln.api import datastore
from kiln.api.datastore_errors import BadArgumentError, BadQueryError
from kiln.api.datastore_types import Key, to_value
from kiln.ext.db._errors import NotSavedError, PropertyError
from kiln.ext.db._model import Expando, Model, class_for_kind
from kiln.pb.datastore.v1 import datastore_pb2 as pb

# Options of App Engine's run()/fetch() that only tune its RPCs; accepted and ignored.
_IGNORED_OPTIONS = frozenset({"prefetch_size", "produce_cursors", "deadline", "read_policy", "config",
                              "batch_size_hint"})


def _check_count(value: Any, what: str, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadArgumentError(f"{what} must be a non-negative integer, got {value!r}")


def _check_options(kwargs: dict[str, Any]) -> None:
    unknown = set(kwargs) - _IGNORED_OPTIONS
    if unknown:
        raise BadArgumentError(f"unknown query option(s): {', '.join(sorted(unknown))}")


def _filter_value(value: Any) -> Any:
    """Model instances stand for their keys in filters and bindings."""
    if isinstance(value, Model):
        if not value.has_key():
            raise NotSavedError(f"{value.kind()} instance must be saved before it can be used in a query")
        return value.key()
    if isinstance(value, (list, tuple)):
        return [_filter_value(item) for item in value]
    return value


class _BaseQuery(abc.ABC):
    """What ``Query`` and ``GqlQuery`` share: fetching, counting, cursors and iteration."""

    def __init__(self, model_class: type[Model] | None, *, keys_only: bool, projection: tuple[str, ...],
                 distinct: bool) -> None:
        self._model_class = model_class
        self._keys_only = keys_only
        self._projection = projection
        self._distinct = distinct
        self._start_cursor = b""
        self._end_cursor = b""
        self._last_run: datastore.QueryIterator[Any] | None = None

    @abc.abstractmethod
    def run(self, **kwargs: Any) -> Iterator[Any]:
        """Iterate over the results (each query kind runs itself its own way)."""

    def _convert(self, keys_only: bool, projection: tuple[str, ...]) -> Any:
        model_class = self._model_class

        def convert(result: pb.EntityResult) -> Any:
            if keys_only:
                return Key(_pb=result.entity.key)
            entity = datastore.Entity.from_pb(result.entity)
            cls = model_class if model_class is not None and entity.kind() == model_class.kind() \
                else class_for_kind(entity.kind())
            return cls.from_entity(entity, _projection=projection or None)
        return convert

    def is_keys_only(self) -> bool:
        return self._keys_only

    def projection(self) -> tuple[str, ...] | None:
        """The projected property names, or ``None`` for whole entities."""
        return self._projection or None

    def is_distinct(self) -> bool:
        return self._distinct

    def fetch(self, limit: int | None, offset: int = 0, **kwargs: Any) -> list[Any]:
        """The first ``limit`` results (``None``: all) after skipping ``offset``, as a list."""
        _check_count(limit, "limit", allow_none=True)
        _check_count(offset, "offset", allow_none=False)
        return list(self.run(limit=limit, offset=offset or None, **kwargs))

    def get(self, **kwargs: Any) -> Any:
        """The first result, or ``None``."""
        for result in self.run(limit=1, **kwargs):
            return result
        return None

    def count(self, limit: int | None = None, **kwargs: Any) -> int:
        """How many results (up to ``limit``, ``None``: all)."""
        _check_count(limit, "limit", allow_none=True)
        return self._count(limit, **kwargs)

    def _count(self, limit: int | None, **kwargs: Any) -> int:
        saved = self._last_run
        try:
            return sum(1 for _ in self.run(limit=limit, **kwargs))
        finally:
            self._last_run = saved  # counting does not move the query's cursor

    def cursor(self) -> str:
        """The URL-safe cursor after the last result of the latest run or fetch.

        Raises:
            BadQueryError: the query has not been run.
        """
        cursor = self._last_run.cursor() if self._last_run is not None else None
        if cursor is None:
            if self._last_run is not None and self._last_run.started():
                return ""
            raise BadQueryError("no cursor available: run or fetch the query first")
        return cursor.urlsafe()

    def with_cursor(self, start_cursor: datastore.Cursor | str | None = None,
                    end_cursor: datastore.Cursor | str | None = None) -> Any:
        """Start later runs at ``start_cursor`` (and stop at ``end_cursor``); returns the query."""
        self._start_cursor = datastore.cursor_bytes(start_cursor)
        self._end_cursor = datastore.cursor_bytes(end_cursor)
        return self

    def __iter__(self) -> Iterator[Any]:
        return self.run()

    def __getitem__(self, arg: int | slice) -> Any:
        if isinstance(arg, slice):
            start, stop, step = arg.start or 0, arg.stop, arg.step
            if step not in (None, 1):
                raise BadArgumentError("query slices cannot have a step")
            if start < 0 or (stop is not None and stop < 0):
                raise BadArgumentError("query slices cannot be negative")
            if stop is None:
                return self.fetch(None, start)
            return self.fetch(max(0, stop - start), start)
        if isinstance(arg, bool) or not isinstance(arg, int):
            raise TypeError("query indexes must be integers or slices")
        if arg < 0:
            raise BadArgumentError("query indexes cannot be negative")
        found = self.fetch(1, arg)
        if not found:
            raise IndexError("the query returned fewer than %d results" % (arg + 1))
        return found[0]


class Query(_BaseQuery):
    """A query over one model's kind (or every kind, for ``model_class=None``).

    ``Person.all().filter('age >=', 18).order('-age').fetch(10)``.
    """

    def __init__(self, model_class: type[Model] | None = None, keys_only: bool = False,
                 cursor: datastore.Cursor | str | None = None, namespace: str | None = None,
                 _app: str | None = None, distinct: bool = False, projection: Iterable[str] | None = None) -> None:
        names = tuple(self._datastore_name_of(model_class, p) for p in (projection or ()))
        super().__init__(model_class, keys_only=bool(keys_only), projection=names, distinct=bool(distinct))
        if keys_only and names:
            raise BadQueryError("a keys-only query cannot have a projection")
        if distinct and not names:
            raise BadQueryError("distinct needs a projection")
        for name in names:
            self._check_sortable(name, "projection")
        self._kind = model_class.kind() if model_class is not None else None
        self._namespace = namespace or ""
        self._filters: list[tuple[str, str, Any]] = []
        self._orders: list[tuple[str, int]] = []
        self._ancestor: Key | None = None
        if cursor is not None:
            self.with_cursor(cursor)

    @staticmethod
    def _datastore_name_of(model_class: type[Model] | None, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise PropertyError(f"property names must be non-empty strings, got {name!r}")
        if model_class is not None and name in model_class._properties:
            return model_class._properties[name].name or name
        return name

    def _check_sortable(self, name: str, what: str) -> None:
        """Orders and projections need an indexed, declared property (any name for an Expando)."""
        model = self._model_class
        if model is None or name == datastore.KEY_PROPERTY:
            return
        if name in model._unindexed_properties:
            raise PropertyError(f"Property '{name}' is not indexed")
        if not issubclass(model, Expando) and name not in model._all_properties:
            raise PropertyError(f"Invalid property name '{name}' in {what}")

    def filter(self, property_operator: str, value: Any) -> Query:
        """Add a condition: ``'prop op'`` with op ``<``, ``<=``, ``>``, ``>=``, ``=``, ``!=`` or ``IN``.

        Raises:
            BadFilterError: a malformed condition, or inequalities on two properties.
            PropertyError: the property is not indexed.
        """
        prop, op = datastore.parse_filter(property_operator)
        prop = self._datastore_name_of(self._model_class, prop)
        if self._model_class is None and prop != datastore.KEY_PROPERTY:
            raise BadQueryError(f"Only {datastore.KEY_PROPERTY} filters are allowed on kindless queries")
        if self._model_class is not None and prop in self._model_class._unindexed_properties:
            raise PropertyError(f"Property '{prop}' is not indexed")
        value = _filter_value(value)
        datastore.check_filter_value(prop, op, value)
        datastore.check_query_shape([*self._filters, (prop, op, value)], self._orders)
        self._filters.append((prop, op, value))
        return self

    def order(self, property: str) -> Query:  # noqa: A002 - App Engine's name
        """Sort by ``'prop'`` ascending or ``'-prop'`` descending (after earlier orders)."""
        if not isinstance(property, str) or not property.lstrip("-"):
            raise PropertyError(f"order needs a property name, got {property!r}")
        descending = property.startswith("-")
        name = self._datastore_name_of(self._model_class, property[1:] if descending else property)
        if self._model_class is None and name != datastore.KEY_PROPERTY:
            raise BadQueryError(f"Only {datastore.KEY_PROPERTY} orders are allowed on kindless queries")
        self._check_sortable(name, "order")
        orders = [*self._orders, (name, datastore.DESCENDING if descending else datastore.ASCENDING)]
        datastore.check_query_shape(self._filters, orders)
        self._orders = orders
        return self

    def ancestor(self, ancestor: Model | Key | str) -> Query:
        """Only the ancestor and its descendants (strongly consistent results)."""
        if isinstance(ancestor, Model):
            if not ancestor.has_key():
                raise NotSavedError(f"{ancestor.kind()} instance must be saved before it can be an ancestor")
            key = ancestor.key()
        elif isinstance(ancestor, str):
            key = Key(ancestor)
        elif isinstance(ancestor, Key):
            key = ancestor
        else:
            raise TypeError(f"ancestor should be a Key or a Model instance, got {type(ancestor).__name__}")
        if not key.has_id_or_name():
            raise NotSavedError("the ancestor key is incomplete")
        self._ancestor = key
        self._namespace = key.namespace()
        return self

    def run(self, limit: int | None = None, offset: int | None = None, batch_size: int | None = None,
            start_cursor: datastore.Cursor | str | None = None, end_cursor: datastore.Cursor | str | None = None,
            keys_only: bool | None = None, projection: Iterable[str] | None = None,
            **kwargs: Any) -> datastore.QueryIterator[Any]:
        """Start the query; results arrive batch by batch as they are consumed.

        Args:
            limit: at most this many results (``None``: all).
            offset: skip this many results first.
            batch_size: results per round trip.
            start_cursor: resume here instead of at the query's ``with_cursor`` position.
            end_cursor: stop here.
            keys_only: override the query's keys-only setting for this run.
            projection: override the query's projection for this run.
        """
        _check_options(kwargs)
        _check_count(limit, "limit", allow_none=True)
        _check_count(offset, "offset", allow_none=True)
        keys_only = self._keys_only if keys_only is None else bool(keys_only)
        names = self._projection if projection is None else tuple(
            self._datastore_name_of(self._model_class, p) for p in projection)
        query = datastore.build_query_pb(
            kind=self._kind, filters=self._filters, orders=self._orders, ancestor=self._ancestor,
            keys_only=keys_only, projection=names, distinct=self._distinct and bool(names))
        if limit is not None:
            query.limit = limit
        query.offset = offset or 0
        query.start_cursor = datastore.cursor_bytes(start_cursor) if start_cursor is not None \
            else self._start_cursor
        query.end_cursor = datastore.cursor_bytes(end_cursor) if end_cursor is not None else self._end_cursor
        self._last_run = datastore.run_query(query, self._convert(keys_only, names), namespace=self._namespace,
                                             batch_size=batch_size or limit or None)
        return self._last_run

    def _count(self, limit: int | None, **kwargs: Any) -> int:
        # Keys are enough to count (a projection is kept: with distinct it changes the count).
        return super()._count(limit, keys_only=None if self._projection else True, **kwargs)


class GqlQuery(_BaseQuery):
    """A query written in GQL, parsed once and bound with new arguments for each use.

    ``GqlQuery("SELECT * FROM Greeting WHERE author = :1 ORDER BY date DESC", user)``.
    Parse it once (e.g. at module level) and call :meth:`bind` per request, as
    App Engine's documentation recommends. The service runs the GQL itself;
    the client parses it to report errors early and to know what results to
    expect.

    Explicit ``limit`` and ``offset`` given to ``run``/``fetch`` replace the
    query's ``LIMIT`` and ``OFFSET`` clauses.

    Raises:
        BadQueryError: the string is not valid GQL (the message names the token and position).
        KindError: no model class is defined for the ``FROM`` kind (unless ``SELECT __key__``).
    """

    def __init__(self, query_string: str, *args: Any, **kwds: Any) -> None:
        if not isinstance(query_string, str):
            raise BadArgumentError(f"query_string must be a str, got {type(query_string).__name__}")
        try:
            stmt = gql.parse(query_string)
        except gql.GqlError as exc:
            raise BadQueryError(str(exc)) from exc
        model_class = class_for_kind(stmt.kind) if stmt.kind and not stmt.keys_only else None
        super().__init__(model_class, keys_only=stmt.keys_only, projection=stmt.projection,
                         distinct=stmt.distinct)
        self._query_string = query_string
        self._stmt = stmt
        self._args: tuple[Any, ...] = ()
        self._kwds: dict[str, Any] = {}
        # The structured form of the last bound query (see _structured), keyed by its GQL request.
        self._compiled: tuple[bytes, pb.Query] | None = None
        self.bind(*args, **kwds)

    def bind(self, *args: Any, **kwds: Any) -> GqlQuery:
        """Replace the arguments of ``:1``, ``:2``… and ``:name``; returns the query."""
        self._args = args
        self._kwds = dict(kwds)
        self._last_run = None
        return self

    def _bound(self) -> gql.BoundQuery:
        try:
            return gql.bind(self._stmt, self._args, self._kwds)
        except gql.BindingError as exc:
            raise BadArgumentError(str(exc)) from exc

    def _request(self, query_string: str) -> pb.GqlQuery:
        out = pb.GqlQuery(query_string=query_string)
        for arg in self._args:
            out.positional_bindings.append(to_value(_filter_value(arg), name="binding"))
        for name, arg in self._kwds.items():
            out.named_bindings[name].CopyFrom(to_value(_filter_value(arg), name=f":{name}"))
        return out

    def _structured(self, request: pb.GqlQuery, has_ancestor: bool) -> pb.Query:
        """The service's structured form of the bound query (cached for the same bindings)."""
        token = request.SerializeToString(deterministic=True)
        if self._compiled is None or self._compiled[0] != token:
            self._compiled = (token, datastore.compile_gql(request, has_ancestor=has_ancestor))
        out = pb.Query()
        out.CopyFrom(self._compiled[1])
        return out

    def run(self, limit: int | None = None, offset: int | None = None, batch_size: int | None = None,
            start_cursor: datastore.Cursor | str | None = None, end_cursor: datastore.Cursor | str | None = None,
            **kwargs: Any) -> datastore.QueryIterator[Any]:
        """Start the query with the bound arguments; see :meth:`Query.run` for the options.

        Raises:
            BadArgumentError: an argument is missing or unused, or does not fit where it is used.
        """
        _check_options(kwargs)
        _check_count(limit, "limit", allow_none=True)
        _check_count(offset, "offset", allow_none=True)
        bound = self._bound()
        has_ancestor = bound.ancestor is not None
        start = datastore.cursor_bytes(start_cursor) if start_cursor is not None else self._start_cursor
        end = datastore.cursor_bytes(end_cursor) if end_cursor is not None else self._end_cursor
        new_limit = limit is not None and limit != bound.limit
        new_offset = offset is not None and offset != (bound.offset or 0)
        # Without a cursor, a limit or offset the query does not state can be appended as GQL
        # clauses (LIMIT and OFFSET end the grammar); otherwise run the structured form.
        appendable = not start and not end and not (new_limit and (self._stmt.limit is not None
                                                                   or self._stmt.offset is not None)) \
            and not (new_offset and self._stmt.offset is not None)
        convert = self._convert(self._keys_only, self._projection)
        query: pb.Query | pb.GqlQuery
        if appendable:
            text = self._query_string
            if new_limit:
                text += f" LIMIT {limit}"
            if new_offset:
                text += f" OFFSET {offset}"
            query = self._request(text)
        else:
            query = self._structured(self._request(self._query_string), has_ancestor)
            if limit is not None:
                query.limit = limit
            if offset is not None:
                query.offset = offset
            query.start_cursor, query.end_cursor = start, end
        size = batch_size or (limit if limit is not None else bound.limit) or None
        self._last_run = datastore.run_query(query, convert, batch_size=size, has_ancestor=has_ancestor)
        return self._last_run
