"""The router's dispatch tables (router/dispatch.py): where a rule sends a request, and the copy in the cache
directory a router started later reads before the control plane answers."""

from __future__ import annotations

import pathlib
from typing import cast

from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln_platform import dispatchyaml
from kiln_platform.deployclient import VersionSource
from router.dispatch import Dispatch, Table
from router.hosts import Target

RULES = "dispatch:\n- url: '*/api/*'\n  service: api\n- url: '*/old/*'\n  service: gone\n"


def table(services: dict[str, str]) -> Table:
    return Table("shop", dispatchyaml.parse(RULES), services, 1)


def offline(cache: pathlib.Path) -> Dispatch:
    """A Dispatch that never reaches a control plane (these tests only apply answers and read the cache)."""
    return Dispatch(cast(VersionSource, None), cache, {})


def test_a_matching_rule_picks_the_version_serving_its_service():
    assert table({"api": "a7", "default": "v1"}).route(Target("shop", "v1"), "shop.x", "/api/q") == Target("shop", "a7")


def test_a_rule_whose_service_has_no_version_left_takes_the_default_routing():
    assert table({"default": "v1"}).route(Target("shop", "v1"), "shop.x", "/old/q") == Target("shop", "v1")


def test_a_request_no_rule_matches_keeps_its_target():
    assert table({"api": "a7"}).route(Target("shop", "v1"), "shop.x", "/other") == Target("shop", "v1")


def test_rules_one_router_saw_are_read_by_a_router_started_later(tmp_path):
    offline(tmp_path).apply("shop", pb.GetDispatchResponse(dispatch_yaml=RULES, generation=3,
                                                           services={"api": "a7"}), save=True)
    later = offline(tmp_path)
    later.load_cache()
    assert later.tables["shop"].generation == 3
    assert later.tables["shop"].route(Target("shop", "v1"), "shop.x", "/api/q") == Target("shop", "a7")


def test_removed_rules_are_removed_from_the_cache_too(tmp_path):
    first = offline(tmp_path)
    first.apply("shop", pb.GetDispatchResponse(dispatch_yaml=RULES, generation=1), save=True)
    first.apply("shop", pb.GetDispatchResponse(dispatch_yaml="", generation=2), save=True)
    assert "shop" not in first.tables
    later = offline(tmp_path)
    later.load_cache()
    assert later.tables == {}


def test_a_damaged_cached_copy_is_ignored(tmp_path):
    (tmp_path / "dispatch").mkdir()
    (tmp_path / "dispatch" / "shop.pb").write_bytes(b"\xff\xff not a message")
    later = offline(tmp_path)
    later.load_cache()
    assert later.tables == {}
