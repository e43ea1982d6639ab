"""kiln's dispatch.yaml parser answers as Google's (``dispatchinfo``) did, recorded in
tests/fixtures/dispatch/dispatchinfo_reference.json by tests/fixtures/dispatch/record_dispatchinfo.py.

kiln refuses, when parsing, three things Google's parser lets through and App Engine's deploy refuses (its
documentation's limits): a ``*`` inside a path, a host or path over 100 characters, more than 20 rules.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from kiln_platform import dispatchyaml
from kiln_platform.appyaml import AppYamlError

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "dispatch" / "dispatchinfo_reference.json"
CASES: list[dict[str, Any]] = json.loads(FIXTURE.read_text())


def _documented_limit(case: dict[str, Any]) -> bool:
    """A case Google's parser accepts but App Engine's documented limits refuse."""
    rules = case.get("rules", [])
    return (len(rules) > dispatchyaml.MAX_RULES
            or any("*" in path or len(path) + (not exact) > dispatchyaml.MAX_PART
                   or len(host) + (not host_exact) > dispatchyaml.MAX_PART
                   for host_exact, host, exact, path, _ in rules))


def _kiln(text: str) -> list[list[Any]] | None:
    try:
        rules = dispatchyaml.parse(text)
    except AppYamlError:
        return None
    return [[r.host_exact, r.host, r.path_exact, r.path, r.service] for r in rules]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_parser_accepts_and_reads_what_google_does(case: dict[str, Any]) -> None:
    got = _kiln(case["yaml"])
    if case["accepted"] and _documented_limit(case):
        assert got is None
    elif case["accepted"]:
        assert got == case["rules"]
    else:
        assert got is None, case["error"]


def test_fixture_holds_accepted_and_refused_cases() -> None:
    assert sum(c["accepted"] for c in CASES) >= 20
    assert sum(not c["accepted"] for c in CASES) >= 20
    assert sum(_documented_limit(c) for c in CASES) >= 3
