"""Which composite index App Engine requires for a query that filters or sorts on ``__key__``.

kiln's planner (:mod:`datastore_svc.query`) treats ``__key__`` filters as a
range of entity paths, which it can always check against a candidate, so it
serves many ``__key__`` queries from a built-in index. App Engine does not:
its index selection (the rule Google's datastore stub implements, which
kiln's differential test compares against) keeps ``__key__`` as an index
component in three cases, and then the query needs a composite index:

- a ``__key__`` filter together with an inequality filter on another property
  (``__key__ = k AND n > 1`` needs ``(__key__, n)``);
- a projection (or distinct) query with a ``__key__`` filter or sort order
  (``__key__ < k`` projecting ``a`` needs ``(__key__, a)``);
- a descending ``__key__`` sort order after other components.

This module computes that requirement (:func:`requirement`), whether the
declared indexes satisfy it (:func:`satisfied`; as App Engine, an index may end
with the required components after a prefix of equality properties, and
several indexes sharing that ending may together cover the equality
properties), and the index to ask for (:func:`recommended`). Requirements that
do not involve ``__key__`` are left to the planner, which asks for its own
index when it needs one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from datastore_svc.index import KEY_PROPERTY, IndexDef

EQUALITY = "="
INEQUALITIES = ("<", "<=", ">", ">=")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A composite index App Engine requires: equality properties in any order, then ``ordered`` components
    (``(name, descending)``; ``None``: either direction), then ``group_by`` and ``unordered`` properties, each
    group in any order and direction."""

    kind: str
    ancestor: bool
    prefix: frozenset[str]
    ordered: tuple[tuple[str, bool | None], ...]
    group_by: frozenset[str]
    unordered: frozenset[str]

    @property
    def names_key(self) -> bool:
        """Whether ``__key__`` is one of the index's components."""
        return KEY_PROPERTY in self.prefix or any(name == KEY_PROPERTY for name, _ in self.ordered)

    def postfix_groups(self) -> list[frozenset[str] | tuple[tuple[str, bool | None], ...]]:
        """The components after the equality prefix, as groups matched from the index's end."""
        return [self.ordered, self.group_by, self.unordered]


def requirement(kind: str, ancestor: bool, filters: Sequence[tuple[str, str]], orders: Sequence[tuple[str, bool]],
                projection: Sequence[str], distinct: bool) -> Requirement | None:
    """The composite index App Engine requires for one sub-query, or ``None`` when a built-in index serves it.

    ``filters`` are ``(property, operator)`` with ``=`` and the inequalities only (IN and ``!=`` are split into
    sub-queries before); ``orders`` are ``(property, descending)`` as the query gives them.
    """
    eq = {name for name, op in filters if op == EQUALITY}
    ineq = {name for name, op in filters if op in INEQUALITIES}
    eq -= ineq
    # Sort orders on equality properties cannot matter, nor a property's second order.
    seen = set(eq)
    kept: list[tuple[str, bool]] = []
    for name, desc in orders:
        if name not in seen:
            seen.add(name)
            kept.append((name, desc))
    seen |= ineq
    exists = []
    for name in projection:
        if name not in seen:
            seen.add(name)
            exists.append(name)
    if KEY_PROPERTY in eq:
        kept = []  # at most one result
    for i, (name, _) in enumerate(kept):
        if name == KEY_PROPERTY:
            kept = kept[:i + 1]  # keys are unique: later orders cannot matter
            break
    eq_names, ineq_names = set(eq), set(ineq)
    if not exists:
        # Without projected properties the datastore serves key order and key filters itself...
        key_desc = False
        if kept and kept[-1][0] == KEY_PROPERTY:
            if kept[-1][1]:
                key_desc = True
            else:
                kept = kept[:-1]
        # ...unless an inequality on another property or a descending key order needs them in the index.
        if not key_desc and not (ineq_names - {KEY_PROPERTY}):
            eq_names.discard(KEY_PROPERTY)
            ineq_names.discard(KEY_PROPERTY)
    if not kind:
        return None
    if not ineq_names and not exists and not kept and KEY_PROPERTY not in eq_names:
        return None  # equality filters only: merge join of built-in indexes
    ordered: list[tuple[str, bool | None]] = list(kept)
    if ineq_names and not kept:
        ordered.append((next(iter(ineq_names)), None))
    group_by = frozenset(exists) if distinct else frozenset()
    unordered = frozenset() if distinct else frozenset(exists)
    if not ancestor and len(eq_names) + len(ordered) + len(group_by) + len(unordered) <= 1:
        if not (ordered and ordered[0] == (KEY_PROPERTY, True)):
            return None
    return Requirement(kind, ancestor, frozenset(eq_names), tuple(ordered), group_by, unordered)


def match_postfix(req: Requirement, props: Sequence[tuple[str, bool]]) -> list[tuple[str, bool]] | None:
    """The index's components before those ``req`` requires at its end, or ``None`` if its end does not fit."""
    rest = list(props)
    for group in reversed(req.postfix_groups()):
        if not group:
            continue
        if len(rest) < len(group):
            return None
        tail, rest = rest[len(rest) - len(group):], rest[:len(rest) - len(group)]
        if isinstance(group, frozenset):
            if {name for name, _ in tail} != group:
                return None
        elif any(name != want or (direction is not None and desc != direction)
                 for (name, desc), (want, direction) in zip(tail, group)):
            return None
    return rest


def satisfied(req: Requirement, declared: Sequence[IndexDef]) -> bool:
    """Whether serving indexes ``declared`` serve ``req``: indexes ending with its components whose prefixes
    (equality properties only) together cover its equality properties (and the ancestor, for an ancestor query)."""
    by_ending: dict[tuple[tuple[str, bool], ...], tuple[set[str], bool]] = {}
    for defn in declared:
        if defn.kind != req.kind or (defn.ancestor and not req.ancestor):
            continue
        head = match_postfix(req, defn.props)
        if head is None:
            continue
        names = {name for name, _ in head}
        if names - req.prefix:
            continue
        ending = defn.props[len(head):]
        left, ancestor_left = by_ending.get(ending, (set(req.prefix), req.ancestor))
        left = left - names
        ancestor_left = ancestor_left and not defn.ancestor
        if not left and not ancestor_left:
            return True
        by_ending[ending] = (left, ancestor_left)
    return False


def recommended(req: Requirement) -> IndexDef:
    """The index App Engine suggests: equality properties by name, the ordered components, then the others by
    name, ascending unless an order says otherwise."""
    props = [(name, False) for name in sorted(req.prefix)]
    props += [(name, bool(desc)) for name, desc in req.ordered]
    props += [(name, False) for name in sorted(req.group_by)]
    props += [(name, False) for name in sorted(req.unordered)]
    return IndexDef(req.kind, req.ancestor, tuple(props))
