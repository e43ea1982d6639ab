"""The console's Dashboard (console/dashboard.py): its scraper against real HTTP servers, and the page in Debian's
Chromium against a real ``kiln dev`` whose router and instance manager it scrapes every half second."""

from __future__ import annotations

import io
import json
import re
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from playwright.sync_api import Page, expect
from prometheus_client.parser import text_string_to_metric_families

from console.dashboard import MAX_PAGE, Scraper
from deploy.dev import DevServer
from kiln_platform.config import HostPort
from tests.integration.apps import wait_for
from tests.integration.consolekit import browser, console_dev, console_request, fetch, page  # noqa: F401 - fixtures

APP = "shop"
ROUTER_PAGE = ('# TYPE kiln_router_requests_total counter\n'
               'kiln_router_requests_total{{app="shop",version="v1",status_class="2xx"}} {n}\n')


# --- the scraper against real HTTP servers ---------------------------------------------------------------------


@pytest.fixture
async def metrics_server() -> AsyncIterator[tuple[HostPort, dict[str, object]]]:
    """An HTTP server on loopback answering /metrics with what the test puts in ``state`` (body, status)."""
    state: dict[str, object] = {"body": ROUTER_PAGE.format(n=0), "status": 200}

    async def metrics(request: web.Request) -> web.Response:
        body = io.BytesIO(str(state["body"]).encode())  # a stream: aiohttp warns of a large body given whole
        return web.Response(body=body, status=int(str(state["status"])), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield HostPort("127.0.0.1", port), state
    await runner.cleanup()


async def test_the_scraper_turns_a_real_page_into_rates(metrics_server):
    target, state = metrics_server
    scraper = Scraper(APP, (target,), interval=1.0)
    async with aiohttp.ClientSession() as session:
        await scraper.scrape(session)
        state["body"] = ROUTER_PAGE.format(n=500)
        await scraper.scrape(session)
    series = scraper.history.series("v1")
    elapsed = series["time"][1] - series["time"][0]
    assert series["rps"][1] == pytest.approx(500 / elapsed)
    assert scraper.errors == {}


async def test_one_scraper_keeps_each_apps_versions_apart(metrics_server):
    target, state = metrics_server
    scraper = Scraper((APP, "other"), (target,), interval=1.0)
    page = ROUTER_PAGE + 'kiln_router_requests_total{{app="other",version="v9",status_class="2xx"}} {m}\n'
    async with aiohttp.ClientSession() as session:
        state["body"] = page.format(n=0, m=0)
        await scraper.scrape(session)
        state["body"] = page.format(n=10, m=700)
        await scraper.scrape(session)
    assert scraper.histories[APP].versions() == ["v1"] and scraper.histories["other"].versions() == ["v9"]
    shop, other = scraper.histories[APP].series("v1"), scraper.histories["other"].series("v9")
    elapsed = shop["time"][1] - shop["time"][0]
    assert shop["rps"][1] == pytest.approx(10 / elapsed) and other["rps"][1] == pytest.approx(700 / elapsed)


async def test_a_page_longer_than_the_limit_fails_its_scrape_and_says_why(metrics_server):
    target, state = metrics_server
    scraper = Scraper(APP, (target,), interval=1.0)
    state["body"] = ROUTER_PAGE.format(n=1) + "#" * MAX_PAGE
    async with aiohttp.ClientSession() as session:
        await scraper.scrape(session)
    assert scraper.errors == {f"http://{target}/metrics": f"page longer than {MAX_PAGE} bytes"}
    assert scraper.history.versions() == []


async def test_an_error_status_fails_the_scrape_and_the_next_good_page_clears_it(metrics_server):
    target, state = metrics_server
    scraper = Scraper(APP, (target,), interval=1.0)
    state["status"] = 500
    async with aiohttp.ClientSession() as session:
        await scraper.scrape(session)
        assert scraper.errors == {f"http://{target}/metrics": "HTTP 500"}
        state["status"] = 200
        await scraper.scrape(session)
    assert scraper.errors == {}
    assert scraper.history.versions() == ["v1"]


async def test_a_target_nobody_listens_on_is_reported_and_the_others_still_read(metrics_server):
    target, _ = metrics_server
    with socket.socket() as unused:  # a port bound but not listening: connections are refused
        unused.bind(("127.0.0.1", 0))
        dead = HostPort("127.0.0.1", unused.getsockname()[1])
        scraper = Scraper(APP, (dead, target), interval=1.0)
        async with aiohttp.ClientSession() as session:
            await scraper.scrape(session)
    assert list(scraper.errors) == [f"http://{dead}/metrics"]
    assert scraper.history.versions() == ["v1"]


# --- the page against a real kiln dev ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory) -> Iterator[DevServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KILN_CONSOLE_METRICS_SCRAPE_SECONDS", "0.5")  # the console reads it from its environment
        with console_dev(tmp_path_factory.mktemp("dashboard") / "app") as server:
            yield server


def dashboard_data(dev: DevServer) -> dict[str, object]:
    status, headers, body = console_request(dev, "GET", "/dashboard/data")
    assert status == 200 and headers["content-type"].startswith("application/json")
    data: dict[str, object] = json.loads(body)
    return data


def counted(data: dict[str, object], figure: str) -> float:
    """How many events a per-second series counts over the history (each rate times its interval)."""
    series = data["series"]
    if not isinstance(series, dict):
        return 0.0
    times, rates = series["time"], series[figure]
    return sum(rate * (times[i] - times[i - 1]) for i, rate in enumerate(rates) if i and rate is not None)


def settled(dev: DevServer) -> dict[str, object]:
    """The data once two more scrapes have happened (everything sent before is counted then)."""
    start = int(str(dashboard_data(dev)["scrapes"]))
    wait_for(lambda: int(str(dashboard_data(dev)["scrapes"])) >= start + 2, 30)
    return dashboard_data(dev)


@pytest.mark.nats
def test_kiln_dev_serves_the_router_and_manager_metrics_the_console_scrapes(dev):
    assert set(dev.metrics_addresses) == {"router", "manager"}  # without --metrics-port: the dashboard's parts
    data = settled(dev)
    assert data["configured"] is True and data["errors"] == {}
    assert data["versions"] == [dev.version_id]


@pytest.mark.nats
def test_the_dashboard_counts_every_request_sent_to_the_app(dev):
    before = settled(dev)
    for i in range(30):
        fetch(dev, f"/counted/{i}")
    wait_for(lambda: round(counted(dashboard_data(dev), "rps") - counted(before, "rps"), 6) >= 30, 30)
    assert counted(dashboard_data(dev), "rps") - counted(before, "rps") == pytest.approx(30)


@pytest.mark.nats
def test_the_dashboard_counts_4xx_answers_as_errors(dev):
    before = settled(dev)
    for i in range(5):
        fetch(dev, f"/missing/{i}")
    wait_for(lambda: round(counted(dashboard_data(dev), "errors_4xx") - counted(before, "errors_4xx"), 6) >= 5, 30)
    after = dashboard_data(dev)
    assert counted(after, "errors_4xx") - counted(before, "errors_4xx") == pytest.approx(5)
    assert counted(after, "errors_5xx") == 0


@pytest.mark.nats
def test_the_dashboard_shows_latency_percentiles_instances_and_memory(dev):
    fetch(dev, "/timed")
    wait_for(lambda: any(v is not None for v in dashboard_data(dev)["series"]["p99"]), 30)  # type: ignore[index]
    series = dashboard_data(dev)["series"]
    assert isinstance(series, dict)
    latencies = [(p50, p99) for p50, p99 in zip(series["p50"], series["p99"]) if p50 is not None]
    assert latencies and all(0 < p50 <= p99 < 60 for p50, p99 in latencies)
    assert series["serving"][-1] >= 1
    assert series["memory"][-1] > 5 << 20  # a Python process serving the app holds more than 5 MiB


@pytest.mark.nats
def test_the_dashboard_adds_up_the_requests_of_every_router_worker(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KILN_CONSOLE_METRICS_SCRAPE_SECONDS", "0.5")
        with console_dev(tmp_path / "app", router_workers=2) as workers:
            router = HostPort.parse(workers.metrics_addresses["router"], "router metrics")
            first, second = (f"{router.host}:{router.port + n}" for n in (0, 1))
            assert workers.dashboard_metrics()[:2] == [first, second]  # the console scrapes both workers
            before = settled(workers)
            for i in range(40):
                fetch(workers, f"/spread/{i}")
            wait_for(lambda: round(counted(dashboard_data(workers), "rps") - counted(before, "rps"), 6) >= 40, 30)
            assert counted(dashboard_data(workers), "rps") - counted(before, "rps") == pytest.approx(40)
            # Both workers answered some of them (each counts its own): the sum is the dashboard's.
            served = [scraped_requests(address, workers.app_id) for address in (first, second)]
            assert all(n > 0 for n in served)


def scraped_requests(address: str, app_id: str) -> float:
    """The requests a router worker counted for the app, from its own metrics page."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "kiln_router_requests_total" and s.labels.get("app") == app_id)


@pytest.mark.nats
def test_the_data_after_since_is_the_points_newer_than_it(dev):
    full = settled(dev)
    times = full["series"]["time"]  # type: ignore[index]
    since = times[-2]
    status, _, body = console_request(dev, "GET", f"/dashboard/data?version={dev.version_id}&since={since!r}")
    newer = json.loads(body)
    assert status == 200 and newer["since"] == since
    assert newer["series"]["time"][0] == times[-1]  # the points after since, from the first one on
    assert all(t > since for t in newer["series"]["time"])
    assert set(newer["series"]) == set(full["series"])  # type: ignore[arg-type]


@pytest.mark.nats
@pytest.mark.parametrize("since", ["soon", "nan", "inf"])
def test_a_since_that_is_not_a_time_is_refused_naming_it(dev, since):
    status, _, body = console_request(dev, "GET", f"/dashboard/data?version={dev.version_id}&since={since}")
    assert status == 400
    assert f"since: expected a time in seconds, got &#39;{since}&#39;" in body


@pytest.mark.nats
def test_the_console_opens_on_the_dashboard(dev):
    status, headers, _ = console_request(dev, "GET", "/")
    assert status == 302 and headers["location"] == "/dashboard"


@pytest.mark.nats
@pytest.mark.browser
def test_the_dashboard_page_draws_its_plots_and_refreshes_them_without_reloading(page: Page, dev):
    fetch(dev, "/drawn")
    page.goto("/dashboard")
    page.evaluate("window.notReloaded = true")
    for chart in ("requests", "latency", "errors", "instances", "memory"):
        figure = page.locator(f"figure[data-chart={chart}]")
        expect(figure.locator("canvas")).to_have_count(1, timeout=30_000)
        wait_for(lambda: int(figure.get_attribute("data-drawn") or 0) > 0, 30)
    expect(page.locator("#dashboard-version")).to_have_value(dev.version_id)
    drawn = int(page.locator("figure[data-chart=requests]").get_attribute("data-drawn") or 0)
    wait_for(lambda: int(page.locator("figure[data-chart=requests]").get_attribute("data-drawn") or 0) > drawn, 30)
    assert page.evaluate("window.notReloaded === true")
    # Refreshes add only the newer points (?since=): never more than the server has (read after the page's).
    on_page = int(page.locator("figure[data-chart=instances]").get_attribute("data-drawn") or 0)
    series = dashboard_data(dev)["series"]
    assert isinstance(series, dict)
    assert on_page <= sum(v is not None for state in ("serving", "starting", "stopping") for v in series[state])
    expect(page.locator("figure[data-chart=instances] .now")).to_contain_text(re.compile(r"serving 1(,|$)"))
    expect(page.locator("nav a[aria-current=page]")).to_have_text("Dashboard")
