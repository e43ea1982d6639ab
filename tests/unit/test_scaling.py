"""The instance manager's scaling rule: utilization, App Engine's pending-latency bounds, min/max instances."""

from __future__ import annotations

from kiln_platform import appyaml
from runtime.manager import Scaling


def scaling(auto: str = "", threadsafe: str = "true") -> Scaling:
    text = (f"runtime: python27\napi_version: 1\nthreadsafe: {threadsafe}\n" +
            (f"automatic_scaling:\n{auto}" if auto else "") + "handlers:\n- url: /.*\n  script: main.app\n")
    return Scaling.from_app(appyaml.parse(text, filename="app.yaml"))


def test_utilization_adds_instances_up_to_the_maximum():
    s = scaling("  max_concurrent_requests: 10\n  target_throughput_utilization: 0.5\n  max_instances: 3\n")
    assert s.wanted(4, current=1, pending_seconds=0) == 1
    assert s.wanted(6, current=1, pending_seconds=0) == 2
    assert s.wanted(100, current=1, pending_seconds=0) == 3


def test_min_instances_hold_even_without_load():
    assert scaling("  min_instances: 2\n").wanted(0, current=2, pending_seconds=0) == 2


def test_min_pending_latency_holds_new_instances_back_until_requests_wait_that_long():
    s = scaling("  min_pending_latency: 2s\n", threadsafe="false")
    assert s.wanted(3, current=1, pending_seconds=0.5) == 1
    assert s.wanted(3, current=1, pending_seconds=2.5) == 5  # 3 / (1 * 0.6), rounded up


def test_max_pending_latency_adds_an_instance_whatever_the_utilization():
    s = scaling("  max_pending_latency: 100ms\n  target_throughput_utilization: 0.95\n")
    assert s.wanted(2, current=1, pending_seconds=0.05) == 1
    assert s.wanted(2, current=1, pending_seconds=0.2) == 2


def test_one_request_at_a_time_when_not_threadsafe():
    assert scaling(threadsafe="false").max_concurrent_requests == 1


def manual_or_basic(block: str) -> Scaling:
    text = ("runtime: python27\napi_version: 1\nthreadsafe: true\n" + block +
            "handlers:\n- url: /.*\n  script: main.app\n")
    return Scaling.from_app(appyaml.parse(text, filename="app.yaml"))


def test_manual_scaling_keeps_exactly_its_instances():
    s = manual_or_basic("manual_scaling:\n  instances: 3\n")
    assert (s.min_instances, s.max_instances) == (3, 3)
    assert s.wanted(100, current=3, pending_seconds=9) == 3


def test_basic_scaling_bounds_instances_and_idles_them_out():
    s = manual_or_basic("basic_scaling:\n  max_instances: 4\n  idle_timeout: 10m\n")
    assert (s.max_instances, s.idle_seconds) == (4, 600.0)
