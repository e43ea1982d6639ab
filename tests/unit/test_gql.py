"""kiln.gql: parsing and binding App Engine's legacy GQL."""

import dataclasses
import datetime

import pytest

from kiln.errors import BadRequestError
from kiln.gql import (
    Binding,
    BindingError,
    BoundQuery,
    Condition,
    GeoPtLiteral,
    GqlError,
    GqlStatement,
    KeyLiteral,
    ListLiteral,
    Order,
    UserLiteral,
    bind,
    parse,
)


def _value(literal: str):
    """Parse ``a = <literal>`` and return the condition's value."""
    (cond,) = parse(f"SELECT * FROM K WHERE a = {literal}").conditions
    return cond.value


def _parse_error(query: str) -> GqlError:
    with pytest.raises(GqlError) as info:
        parse(query)
    return info.value


def _bind_error(query: str, positional=(), named=None) -> BindingError:
    stmt = parse(query)
    with pytest.raises(BindingError) as info:
        bind(stmt, positional, named)
    return info.value


# -- clauses -----------------------------------------------------------------


def test_select_star_from_kind_has_no_filters_orders_or_limits():
    stmt = parse("SELECT * FROM Greeting")
    assert stmt.kind == "Greeting"
    assert (stmt.keys_only, stmt.projection, stmt.distinct) == (False, (), False)
    assert (stmt.conditions, stmt.ancestor, stmt.orders) == ((), None, ())
    assert (stmt.limit, stmt.offset) == (None, None)


def test_select_key_is_keys_only_without_projection():
    stmt = parse("SELECT __key__ FROM Greeting")
    assert stmt.keys_only is True
    assert stmt.projection == ()


def test_projection_keeps_the_listed_properties_in_order():
    stmt = parse("SELECT title, author, date FROM Greeting")
    assert stmt.projection == ("title", "author", "date")
    assert stmt.keys_only is False


def test_distinct_projection_sets_distinct():
    stmt = parse("SELECT DISTINCT author FROM Greeting")
    assert stmt.distinct is True
    assert stmt.projection == ("author",)


def test_where_conditions_are_kept_in_query_order():
    stmt = parse("SELECT * FROM K WHERE a = 1 AND b > 2 AND c != 'x'")
    assert stmt.conditions == (Condition("a", "=", 1), Condition("b", ">", 2), Condition("c", "!=", "x"))


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "=", "!="])
def test_each_comparison_operator_is_parsed(op):
    assert parse(f"SELECT * FROM K WHERE a {op} 5").conditions == (Condition("a", op, 5),)


def test_operators_need_no_surrounding_spaces():
    assert parse("SELECT * FROM K WHERE a>=-1").conditions == (Condition("a", ">=", -1),)


def test_in_takes_a_list_literal():
    (cond,) = parse("SELECT * FROM K WHERE tag IN ('a', 'b', 3)").conditions
    assert cond == Condition("tag", "IN", ListLiteral(("a", "b", 3)))


def test_in_takes_a_binding():
    (cond,) = parse("SELECT * FROM K WHERE tag IN :tags").conditions
    assert cond == Condition("tag", "IN", Binding(name="tags"))


def test_list_literal_may_hold_bindings():
    (cond,) = parse("SELECT * FROM K WHERE tag IN (:1, 'b')").conditions
    assert cond.value == ListLiteral((Binding(position=1), "b"))


def test_equals_accepts_a_list_literal_as_app_engine_does():
    (cond,) = parse("SELECT * FROM K WHERE tag = (1, 2)").conditions
    assert cond == Condition("tag", "=", ListLiteral((1, 2)))


def test_ancestor_is_takes_a_key_path():
    stmt = parse("SELECT * FROM Child WHERE ANCESTOR IS KEY('Parent', 7, 'Mid', 'm') AND a = 1")
    assert stmt.ancestor == KeyLiteral(path=(("Parent", 7), ("Mid", "m")))
    assert stmt.conditions == (Condition("a", "=", 1),)


def test_ancestor_is_takes_a_binding():
    assert parse("SELECT * FROM Child WHERE ANCESTOR IS :1").ancestor == Binding(position=1)


def test_order_by_defaults_to_ascending_and_honours_asc_and_desc():
    stmt = parse("SELECT * FROM K ORDER BY a, b DESC, c ASC")
    assert stmt.orders == (Order("a", False), Order("b", True), Order("c", False))


def test_limit_alone_sets_only_the_limit():
    stmt = parse("SELECT * FROM K LIMIT 20")
    assert (stmt.limit, stmt.offset) == (20, None)


def test_limit_with_two_numbers_is_offset_then_count():
    stmt = parse("SELECT * FROM K LIMIT 5, 10")
    assert (stmt.limit, stmt.offset) == (10, 5)


def test_offset_clause_sets_the_offset():
    stmt = parse("SELECT * FROM K LIMIT 10 OFFSET 30")
    assert (stmt.limit, stmt.offset) == (10, 30)


def test_offset_without_limit():
    stmt = parse("SELECT * FROM K OFFSET 3")
    assert (stmt.limit, stmt.offset) == (None, 3)


def test_limit_and_offset_may_be_bindings():
    stmt = parse("SELECT * FROM K LIMIT :n OFFSET :2")
    assert (stmt.limit, stmt.offset) == (Binding(name="n"), Binding(position=2))


def test_every_clause_together():
    stmt = parse("SELECT DISTINCT a, b FROM K WHERE a > 1 AND ANCESTOR IS :p "
                 "ORDER BY a DESC LIMIT 2, 3")
    assert stmt == GqlStatement(
        kind="K", keys_only=False, projection=("a", "b"), distinct=True,
        conditions=(Condition("a", ">", 1),), ancestor=Binding(name="p"),
        orders=(Order("a", True),), limit=3, offset=2)


def test_keywords_are_case_insensitive():
    lower = parse("select distinct a from K where a in (1) and ancestor is key('P', 1) "
                  "order by a desc limit 1, 2")
    upper = parse("SELECT DISTINCT a FROM K WHERE a IN (1) AND ANCESTOR IS KEY('P', 1) "
                  "ORDER BY a DESC LIMIT 1, 2")
    assert lower == upper


def test_property_and_kind_names_keep_their_case():
    stmt = parse("SELECT * FROM MyKind WHERE Author = 'x' ORDER BY Date")
    assert stmt.kind == "MyKind"
    assert stmt.conditions[0].prop == "Author"
    assert stmt.orders[0].prop == "Date"


def test_double_quoted_names_may_hold_spaces_and_reserved_words():
    stmt = parse('SELECT "my prop" FROM "My Kind" WHERE "order" = 1 ORDER BY "my prop"')
    assert stmt.kind == "My Kind"
    assert stmt.projection == ("my prop",)
    assert stmt.conditions == (Condition("order", "=", 1),)
    assert stmt.orders == (Order("my prop", False),)


def test_dotted_property_names_are_one_name():
    (cond,) = parse("SELECT * FROM K WHERE address.city = 'Oslo'").conditions
    assert cond.prop == "address.city"


def test_kindless_query_may_filter_and_order_on_key():
    stmt = parse("SELECT __key__ WHERE __key__ > KEY('K', 5) AND ANCESTOR IS :1 ORDER BY __key__")
    assert stmt.kind is None
    assert stmt.conditions == (Condition("__key__", ">", KeyLiteral(path=(("K", 5),))),)
    assert stmt.orders == (Order("__key__", False),)


def test_whitespace_including_newlines_separates_tokens():
    stmt = parse("SELECT *\n  FROM K\n  WHERE a = 1\n\tORDER BY a")
    assert stmt.conditions == (Condition("a", "=", 1),)
    assert stmt.orders == (Order("a", False),)


def test_statement_is_immutable():
    stmt = parse("SELECT * FROM K")
    with pytest.raises(dataclasses.FrozenInstanceError):
        stmt.kind = "Other"  # type: ignore[misc]


# -- values ------------------------------------------------------------------


def test_single_quoted_string_unescapes_doubled_quotes():
    assert _value("'it''s'") == "it's"


def test_double_quoted_string_is_a_string_value():
    assert _value('"say ""hi"""') == 'say "hi"'


@pytest.mark.parametrize(("literal", "expected"), [
    ("42", 42), ("-3", -3), ("0", 0),
    ("1.5", 1.5), ("-2.0", -2.0), ("1e3", 1000.0), (".5", 0.5), ("-.25", -0.25), ("2.5E-1", 0.25),
])
def test_numbers_parse_as_int_or_float(literal, expected):
    value = _value(literal)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("literal", "expected"), [("TRUE", True), ("false", False), ("Null", None)])
def test_true_false_and_null_constants(literal, expected):
    assert _value(literal) is expected


def test_key_path_form_takes_ids_and_names():
    assert _value("KEY('Parent', 1, 'Child', 'c1')") == KeyLiteral(path=(("Parent", 1), ("Child", "c1")))


def test_key_with_one_string_is_an_encoded_key():
    assert _value("KEY('agVteWFwcHIKCxIES2luZBgBDA')") == KeyLiteral(encoded="agVteWFwcHIKCxIES2luZBgBDA")


def test_user_takes_an_email():
    assert _value("USER('alice@example.com')") == UserLiteral("alice@example.com")


def test_geopt_takes_latitude_and_longitude_as_floats():
    value = _value("GEOPT(-33.9, 151)")
    assert value == GeoPtLiteral(-33.9, 151.0)
    assert isinstance(value.lon, float)


def test_datetime_from_integers():
    assert _value("DATETIME(2024, 2, 29, 13, 5, 9)") == datetime.datetime(2024, 2, 29, 13, 5, 9)


def test_datetime_from_string():
    assert _value("DATETIME('2024-02-29 13:05:09')") == datetime.datetime(2024, 2, 29, 13, 5, 9)


def test_datetime_string_may_carry_fractional_seconds():
    assert _value("DATETIME('2024-02-29 13:05:09.25')") == datetime.datetime(2024, 2, 29, 13, 5, 9, 250000)


def test_date_from_integers():
    assert _value("DATE(2023, 12, 31)") == datetime.date(2023, 12, 31)


def test_date_from_string():
    assert _value("DATE('2023-12-31')") == datetime.date(2023, 12, 31)


def test_time_from_integers():
    assert _value("TIME(23, 59, 1)") == datetime.time(23, 59, 1)


def test_time_from_string():
    assert _value("TIME('23:59:01')") == datetime.time(23, 59, 1)


def test_literal_function_names_are_case_insensitive():
    assert _value("date('2023-12-31')") == datetime.date(2023, 12, 31)


def test_function_names_are_not_reserved_as_property_names():
    (cond,) = parse("SELECT * FROM K WHERE date = DATE(2023, 1, 2)").conditions
    assert cond.prop == "date"


# -- bindings ----------------------------------------------------------------


def test_bindings_reports_positional_numbers_and_names():
    stmt = parse("SELECT * FROM K WHERE a = :1 AND b IN (:3, :x) AND ANCESTOR IS :p LIMIT :2 OFFSET :o")
    assert stmt.bindings() == ({1, 2, 3}, {"x", "p", "o"})


def test_binding_needs_exactly_one_of_position_and_name():
    with pytest.raises(ValueError, match="exactly one of position and name"):
        Binding(position=1, name="x")


def test_parse_once_bind_twice_gives_different_queries():
    stmt = parse("SELECT * FROM K WHERE a = :1 AND b = :who LIMIT :2")
    first = bind(stmt, [1, 10], {"who": "ann"})
    second = bind(stmt, [2, 20], {"who": "bob"})
    assert first.conditions == (Condition("a", "=", 1), Condition("b", "=", "ann"))
    assert second.conditions == (Condition("a", "=", 2), Condition("b", "=", "bob"))
    assert (first.limit, second.limit) == (10, 20)
    assert stmt.conditions[0].value == Binding(position=1)


def test_bind_copies_the_unbound_fields():
    stmt = parse("SELECT DISTINCT a FROM K ORDER BY a DESC LIMIT 3, 4")
    assert bind(stmt) == BoundQuery(kind="K", keys_only=False, projection=("a",), distinct=True,
                                    conditions=(), ancestor=None, orders=(Order("a", True),),
                                    limit=4, offset=3)


def test_bound_list_for_in_becomes_a_tuple():
    bound = bind(parse("SELECT * FROM K WHERE a IN :1"), [[1, 2]])
    assert bound.conditions[0].value == (1, 2)


def test_list_literal_binds_to_a_tuple_with_its_bindings_resolved():
    bound = bind(parse("SELECT * FROM K WHERE a IN (:1, 'b', :c)"), ["x"], {"c": 3})
    assert bound.conditions[0].value == ("x", "b", 3)


def test_bound_list_for_equals_becomes_a_tuple():
    bound = bind(parse("SELECT * FROM K WHERE a = :1"), [[1, 2]])
    assert bound.conditions[0].value == (1, 2)


def test_bound_arguments_are_passed_through_unconverted():
    marker = object()
    bound = bind(parse("SELECT * FROM K WHERE a = :1 AND ANCESTOR IS :2"), [marker, "key-object"])
    assert bound.conditions[0].value is marker
    assert bound.ancestor == "key-object"


def test_literals_stay_literal_dataclasses_after_bind():
    bound = bind(parse("SELECT * FROM K WHERE ANCESTOR IS KEY('P', 1) AND u = USER('a@b.c')"))
    assert bound.ancestor == KeyLiteral(path=(("P", 1),))
    assert bound.conditions[0].value == UserLiteral("a@b.c")


def test_limit_and_offset_bindings_resolve_to_ints():
    bound = bind(parse("SELECT * FROM K LIMIT :1 OFFSET :off"), [5], {"off": 0})
    assert (bound.limit, bound.offset) == (5, 0)


def test_missing_positional_argument_is_named():
    err = _bind_error("SELECT * FROM K WHERE a = :1 AND b = :2", [1])
    assert str(err) == "GQL: missing argument :2"
    assert err.token == ":2"


def test_missing_named_argument_is_named():
    err = _bind_error("SELECT * FROM K WHERE a = :name", named={})
    assert str(err) == "GQL: missing argument :name"


def test_unused_positional_argument_is_an_error():
    err = _bind_error("SELECT * FROM K WHERE a = :1", [1, 2, 3])
    assert str(err) == "GQL: unused argument :2"


def test_unused_named_argument_is_an_error():
    err = _bind_error("SELECT * FROM K WHERE a = :1", [1], {"extra": 1})
    assert str(err) == "GQL: unused argument :extra"


def test_in_bound_to_a_non_list_is_an_error():
    err = _bind_error("SELECT * FROM K WHERE a IN :1", [5])
    assert str(err) == "GQL: IN needs a list or tuple for :1, got int"


def test_limit_bound_to_a_non_int_is_an_error():
    err = _bind_error("SELECT * FROM K LIMIT :1", ["10"])
    assert str(err) == "GQL: LIMIT needs a non-negative integer for :1, got '10'"


def test_limit_bound_to_a_bool_is_an_error():
    err = _bind_error("SELECT * FROM K LIMIT :1", [True])
    assert "LIMIT needs a non-negative integer for :1" in str(err)


def test_offset_bound_to_a_negative_int_is_an_error():
    err = _bind_error("SELECT * FROM K OFFSET :n", named={"n": -1})
    assert str(err) == "GQL: OFFSET needs a non-negative integer for :n, got -1"


def test_gql_errors_are_bad_requests():
    assert issubclass(BindingError, GqlError)
    assert issubclass(GqlError, BadRequestError)


# -- parse errors: each names the position and the offending token -------------


def test_error_unexpected_token_after_conditions():
    err = _parse_error("SELECT * FROM Kind WHERE a = 1 ORDERR BY a")
    assert (err.position, err.token) == (31, "ORDERR")
    assert str(err) == "GQL: unexpected token 'ORDERR' at position 31"


def test_error_misspelt_clause_keyword():
    err = _parse_error("SELECT * FROM Kind WHER a = 1")
    assert str(err) == "GQL: unexpected token 'WHER' at position 19"


def test_error_query_must_start_with_select():
    err = _parse_error("SELCT * FROM K")
    assert str(err) == "GQL: expected SELECT at position 0 near 'SELCT'"


def test_error_empty_query():
    err = _parse_error("")
    assert (err.position, err.token) == (0, "")
    assert str(err) == "GQL: expected SELECT at position 0 near end of query"


def test_error_unterminated_string():
    err = _parse_error("SELECT * FROM K WHERE a = 'it''s")
    assert (err.position, err.token) == (26, "'it''s")
    assert str(err).startswith("GQL: unterminated string at position 26 near ")


def test_error_trailing_semicolon():
    err = _parse_error("SELECT * FROM K;")
    assert str(err) == "GQL: unexpected character ';' at position 15"


def test_error_ancestor_given_twice():
    query = "SELECT * FROM K WHERE ANCESTOR IS :1 AND ANCESTOR IS :2"
    err = _parse_error(query)
    assert str(err) == "GQL: ANCESTOR IS given twice at position 41 near 'ANCESTOR'"


def test_error_ancestor_needs_a_key_or_binding():
    err = _parse_error("SELECT * FROM K WHERE ANCESTOR IS 'parent'")
    assert str(err) == "GQL: ANCESTOR IS needs KEY(...) or a binding at position 34 near \"'parent'\""


def test_error_distinct_needs_a_projection_list():
    err = _parse_error("SELECT DISTINCT * FROM K")
    assert str(err) == "GQL: DISTINCT needs a projection list at position 7 near 'DISTINCT'"


def test_error_distinct_keys_only():
    err = _parse_error("SELECT DISTINCT __key__ FROM K")
    assert (err.position, err.token) == (7, "DISTINCT")


def test_error_key_mixed_into_projection():
    err = _parse_error("SELECT a, __key__ FROM K")
    assert str(err) == "GQL: __key__ cannot be combined with other properties at position 7 near 'a'"


def test_error_property_projected_twice():
    err = _parse_error("SELECT a, b, a FROM K")
    assert str(err) == "GQL: property 'a' is projected twice at position 13"


def test_error_projection_without_from():
    err = _parse_error("SELECT a WHERE __key__ = :1")
    assert str(err) == "GQL: a projection needs FROM <kind> at position 9 near 'WHERE'"


def test_error_reserved_word_as_property_name():
    err = _parse_error("SELECT FROM K")
    assert str(err) == "GQL: expected a property name, * or __key__ at position 7 near 'FROM'"


def test_error_missing_kind_after_from():
    err = _parse_error("SELECT * FROM WHERE a = 1")
    assert str(err) == "GQL: expected a kind name at position 14 near 'WHERE'"


def test_error_empty_quoted_name():
    err = _parse_error('SELECT * FROM ""')
    assert str(err) == "GQL: a quoted name cannot be empty at position 14 near '\"\"'"


def test_error_kindless_query_filters_on_a_property():
    err = _parse_error("SELECT * WHERE name = 'x'")
    assert str(err) == "GQL: a kindless query can only filter and order on __key__ at position 15 near 'name'"


def test_error_kindless_query_orders_on_a_property():
    err = _parse_error("SELECT * ORDER BY name")
    assert (err.position, err.token) == (18, "name")


def test_error_missing_operator():
    err = _parse_error("SELECT * FROM K WHERE a 1")
    assert str(err) == "GQL: expected an operator (<, <=, >, >=, =, !=, IN) at position 24 near '1'"


def test_error_missing_value_at_end_of_query():
    err = _parse_error("SELECT * FROM K WHERE a =")
    assert (err.position, err.token) == (25, "")
    assert str(err) == "GQL: expected a value at position 25 near end of query"


def test_error_bare_identifier_is_not_a_value():
    err = _parse_error("SELECT * FROM K WHERE a = b")
    assert str(err) == "GQL: expected a value at position 26 near 'b'"


def test_error_order_without_by():
    err = _parse_error("SELECT * FROM K ORDER a")
    assert str(err) == "GQL: expected BY at position 22 near 'a'"


def test_error_in_needs_a_list_or_binding():
    err = _parse_error("SELECT * FROM K WHERE a IN 5")
    assert str(err) == "GQL: IN needs a list or a binding at position 27 near '5'"


def test_error_list_with_an_inequality():
    err = _parse_error("SELECT * FROM K WHERE a < (1, 2)")
    assert str(err) == "GQL: a list can only be compared with IN or =, not < at position 26 near '('"


def test_error_nested_list():
    err = _parse_error("SELECT * FROM K WHERE a IN (1, (2))")
    assert (err.position, err.token) == (31, "(")


def test_error_unclosed_list():
    err = _parse_error("SELECT * FROM K WHERE a IN (1, 2")
    assert str(err) == "GQL: expected ')' at position 32 near end of query"


def test_error_key_property_compared_with_a_plain_value():
    err = _parse_error("SELECT * FROM K WHERE __key__ = 'abc'")
    assert (err.position, err.token) == (32, "'abc'")
    assert "__key__ can only be compared with KEY(...) values or bindings" in str(err)


def test_error_negative_limit():
    err = _parse_error("SELECT * FROM K LIMIT -1")
    assert str(err) == "GQL: LIMIT needs a non-negative integer or a binding at position 22 near '-1'"


def test_error_float_offset():
    err = _parse_error("SELECT * FROM K OFFSET 1.5")
    assert str(err) == "GQL: OFFSET needs a non-negative integer or a binding at position 23 near '1.5'"


def test_error_offset_given_twice():
    err = _parse_error("SELECT * FROM K LIMIT 1, 2 OFFSET 3")
    assert (err.position, err.token) == (27, "OFFSET")
    assert str(err).startswith("GQL: offset given twice")


def test_error_clauses_out_of_order():
    err = _parse_error("SELECT * FROM K LIMIT 1 WHERE a = 1")
    assert str(err) == "GQL: unexpected token 'WHERE' at position 24"


def test_error_positional_binding_zero():
    err = _parse_error("SELECT * FROM K WHERE a = :0")
    assert isinstance(err, BindingError)
    assert str(err) == "GQL: positional bindings start at :1 at position 26 near ':0'"


def test_error_invalid_datetime_components():
    err = _parse_error("SELECT * FROM K WHERE t = DATETIME(2023, 2, 29, 0, 0, 0)")
    assert (err.position, err.token) == (26, "DATETIME")
    assert "DATETIME is not a valid value: day is out of range for month" in str(err)


def test_error_datetime_with_a_float_component():
    err = _parse_error("SELECT * FROM K WHERE t = DATETIME(2023, 2, 1, 0, 0, 1.5)")
    assert str(err) == "GQL: DATETIME arguments must be integers at position 53 near '1.5'"


def test_error_date_string_in_the_wrong_format():
    err = _parse_error("SELECT * FROM K WHERE d = DATE('31/12/2023')")
    assert str(err) == ("GQL: DATE needs 3 integers or one string 'YYYY-MM-DD' "
                        "at position 31 near \"'31/12/2023'\"")


def test_error_time_with_too_few_arguments():
    err = _parse_error("SELECT * FROM K WHERE t = TIME(1, 2)")
    assert (err.position, err.token) == (26, "TIME")


def test_error_geopt_latitude_out_of_range():
    err = _parse_error("SELECT * FROM K WHERE g = GEOPT(90.5, 0)")
    assert str(err) == "GQL: GEOPT latitude must be within [-90, 90] at position 32 near '90.5'"


def test_error_geopt_longitude_out_of_range():
    err = _parse_error("SELECT * FROM K WHERE g = GEOPT(0, -181)")
    assert str(err) == "GQL: GEOPT longitude must be within [-180, 180] at position 35 near '-181'"


def test_error_key_with_an_odd_number_of_path_arguments():
    err = _parse_error("SELECT * FROM K WHERE ANCESTOR IS KEY('P', 1, 'C')")
    assert str(err) == ("GQL: KEY needs an encoded key string or pairs of kind and id or name "
                        "at position 34 near 'KEY'")


def test_error_key_with_a_zero_id():
    err = _parse_error("SELECT * FROM K WHERE ANCESTOR IS KEY('P', 0)")
    assert (err.position, err.token) == (43, "0")


def test_error_key_with_a_non_string_kind():
    err = _parse_error("SELECT * FROM K WHERE ANCESTOR IS KEY(1, 2)")
    assert str(err) == "GQL: KEY path kinds must be non-empty strings at position 38 near '1'"


def test_error_user_without_an_email_string():
    err = _parse_error("SELECT * FROM K WHERE u = USER(5)")
    assert str(err) == "GQL: USER needs one non-empty email string at position 26 near 'USER'"


def test_error_function_argument_that_is_not_a_literal():
    err = _parse_error("SELECT * FROM K WHERE d = DATE(:1)")
    assert str(err) == "GQL: expected a string or number argument at position 31 near ':1'"


def test_error_function_name_without_parentheses():
    err = _parse_error("SELECT * FROM K WHERE d = DATE")
    assert str(err) == "GQL: expected '(' at position 30 near end of query"
