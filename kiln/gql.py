"""A parser for App Engine's legacy GQL, the query language of ``db.GqlQuery``.

App Engine's documentation recommends parsing a GqlQuery once and keeping it
in a global, binding new arguments for each request. This module follows the
same split: :func:`parse` turns the query text into an immutable
:class:`GqlStatement` whose argument references are :class:`Binding` objects,
and :func:`bind` resolves them into a :class:`BoundQuery` for one run::

    stmt = parse("SELECT * FROM Greeting WHERE author = :1 ORDER BY date DESC LIMIT 10")
    query = bind(stmt, ["alice@example.com"])

The grammar (keywords are case-insensitive)::

    SELECT [DISTINCT] ( * | __key__ | <property> [, <property> ...] )
      [FROM <kind>]
      [WHERE <condition> [AND <condition> ...]]
      [ORDER BY <property> [ASC | DESC] [, ...]]
      [LIMIT [<offset>,] <count>]
      [OFFSET <offset>]

    <condition> := <property> (< | <= | > | >= | = | != ) <value>
                 | <property> IN ( <list> | <binding> )
                 | ANCESTOR IS ( KEY(...) | <binding> )

Values are strings (``'it''s'`` or ``"x"``), integers, floats, ``TRUE``,
``FALSE``, ``NULL``, bindings (``:1``, ``:name``), parenthesised lists and the
literal functions ``KEY``, ``USER``, ``GEOPT``, ``DATETIME``, ``DATE`` and
``TIME``. Property and kind names are identifiers (dots allowed, as in
``address.city``) or double-quoted names; the grammar's keywords are reserved
and must be quoted to be used as names. Literal functions become
:class:`KeyLiteral`, :class:`UserLiteral`, :class:`GeoPtLiteral` or naive
``datetime`` values (treated as UTC); turning them into datastore values is
the caller's job.

Every mistake raises :class:`GqlError` naming the offending text and its
0-based position, e.g. ``GQL: unexpected token 'ORDERR' at position 31``.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeAlias, TypeGuard

from kiln.errors import BadRequestError

__all__ = [
    "Binding", "BindingError", "BoundQuery", "Condition", "GeoPtLiteral", "GqlError", "GqlStatement",
    "KeyLiteral", "ListLiteral", "Order", "UserLiteral", "bind", "parse",
]

KEY_PROPERTY = "__key__"
# Words with a meaning somewhere in the grammar. Reserving them everywhere keeps
# "SELECT FROM Kind" an error at FROM instead of a projection of a property
# called FROM; a property that really has such a name can be double-quoted.
RESERVED = frozenset({
    "SELECT", "DISTINCT", "FROM", "WHERE", "AND", "ORDER", "BY", "ASC", "DESC",
    "LIMIT", "OFFSET", "ANCESTOR", "IS", "IN", "TRUE", "FALSE", "NULL",
})
_CONSTANTS: dict[str, Any] = {"TRUE": True, "FALSE": False, "NULL": None}
_MAX_ID = 2**63 - 1  # datastore ids are positive signed 64-bit integers

# The string quantifiers are possessive so that 'it''s (no closing quote) is one
# unterminated string, not the string 'it' followed by an unterminated 's.
_TOKEN_RE = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*+')
  | (?P<quoted>"(?:[^"]|"")*+")
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<binding>:(?:\d+|[A-Za-z_][A-Za-z0-9_]*))
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*)
  | (?P<op><=|>=|!=|<|>|=)
  | (?P<punct>[(),*])
""", re.VERBOSE | re.ASCII)
_DATE = r"(\d{4})-(\d{2})-(\d{2})"
_TIME = r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"
# name -> (constructor, integer arguments, string form, how the string form is shown in errors)
_TEMPORAL: dict[str, tuple[Callable[..., Any], int, re.Pattern[str], str]] = {
    "DATETIME": (datetime.datetime, 6, re.compile(f"{_DATE} {_TIME}", re.ASCII),
                 "'YYYY-MM-DD HH:MM:SS[.ffffff]'"),
    "DATE": (datetime.date, 3, re.compile(_DATE, re.ASCII), "'YYYY-MM-DD'"),
    "TIME": (datetime.time, 3, re.compile(_TIME, re.ASCII), "'HH:MM:SS[.ffffff]'"),
}


class GqlError(BadRequestError):
    """A query that is not valid GQL.

    Attributes:
        message: what is wrong, without the location.
        position: 0-based character offset into the query, or ``None`` when the
            mistake is not at one place (an argument given to :func:`bind`).
        token: the offending text, or ``''`` at the end of the query; for
            errors from :func:`bind`, the binding (``':2'``, ``':name'``).
    """

    def __init__(self, message: str, position: int | None, token: str) -> None:
        self.message, self.position, self.token = message, position, token
        text = f"GQL: {message}"
        if position is not None:
            text += f" at position {position}"
            # Messages such as "unexpected token 'X'" already quote the token.
            if not token:
                text += " near end of query"
            elif repr(token) not in message:
                text += f" near {token!r}"
        super().__init__(text)


class BindingError(GqlError):
    """A binding that is malformed, or an argument that does not fit the query's bindings."""


@dataclasses.dataclass(frozen=True)
class Binding:
    """A reference to an argument: ``:1`` (``position=1``) or ``:name`` (``name='name'``)."""

    position: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.position is None) == (self.name is None):
            raise ValueError("a Binding needs exactly one of position and name")

    def __str__(self) -> str:
        return f":{self.position if self.position is not None else self.name}"


@dataclasses.dataclass(frozen=True)
class KeyLiteral:
    """``KEY('Kind', id_or_name, ...)`` as a ``path`` of pairs, or ``KEY('<urlsafe>')`` as ``encoded``."""

    path: tuple[tuple[str, int | str], ...] = ()
    encoded: str | None = None


@dataclasses.dataclass(frozen=True)
class UserLiteral:
    """``USER('email')``."""

    email: str


@dataclasses.dataclass(frozen=True)
class GeoPtLiteral:
    """``GEOPT(lat, lon)``, range-checked."""

    lat: float
    lon: float


@dataclasses.dataclass(frozen=True)
class ListLiteral:
    """A parenthesised list of values, as used with ``IN`` (and ``=``)."""

    values: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Condition:
    """One ``WHERE`` filter; ``op`` is one of ``<``, ``<=``, ``>``, ``>=``, ``=``, ``!=``, ``IN``."""

    prop: str
    op: str
    value: Any


@dataclasses.dataclass(frozen=True)
class Order:
    """One ``ORDER BY`` term."""

    prop: str
    descending: bool


@dataclasses.dataclass(frozen=True)
class GqlStatement:
    """A parsed query whose argument references are still :class:`Binding` objects.

    Attributes:
        kind: the ``FROM`` kind, or ``None`` for a kindless query.
        keys_only: ``SELECT __key__``.
        projection: the selected properties; empty for ``*`` and ``__key__``.
        distinct: ``SELECT DISTINCT``.
        conditions: the ``WHERE`` filters other than ``ANCESTOR IS``, in query order.
        ancestor: the ``ANCESTOR IS`` value, a :class:`KeyLiteral` or :class:`Binding`.
        orders: the ``ORDER BY`` terms.
        limit: the row limit, a non-negative int or a :class:`Binding`.
        offset: the rows to skip, a non-negative int or a :class:`Binding`.
    """

    kind: str | None
    keys_only: bool
    projection: tuple[str, ...]
    distinct: bool
    conditions: tuple[Condition, ...]
    ancestor: Any | None
    orders: tuple[Order, ...]
    limit: int | Binding | None
    offset: int | Binding | None

    def bindings(self) -> tuple[set[int], set[str]]:
        """Return the positional numbers and the names of every binding the query uses."""
        positions: set[int] = set()
        names: set[str] = set()
        values: list[Any] = [self.ancestor, self.limit, self.offset]
        for cond in self.conditions:
            values.extend(cond.value.values if isinstance(cond.value, ListLiteral) else [cond.value])
        for value in values:
            if isinstance(value, Binding):
                if value.position is not None:
                    positions.add(value.position)
                if value.name is not None:
                    names.add(value.name)
        return positions, names


@dataclasses.dataclass(frozen=True)
class BoundQuery:
    """A :class:`GqlStatement` with every binding replaced by its argument.

    Fields mean the same as in :class:`GqlStatement`. List values (literal or
    bound, for ``IN`` and ``=``) are tuples; other arguments are passed through
    unconverted.
    """

    kind: str | None
    keys_only: bool
    projection: tuple[str, ...]
    distinct: bool
    conditions: tuple[Condition, ...]
    ancestor: Any | None
    orders: tuple[Order, ...]
    limit: int | None
    offset: int | None


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # a group name of _TOKEN_RE, or "end"
    text: str
    pos: int


# A literal function's arguments, each with its token for error positions.
_Args: TypeAlias = list[tuple[_Token, str | int | float]]


def _tokenize(query: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(query):
        match = _TOKEN_RE.match(query, pos)
        if match is None:
            if query[pos] in "'\"":
                raise GqlError("unterminated string", pos, query[pos:])
            raise GqlError(f"unexpected character {query[pos]!r}", pos, query[pos])
        kind = match.lastgroup
        assert kind is not None  # every alternative is a named group
        if kind != "space":
            tokens.append(_Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(query)))
    return tokens


def _unquote(text: str) -> str:
    """Strip the quotes of a string or quoted-name token and undo doubled quotes."""
    quote = text[0]
    return text[1:-1].replace(quote * 2, quote)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


class _Parser:
    """A recursive-descent parser over the token list; one instance per query."""

    def __init__(self, query: str) -> None:
        self.tokens = _tokenize(query)
        self.index = 0

    # -- token helpers -------------------------------------------------------

    @property
    def tok(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        tok = self.tok
        if tok.kind != "end":
            self.index += 1
        return tok

    def fail(self, message: str, tok: _Token | None = None) -> NoReturn:
        if tok is None:
            tok = self.tok
        raise GqlError(message, tok.pos, tok.text)

    def at_keyword(self, word: str, offset: int = 0) -> bool:
        tok = self.tokens[min(self.index + offset, len(self.tokens) - 1)]
        return tok.kind == "name" and tok.text.upper() == word

    def accept_keyword(self, word: str) -> _Token | None:
        if self.at_keyword(word):
            return self.advance()
        return None

    def expect_keyword(self, word: str) -> None:
        if not self.accept_keyword(word):
            self.fail(f"expected {word}")

    def accept_punct(self, char: str) -> bool:
        if self.tok.kind == "punct" and self.tok.text == char:
            self.advance()
            return True
        return False

    def expect_punct(self, char: str) -> None:
        if not self.accept_punct(char):
            self.fail(f"expected {char!r}")

    def name(self, what: str) -> str:
        """Read a property or kind name: an unreserved identifier or a double-quoted name."""
        tok = self.tok
        if tok.kind == "name" and tok.text.upper() not in RESERVED:
            self.advance()
            return tok.text
        if tok.kind == "quoted":
            if tok.text == '""':
                self.fail("a quoted name cannot be empty")
            self.advance()
            return _unquote(tok.text)
        self.fail(f"expected {what}")

    # -- clauses -------------------------------------------------------------

    def statement(self) -> GqlStatement:
        self.expect_keyword("SELECT")
        keys_only, projection, distinct = self.select_list()
        kind = self.name("a kind name") if self.accept_keyword("FROM") else None
        if projection and kind is None:
            # Projections are served from per-kind property indexes.
            self.fail("a projection needs FROM <kind>")
        conditions, ancestor = self.where(kind) if self.accept_keyword("WHERE") else ((), None)
        orders = self.orders(kind) if self.accept_keyword("ORDER") else ()
        limit: int | Binding | None = None
        offset: int | Binding | None = None
        if self.accept_keyword("LIMIT"):
            limit = self.count("LIMIT")
            if self.accept_punct(","):
                offset, limit = limit, self.count("LIMIT")
        offset_tok = self.accept_keyword("OFFSET")
        if offset_tok:
            if offset is not None:
                self.fail("offset given twice (LIMIT <offset>, <count> and OFFSET)", offset_tok)
            offset = self.count("OFFSET")
        if self.tok.kind != "end":
            self.fail(f"unexpected token {self.tok.text!r}")
        return GqlStatement(kind=kind, keys_only=keys_only, projection=projection, distinct=distinct,
                            conditions=conditions, ancestor=ancestor, orders=orders,
                            limit=limit, offset=offset)

    def where(self, kind: str | None) -> tuple[tuple[Condition, ...], KeyLiteral | Binding | None]:
        """Read the conditions after WHERE; return them and the ANCESTOR IS value."""
        conditions: list[Condition] = []
        ancestor: KeyLiteral | Binding | None = None
        while True:
            if self.at_keyword("ANCESTOR") and self.at_keyword("IS", 1):
                if ancestor is not None:
                    self.fail("ANCESTOR IS given twice")
                ancestor = self.ancestor()
            else:
                conditions.append(self.condition(kind))
            if not self.accept_keyword("AND"):
                return tuple(conditions), ancestor

    def select_list(self) -> tuple[bool, tuple[str, ...], bool]:
        """Return ``(keys_only, projection, distinct)``."""
        distinct_tok = self.accept_keyword("DISTINCT")
        if self.accept_punct("*"):
            props: list[str] = []
        else:
            first = self.tok
            props = [self.name("a property name, * or __key__")]
            while self.accept_punct(","):
                prop_tok = self.tok
                prop = self.name("a property name")
                if prop in props:
                    self.fail(f"property {prop!r} is projected twice", prop_tok)
                props.append(prop)
            if KEY_PROPERTY in props and len(props) > 1:
                self.fail("__key__ cannot be combined with other properties", first)
        keys_only = props == [KEY_PROPERTY]
        if distinct_tok and (keys_only or not props):
            self.fail("DISTINCT needs a projection list", distinct_tok)
        return keys_only, (() if keys_only else tuple(props)), distinct_tok is not None

    def property_ref(self, kind: str | None) -> str:
        """Read a property name used in a filter or order, checking kindless rules."""
        tok = self.tok
        prop = self.name("a property name")
        if kind is None and prop != KEY_PROPERTY:
            self.fail("a kindless query can only filter and order on __key__", tok)
        return prop

    def condition(self, kind: str | None) -> Condition:
        prop = self.property_ref(kind)
        op_tok = self.tok
        if self.accept_keyword("IN"):
            value_tok = self.tok
            value = self.value()
            if not isinstance(value, (ListLiteral, Binding)):
                self.fail("IN needs a list or a binding", value_tok)
            cond = Condition(prop, "IN", value)
        elif op_tok.kind == "op":
            self.advance()
            value_tok = self.tok
            value = self.value()
            if isinstance(value, ListLiteral) and op_tok.text != "=":
                self.fail(f"a list can only be compared with IN or =, not {op_tok.text}", value_tok)
            cond = Condition(prop, op_tok.text, value)
        else:
            self.fail("expected an operator (<, <=, >, >=, =, !=, IN)")
        if prop == KEY_PROPERTY and not _is_key_value(cond.value):
            self.fail("__key__ can only be compared with KEY(...) values or bindings", value_tok)
        return cond

    def ancestor(self) -> KeyLiteral | Binding:
        self.advance()  # ANCESTOR
        self.advance()  # IS
        value_tok = self.tok
        value = self.value()
        if not isinstance(value, (KeyLiteral, Binding)):
            self.fail("ANCESTOR IS needs KEY(...) or a binding", value_tok)
        return value

    def orders(self, kind: str | None) -> tuple[Order, ...]:
        self.expect_keyword("BY")
        orders: list[Order] = []
        while True:
            prop = self.property_ref(kind)
            descending = self.accept_keyword("DESC") is not None
            if not descending:
                self.accept_keyword("ASC")
            orders.append(Order(prop, descending))
            if not self.accept_punct(","):
                return tuple(orders)

    def count(self, clause: str) -> int | Binding:
        """Read a LIMIT or OFFSET value: a non-negative integer or a binding."""
        tok = self.tok
        if tok.kind == "binding":
            return self.binding()
        if tok.kind == "number" and tok.text.isdigit():
            self.advance()
            return int(tok.text)
        self.fail(f"{clause} needs a non-negative integer or a binding")

    # -- values --------------------------------------------------------------

    def binding(self) -> Binding:
        tok = self.advance()
        ref = tok.text[1:]
        if not ref.isdigit():
            return Binding(name=ref)
        if int(ref) < 1:
            raise BindingError("positional bindings start at :1", tok.pos, tok.text)
        return Binding(position=int(ref))

    def value(self) -> Any:
        tok = self.tok
        if tok.kind == "binding":
            return self.binding()
        if tok.kind in ("string", "quoted"):
            self.advance()
            return _unquote(tok.text)
        if tok.kind == "number":
            self.advance()
            return _number(tok.text)
        if tok.kind == "punct" and tok.text == "(":
            return self.list_literal()
        if tok.kind == "name":
            word = tok.text.upper()
            if word in _CONSTANTS:
                self.advance()
                return _CONSTANTS[word]
            if word in _FUNCTIONS:
                self.advance()
                return _FUNCTIONS[word](self, tok, self.arguments())
        self.fail("expected a value")

    def list_literal(self) -> ListLiteral:
        self.advance()  # (
        values: list[Any] = []
        while True:
            if self.tok.kind == "punct" and self.tok.text == "(":
                self.fail("lists cannot be nested")
            values.append(self.value())
            if not self.accept_punct(","):
                break
        self.expect_punct(")")
        return ListLiteral(tuple(values))

    def arguments(self) -> _Args:
        """Read a literal function's ``(arg, ...)``; arguments are strings or numbers."""
        self.expect_punct("(")
        args: _Args = []
        if self.accept_punct(")"):
            return args
        while True:
            tok = self.tok
            if tok.kind in ("string", "quoted"):
                args.append((tok, _unquote(tok.text)))
            elif tok.kind == "number":
                args.append((tok, _number(tok.text)))
            else:
                self.fail("expected a string or number argument")
            self.advance()
            if not self.accept_punct(","):
                break
        self.expect_punct(")")
        return args

    # -- literal functions; each gets the function's name token and its arguments

    def key(self, fn: _Token, args: _Args) -> KeyLiteral:
        if len(args) == 1:
            tok, encoded = args[0]
            if not isinstance(encoded, str) or not encoded:
                self.fail("KEY with one argument needs a non-empty encoded key string", tok)
            return KeyLiteral(encoded=encoded)
        if not args or len(args) % 2:
            self.fail("KEY needs an encoded key string or pairs of kind and id or name", fn)
        path: list[tuple[str, int | str]] = []
        for (kind_tok, kind), (id_tok, ident) in zip(args[::2], args[1::2]):
            if not isinstance(kind, str) or not kind:
                self.fail("KEY path kinds must be non-empty strings", kind_tok)
            if not _is_id_or_name(ident):
                self.fail("KEY path ids must be positive integers and names non-empty strings", id_tok)
            path.append((kind, ident))
        return KeyLiteral(path=tuple(path))

    def user(self, fn: _Token, args: _Args) -> UserLiteral:
        email = args[0][1] if len(args) == 1 else None
        if not isinstance(email, str) or not email:
            self.fail("USER needs one non-empty email string", fn)
        return UserLiteral(email)

    def geopt(self, fn: _Token, args: _Args) -> GeoPtLiteral:
        if len(args) != 2:
            self.fail("GEOPT needs a latitude and a longitude", fn)
        (lat_tok, lat), (lon_tok, lon) = args
        for which, tok, number, limit in (("latitude", lat_tok, lat, 90), ("longitude", lon_tok, lon, 180)):
            if isinstance(number, str):
                self.fail("GEOPT arguments must be numbers", tok)
            if not -limit <= number <= limit:
                self.fail(f"GEOPT {which} must be within [-{limit}, {limit}]", tok)
        return GeoPtLiteral(float(lat), float(lon))

    def temporal(self, fn: _Token, args: _Args) -> Any:
        """DATETIME, DATE or TIME, from integer components or from one string."""
        name = fn.text.upper()
        factory, count, pattern, shown = _TEMPORAL[name]
        usage = f"{name} needs {count} integers or one string {shown}"
        parts: list[int] = []
        if len(args) == 1 and isinstance(args[0][1], str):
            match = pattern.fullmatch(args[0][1])
            if match is None:
                self.fail(usage, args[0][0])
            parts = [int(group) for group in match.groups()[:count]]
            fraction = match.groups()[count:]
            if fraction and fraction[0]:
                parts.append(int(fraction[0].ljust(6, "0")))  # digits after the point, as microseconds
        elif len(args) == count:
            for tok, number in args:
                if not isinstance(number, int):
                    self.fail(f"{name} arguments must be integers", tok)
                parts.append(number)
        else:
            self.fail(usage, fn)
        try:
            return factory(*parts)
        except ValueError as exc:  # e.g. "month must be in 1..12"
            self.fail(f"{name} is not a valid value: {exc}", fn)


def _is_id_or_name(value: object) -> TypeGuard[int | str]:
    """Tell whether ``value`` can be a key path element's id (1 to 2**63-1) or name (non-empty)."""
    if isinstance(value, str):
        return value != ""
    return isinstance(value, int) and 0 < value <= _MAX_ID


def _is_key_value(value: Any) -> bool:
    if isinstance(value, ListLiteral):
        return all(_is_key_value(item) for item in value.values)
    return isinstance(value, (KeyLiteral, Binding))


_FUNCTIONS: dict[str, Callable[[_Parser, _Token, _Args], Any]] = {
    "KEY": _Parser.key,
    "USER": _Parser.user,
    "GEOPT": _Parser.geopt,
    "DATETIME": _Parser.temporal,
    "DATE": _Parser.temporal,
    "TIME": _Parser.temporal,
}


def parse(query: str) -> GqlStatement:
    """Parse a GQL query into a statement that can be bound many times.

    Raises:
        GqlError: the query is not valid GQL; the error names the position and token.
    """
    return _Parser(query).statement()


def bind(stmt: GqlStatement, positional: Sequence[Any] = (),
         named: Mapping[str, Any] | None = None) -> BoundQuery:
    """Resolve a statement's bindings with one run's arguments.

    Args:
        stmt: a statement from :func:`parse`.
        positional: the arguments for ``:1``, ``:2``, ...
        named: the arguments for ``:name`` references.

    Returns:
        The query with each binding replaced by its argument. A list or tuple
        bound for ``IN`` or ``=`` becomes a tuple; other arguments are passed
        through unconverted.

    Raises:
        BindingError: an argument is missing, or given but never used (App
            Engine rejects both), or does not fit where it is used (``IN`` needs
            a list; ``LIMIT`` and ``OFFSET`` need non-negative integers).
    """
    named = named or {}
    used_positions, used_names = stmt.bindings()
    for number in sorted(used_positions):
        if number > len(positional):
            raise BindingError(f"missing argument :{number}", None, f":{number}")
    for name in sorted(used_names):
        if name not in named:
            raise BindingError(f"missing argument :{name}", None, f":{name}")
    for number in range(1, len(positional) + 1):
        if number not in used_positions:
            raise BindingError(f"unused argument :{number}", None, f":{number}")
    for name in sorted(named):
        if name not in used_names:
            raise BindingError(f"unused argument :{name}", None, f":{name}")

    def resolve(value: Any) -> Any:
        if isinstance(value, Binding):
            if value.position is not None:
                return positional[value.position - 1]
            assert value.name is not None  # Binding.__post_init__ guarantees one of the two
            return named[value.name]
        if isinstance(value, ListLiteral):
            return tuple(resolve(item) for item in value.values)
        return value

    def resolve_condition(cond: Condition) -> Condition:
        value = resolve(cond.value)
        if isinstance(cond.value, Binding) and cond.op in ("IN", "="):
            if isinstance(value, (list, tuple)):
                value = tuple(value)
            elif cond.op == "IN":
                raise BindingError(f"IN needs a list or tuple for {cond.value}, got {type(value).__name__}",
                                   None, str(cond.value))
        return dataclasses.replace(cond, value=value)

    def resolve_count(value: int | Binding | None, clause: str) -> int | None:
        resolved: int | None = resolve(value)
        # bool is an int subclass, but LIMIT TRUE is a mistake, not LIMIT 1.
        if resolved is not None and (type(resolved) is not int or resolved < 0):
            raise BindingError(f"{clause} needs a non-negative integer for {value}, got {resolved!r}",
                               None, str(value))
        return resolved

    return BoundQuery(
        kind=stmt.kind, keys_only=stmt.keys_only, projection=stmt.projection, distinct=stmt.distinct,
        conditions=tuple(resolve_condition(cond) for cond in stmt.conditions),
        ancestor=resolve(stmt.ancestor), orders=stmt.orders,
        limit=resolve_count(stmt.limit, "LIMIT"), offset=resolve_count(stmt.offset, "OFFSET"))
