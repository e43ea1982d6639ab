"""The dashboard's one-hour history of kiln's Prometheus metrics, and the arithmetic behind its plots (pure).

The console scrapes the router's and the instance managers' ``/metrics`` (:mod:`console.dashboard`) and gives each
page's text to :meth:`History.add`, which keeps, per version of the console's app, one point per scrape:

- requests per second, and errors per second (5xx, 4xx), from the increase of
  ``kiln_router_requests_total{app,version,status_class}`` since the previous scrape;
- latency percentiles (p50, p95, p99) of the requests answered since the previous scrape, from the increase of
  each ``kiln_router_request_seconds_bucket`` (as Prometheus' ``histogram_quantile`` does: linear interpolation
  inside the bucket that holds the rank);
- instances by state (``kiln_runtime_instances``) and their resident memory (``kiln_runtime_instance_memory_bytes``),
  as last scraped.

Increases are taken per scraped process and per series, then summed (several router workers or managers): a
counter that went down means its process restarted, and its new value is the increase (as Prometheus' ``rate``
counts it). A series a process did not have at its previous scrape counted everything since then (kiln makes a
version's series at its first request).

The scraped text is untrusted input: only the lines of the metrics above are parsed, each on its own (a malformed
line is skipped, never the page), label values are bounded in length, and the number of series per process, of
versions and of points kept are capped, so memory stays bounded whatever a page says.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "kiln_router_requests_total"
BUCKETS = "kiln_router_request_seconds_bucket"
INSTANCES = "kiln_runtime_instances"
MEMORY = "kiln_runtime_instance_memory_bytes"
WANTED = (REQUESTS, BUCKETS, INSTANCES, MEMORY)

MAX_SERIES = 5000  # lines of the wanted metrics parsed from one process's page (the rest is ignored)
MAX_VERSIONS = 20  # versions plotted (the first seen stay; others are left out until one goes)
MAX_LABEL = 100  # characters of a label value (a longer one: the line is ignored)
MAX_LINE = 2000  # characters of a line (a longer one is ignored)
QUANTILES = (0.5, 0.95, 0.99)
STATES = ("starting", "serving", "stopping")
# The figures of one point, in the order of Point's fields after the time (and of the data endpoint's arrays).
FIGURES = ("rps", "errors_5xx", "errors_4xx", "p50", "p95", "p99", "starting", "serving", "stopping", "memory")

# A series: (metric name, version, the third label's value: status class, bucket bound or state; "" if none).
Key = tuple[str, str, str]


def parse(text: str, app_id: str) -> dict[Key, float]:
    """The samples of ``app_id``'s versions in a page of metrics text, by series (see :func:`parse_apps`)."""
    return parse_apps(text, frozenset((app_id,))).get(app_id, {})


def parse_apps(text: str, app_ids: frozenset[str]) -> dict[str, dict[Key, float]]:
    """The samples of each of ``app_ids``' versions in a page of metrics text, by app, then by series (a page is
    read once for every app a cluster's console plots).

    Every other line (another metric, a comment, a malformed or oversized line, another app) is ignored; past
    :data:`MAX_SERIES` lines of the wanted metrics the rest of the page is (parsing costs tens of microseconds a
    line: a page cannot make a scrape take long).
    """
    apps: dict[str, dict[Key, float]] = {}
    read = 0
    for line in text.splitlines():
        if not line.startswith(WANTED) or len(line) > MAX_LINE:
            continue
        read += 1
        if read > MAX_SERIES:
            break
        sample = _sample(line)
        if sample is None:
            continue
        name, labels, value = sample
        app = labels.get("app", "")
        if app not in app_ids or any(len(v) > MAX_LABEL for v in labels.values()):
            continue
        version = labels.get("version", "")
        if name == REQUESTS:
            third = labels.get("status_class", "")
        elif name == BUCKETS:
            third = labels.get("le", "")
            if _bound(third) is None:
                continue
        elif name == INSTANCES:
            third = labels.get("state", "")
        else:
            third = ""
        if not version or not math.isfinite(value) or value < 0:
            continue
        key = (name, version, third)
        found = apps.setdefault(app, {})
        found[key] = found.get(key, 0.0) + value
    return apps


def _sample(line: str) -> tuple[str, dict[str, str], float] | None:
    """One line parsed by prometheus-client's parser (its name, labels and value), or None if malformed."""
    try:
        for family in text_string_to_metric_families(line + "\n"):
            for sample in family.samples:
                return sample.name, dict(sample.labels), float(sample.value)
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return None


def _bound(le: str) -> float | None:
    try:
        bound = float(le)
    except ValueError:
        return None
    return None if math.isnan(bound) else bound


def increase(before: float | None, now: float) -> float:
    """How much a counter grew from ``before`` (None: it did not exist then) to ``now``; a counter that went down
    was reset (its process restarted), so it grew by ``now``."""
    if before is None or now < before:
        return now
    return now - before


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of the observations in cumulative ``buckets`` (upper bound -> count), as Prometheus'
    ``histogram_quantile``: linear interpolation in the bucket holding rank ``q * total`` (from 0 for the first
    bucket; the highest finite bound when the rank falls in the +Inf bucket). None without observations."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    counts, running = [], 0.0
    for bound in bounds:  # cumulative counts never go down; a scrape racing a request could make them, so take max
        running = max(running, buckets[bound])
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (bound, count) in enumerate(zip(bounds, counts)):
        if count >= rank:
            if bound == math.inf:
                return bounds[-2] if len(bounds) > 1 else None
            below = counts[i - 1] if i else 0.0
            start = bounds[i - 1] if i else 0.0
            if i == 0 and bound <= 0:
                return bound
            inside = count - below
            return start + (bound - start) * ((rank - below) / inside if inside else 1.0)
    return None


@dataclasses.dataclass(frozen=True)
class Point:
    """One version's figures for one scrape (None: not known, such as a rate at the first scrape)."""

    time: float
    rps: float | None
    errors_5xx: float | None
    errors_4xx: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    starting: float | None
    serving: float | None
    stopping: float | None
    memory: float | None


class History:
    """Points per version over the last ``points`` scrapes (see the module docstring)."""

    def __init__(self, app_id: str, *, points: int) -> None:
        self.app_id = app_id
        self._ticks: collections.deque[tuple[float, dict[str, Point]]] = collections.deque(maxlen=max(points, 1))
        self._last: dict[str, dict[Key, float]] = {}  # target -> its series at its last successful scrape
        self._last_time: float | None = None

    def add(self, now: float, pages: Mapping[str, str | None]) -> None:
        """One scrape at ``now`` (seconds): each target's page of text (None: the scrape failed)."""
        self.add_parsed(now, self.parse_all(pages))

    def parse_all(self, pages: Mapping[str, str | None]) -> dict[str, dict[Key, float] | None]:
        """Each page parsed (:func:`parse`; pure, so it may run on another thread)."""
        return {target: None if text is None else parse(text, self.app_id) for target, text in pages.items()}

    def add_parsed(self, now: float, pages: Mapping[str, dict[Key, float] | None]) -> None:
        """One scrape at ``now`` (seconds): each target's parsed page (None: the scrape failed)."""
        parsed = {target: series for target, series in pages.items() if series is not None}
        dt = now - self._last_time if self._last_time is not None else 0.0
        grown: dict[Key, float] = {}  # increase of each counter series since the last scrape, summed over targets
        gauges: dict[Key, float] = {}
        for target, series in parsed.items():
            before = self._last.get(target)
            for key, value in series.items():
                if key[0] in (INSTANCES, MEMORY):
                    gauges[key] = gauges.get(key, 0.0) + value
                elif before is not None:
                    grown[key] = grown.get(key, 0.0) + increase(before.get(key), value)
        for target in pages:  # a failed scrape forgets its target: its next page starts a new baseline
            if target in parsed:
                self._last[target] = parsed[target]
            else:
                self._last.pop(target, None)
        versions = self._versions({key[1] for series in parsed.values() for key in series})
        self._ticks.append((now, {v: self._point(now, v, grown, gauges, dt) for v in versions}))
        self._last_time = now

    def _versions(self, seen: set[str]) -> list[str]:
        """The versions to plot now: those already plotted first, then new ones, :data:`MAX_VERSIONS` in all."""
        known = [v for v in self.versions() if v in seen]
        new = sorted(seen - set(known))
        return (known + new)[:MAX_VERSIONS]

    @staticmethod
    def _point(now: float, version: str, grown: Mapping[Key, float], gauges: Mapping[Key, float],
               dt: float) -> Point:
        requests = {key[2]: n for key, n in grown.items() if key[0] == REQUESTS and key[1] == version}
        rate = (lambda n: n / dt) if dt > 0 and requests else (lambda n: None)  # noqa: E731
        buckets = {_bound(key[2]): n for key, n in grown.items() if key[0] == BUCKETS and key[1] == version}
        p50, p95, p99 = (quantile(q, {b: n for b, n in buckets.items() if b is not None}) for q in QUANTILES)
        starting, serving, stopping = (gauges.get((INSTANCES, version, state)) for state in STATES)
        return Point(now, rate(sum(requests.values())), rate(requests.get("5xx", 0.0)),
                     rate(requests.get("4xx", 0.0)), p50, p95, p99, starting, serving, stopping,
                     gauges.get((MEMORY, version, "")))

    def versions(self) -> list[str]:
        """The versions with a point in the history, in the order first seen."""
        seen: dict[str, None] = {}
        for _, points in self._ticks:
            seen.update(dict.fromkeys(points))
        return list(seen)

    def series(self, version: str, since: float | None = None) -> dict[str, list[float | None]]:
        """``version``'s figures over the history (the scrapes after ``since`` only, when given): ``time``
        (seconds) and each of :data:`FIGURES`, one value per scrape (None where the version had no point)."""
        out: dict[str, list[float | None]] = {"time": []}
        for name in FIGURES:
            out[name] = []
        for now, points in self._ticks:
            if since is not None and now <= since:
                continue
            point = points.get(version)
            out["time"].append(now)
            for name in FIGURES:
                out[name].append(None if point is None else getattr(point, name))
        return out

