"""Scale to zero's rules: how few instances a manager keeps, what a version asks of a host, and the demand names."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln_platform import bus
from kiln_platform.supervisor import Supervisor
from runtime.host import Needs
from runtime.manager import Manager, Scaling

APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"


def manager(tmp_path: pathlib.Path, *, min_instances: int = 0, scale_to_zero: bool) -> Manager:
    launch: Any = None  # floor and scaled_to_zero never launch anything
    return Manager(Supervisor(tmp_path), launch, Scaling(min_instances=min_instances), scale_to_zero=scale_to_zero)


def test_app_engines_default_is_no_instance_without_traffic():
    assert Scaling().min_instances == 0


def test_without_scale_to_zero_one_instance_is_always_kept(tmp_path):
    found = manager(tmp_path, scale_to_zero=False)
    found.ever_ready = True
    assert found.floor == 1 and not found.scaled_to_zero


def test_scale_to_zero_keeps_one_instance_until_the_first_has_served(tmp_path):
    found = manager(tmp_path, scale_to_zero=True)
    assert found.floor == 1 and not found.scaled_to_zero  # started because a request wants an instance
    found.ever_ready = True
    assert found.floor == 0 and found.scaled_to_zero  # no instance left after it served: done


def test_min_instances_are_kept_even_with_scale_to_zero(tmp_path):
    found = manager(tmp_path, min_instances=2, scale_to_zero=True)
    found.ever_ready = True
    assert found.floor == 2 and not found.scaled_to_zero


@pytest.mark.parametrize("extra, resident, memory_mb, instances", [
    ("", False, 384, 1),
    ("automatic_scaling:\n  min_instances: 1\n", True, 384, 1),
    ("instance_class: F4\n", False, 1536, 1),
    ("manual_scaling:\n  instances: 2\n", True, 768, 2),
    ("instance_class: B1\nbasic_scaling:\n  max_instances: 3\n", False, 384, 1),
])
def test_what_a_version_asks_of_a_host(extra, resident, memory_mb, instances):
    assert Needs.of(pb.Version(app_yaml=APP_YAML.replace("handlers:", extra + "handlers:"))) == \
        Needs(resident, memory_mb, instances)


def test_an_app_yaml_the_host_cannot_read_counts_as_one_f1_instance_on_demand():
    assert Needs.of(pb.Version(app_yaml="runtime: [")) == Needs(False, 384)


def test_a_demand_names_its_version_and_repeats_share_a_message_id_per_period():
    subject = bus.demand_subject("guestbook", "v2")
    assert bus.demand_of(subject) == ("guestbook", "v2")
    assert bus.demand_of("kiln.http.guestbook.v2") is None
    period = bus.DEMAND_DEDUPE_SECONDS
    assert bus.demand_message_id("guestbook", "v2", 10 * period) == bus.demand_message_id("guestbook", "v2",
                                                                                          10.5 * period)
    assert bus.demand_message_id("guestbook", "v2", 10 * period) != bus.demand_message_id("guestbook", "v2",
                                                                                          11 * period)


def test_a_demand_after_an_answered_one_is_not_a_repeat_within_the_period():
    period = bus.DEMAND_DEDUPE_SECONDS
    assert bus.demand_message_id("guestbook", "v2", 10 * period, 1) != bus.demand_message_id("guestbook", "v2",
                                                                                             10 * period, 0)
