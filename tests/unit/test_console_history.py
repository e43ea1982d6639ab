"""The dashboard's history (console/history.py): rates and percentiles from scraped counters and buckets, and
how it reads untrusted metrics text. Pages are made by kiln's own metric classes (kiln_platform/metrics.py) in a
registry of the test's, so the text is exactly what the router and the manager serve."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from console import history
from console.history import History, quantile
from kiln_platform import metrics

APP = "shop"


class Router:
    """A router's metrics page: kiln's router table in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.table = metrics.Table(("app", "version"), "status_class",
                                   ("kiln_router_requests", "kiln_router_request_seconds",
                                    "kiln_router_requests_waiting"), ("a", "b", "c"))
        self.registry.register(self.table)
        self.observed = metrics.RouterMetrics(self.table)

    def requests(self, n: int, *, status: int = 200, seconds: float = 0.003, version: str = "v1",
                 app: str = APP) -> None:
        for _ in range(n):
            self.observed.observe((app, version), status, seconds)

    def page(self) -> str:
        return generate_latest(self.registry).decode()


def _manager_page(instances: dict[str, int], memory: int, *, version: str = "v1") -> str:
    registry = CollectorRegistry()
    gauge = Gauge("kiln_runtime_instances", "x", ("app", "version", "state"), registry=registry)
    for state, n in instances.items():
        gauge.labels(APP, version, state).set(n)
    Gauge("kiln_runtime_instance_memory_bytes", "x", ("app", "version"), registry=registry).labels(
        APP, version).set(memory)
    return generate_latest(registry).decode()


def test_a_quantile_interpolates_linearly_inside_the_bucket_holding_its_rank():
    buckets = {0.1: 10, 0.2: 20, math.inf: 20}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.25, buckets) == pytest.approx(0.05)  # the first bucket starts at 0


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound():
    assert quantile(0.99, {0.1: 1, 0.2: 2, math.inf: 10}) == 0.2


def test_a_quantile_without_observations_is_unknown():
    assert quantile(0.5, {0.1: 0, math.inf: 0}) is None
    assert quantile(0.5, {0.1: 3}) is None  # no +Inf bucket: not a whole histogram


def test_the_first_scrape_gives_no_rate_but_the_second_does():
    router, hist = Router(), History(APP, points=10)
    router.requests(5)
    hist.add(100.0, {"r": router.page()})
    assert hist.series("v1")["rps"] == [None]
    router.requests(15)
    router.requests(3, status=503)
    router.requests(2, status=404)
    hist.add(110.0, {"r": router.page()})
    series = hist.series("v1")
    assert series["time"] == [100.0, 110.0]
    assert series["rps"][1] == pytest.approx(2.0)
    assert series["errors_5xx"][1] == pytest.approx(0.3)
    assert series["errors_4xx"][1] == pytest.approx(0.2)


def test_a_version_first_seen_after_a_scrape_counts_all_its_requests():
    router, hist = Router(), History(APP, points=10)
    router.requests(1, version="old")
    hist.add(0.0, {"r": router.page()})
    router.requests(20, version="new")
    hist.add(10.0, {"r": router.page()})
    assert hist.series("new")["rps"] == [None, pytest.approx(2.0)]


def test_a_counter_that_went_down_was_reset_and_counts_its_new_value():
    before, after, hist = Router(), Router(), History(APP, points=10)
    before.requests(100)
    hist.add(0.0, {"r": before.page()})
    after.requests(4)  # the router restarted: its counters start again from 0
    hist.add(2.0, {"r": after.page()})
    assert hist.series("v1")["rps"][1] == pytest.approx(2.0)
    assert history.increase(100, 4) == 4 and history.increase(None, 7) == 7 and history.increase(3, 10) == 7


def test_the_increases_of_several_processes_add_up():
    one, two, hist = Router(), Router(), History(APP, points=10)
    hist.add(0.0, {"w1": one.page(), "w2": two.page()})
    one.requests(10)
    two.requests(30)
    hist.add(10.0, {"w1": one.page(), "w2": two.page()})
    assert hist.series("v1")["rps"][1] == pytest.approx(4.0)


def test_percentiles_come_from_the_requests_since_the_previous_scrape_only():
    router, hist = Router(), History(APP, points=10)
    router.requests(1000, seconds=0.0007)  # fast ones before the first scrape
    hist.add(0.0, {"r": router.page()})
    router.requests(10, seconds=0.3)  # 0.3 s falls in the (0.25, 0.5] bucket
    hist.add(10.0, {"r": router.page()})
    series = hist.series("v1")
    assert 0.25 < series["p50"][1] <= 0.5
    assert 0.25 < series["p99"][1] <= 0.5
    assert series["p50"][1] < series["p95"][1] < series["p99"][1]


def test_no_requests_in_an_interval_is_zero_per_second_and_no_percentile():
    router, hist = Router(), History(APP, points=10)
    router.requests(3)
    hist.add(0.0, {"r": router.page()})
    hist.add(10.0, {"r": router.page()})
    series = hist.series("v1")
    assert series["rps"][1] == 0.0 and series["errors_5xx"][1] == 0.0
    assert series["p50"][1] is None


def test_instances_and_memory_are_the_last_scraped_gauges_summed_over_managers():
    hist = History(APP, points=10)
    hist.add(0.0, {"m1": _manager_page({"serving": 2, "starting": 1}, 50 << 20),
                   "m2": _manager_page({"serving": 1, "stopping": 1}, 30 << 20)})
    series = hist.series("v1")
    assert (series["serving"], series["starting"], series["stopping"]) == ([3.0], [1.0], [1.0])
    assert series["memory"] == [float(80 << 20)]


def test_malformed_lines_are_skipped_and_the_rest_of_the_page_is_read():
    router, hist = Router(), History(APP, points=10)
    hist.add(0.0, {"r": router.page()})
    router.requests(10)
    garbage = ('kiln_router_requests_total{app="shop",version="v1",status_class="2xx} 999\n'
               'kiln_router_requests_total{app="shop",version="v1",status_class="4xx"} lots\n'
               'kiln_router_requests_total{app="shop",version="v2",status_class="2xx"} -5\n'
               'kiln_router_request_seconds_bucket{app="shop",version="v1",le="soon"} 3\n'
               '\x00\xff{{{\n# TYPE broken\n')
    hist.add(10.0, {"r": garbage + router.page() + garbage})
    assert hist.series("v1")["rps"][1] == pytest.approx(1.0)
    assert hist.versions() == ["v1"]


def test_other_apps_other_metrics_and_oversized_labels_are_ignored():
    text = ('kiln_router_requests_total{app="other",version="v1",status_class="2xx"} 5\n'
            'kiln_grpc_requests_total{service="s",method="m",code="OK"} 5\n'
            f'kiln_router_requests_total{{app="shop",version="{"v" * 500}",status_class="2xx"}} 5\n'
            'kiln_router_requests_total{app="shop",version="v1",status_class="2xx"} 5\n')
    assert history.parse(text, APP) == {(history.REQUESTS, "v1", "2xx"): 5.0}


def test_the_lines_read_from_one_page_are_capped():
    lines = "".join(f'kiln_runtime_instances{{app="shop",version="v{i}",state="serving"}} 1\n'
                    for i in range(history.MAX_SERIES + 50))
    assert len(history.parse(lines, APP)) == history.MAX_SERIES


def test_the_versions_plotted_are_capped_and_the_first_seen_stay():
    hist = History(APP, points=10)
    first = {f"v{i:02}": 1 for i in range(history.MAX_VERSIONS)}
    page = "".join(f'kiln_runtime_instances{{app="shop",version="{v}",state="serving"}} 1\n' for v in first)
    hist.add(0.0, {"m": page})
    hist.add(1.0, {"m": page + 'kiln_runtime_instances{app="shop",version="a-new-one",state="serving"} 1\n'})
    assert hist.versions() == list(first)


def test_the_points_kept_are_capped():
    hist = History(APP, points=3)
    for second in range(10):
        hist.add(float(second), {"m": _manager_page({"serving": second}, 0)})
    series = hist.series("v1")
    assert series["time"] == [7.0, 8.0, 9.0]
    assert series["serving"] == [7.0, 8.0, 9.0]


def test_a_failed_scrape_leaves_a_gap_and_the_next_page_starts_a_new_baseline():
    router, hist = Router(), History(APP, points=10)
    hist.add(0.0, {"r": router.page()})
    router.requests(50)
    hist.add(10.0, {"r": None})
    router.requests(10)
    hist.add(20.0, {"r": router.page()})
    router.requests(10)
    hist.add(30.0, {"r": router.page()})
    # No point while the target failed, none right after (no baseline: 60 requests would be counted in 10 s),
    # then rates again.
    assert hist.series("v1")["rps"] == [None, None, None, pytest.approx(1.0)]


def test_the_series_since_a_time_are_the_points_after_it():
    hist = History(APP, points=10)
    for second in range(5):
        hist.add(float(second), {"m": _manager_page({"serving": second}, 0)})
    assert hist.series("v1", since=2.0)["time"] == [3.0, 4.0]
    assert hist.series("v1", since=2.0)["serving"] == [3.0, 4.0]
    assert hist.series("v1", since=9.0)["time"] == []
