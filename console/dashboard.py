"""The Dashboard page: requests per second, latency percentiles, errors, instances and their memory over the last
hour, per version, drawn as plots (uPlot, ``static/vendor/``) by ``static/dashboard.js`` from ``/dashboard/data``.

The console keeps the history itself (:class:`console.history.History`): a background task (:class:`Scraper`)
reads each configured ``/metrics`` page (``metrics_addrs``: under ``kiln dev``, the router's and the instance
manager's) every ``metrics_scrape_seconds``. A page is read with a deadline and at most :data:`MAX_PAGE` bytes; a
target that fails is reported on the page and tried again at the next scrape; nothing a page says stops the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from console import render
from console.history import FIGURES, History, Key, parse_apps
from kiln.errors import BadRequestError
from kiln_platform.config import HostPort

log = logging.getLogger(__name__)

HISTORY_SECONDS = 3600.0  # how far back the plots go
MAX_POINTS = 3601  # points kept per version (a scrape more often than every second keeps less than an hour)
MAX_PAGE = 4 << 20  # bytes of one /metrics page read (a longer page fails that scrape)
PATH = "/metrics"


class Scraper:
    """Scrapes ``targets`` every ``interval`` seconds into a :class:`History` per app: the console's one app under
    ``kiln dev``, each app the console's administrators may open in a cluster."""

    def __init__(self, app_ids: str | tuple[str, ...], targets: tuple[HostPort, ...], *, interval: float) -> None:
        self.interval = interval
        self.urls = tuple(f"http://{target}{PATH}" for target in targets)
        points = min(int(HISTORY_SECONDS / interval) + 1, MAX_POINTS)
        self.histories = {app: History(app, points=points)
                          for app in ((app_ids,) if isinstance(app_ids, str) else app_ids)}
        self.errors: dict[str, str] = {}  # url -> why its last scrape failed
        self.scrapes = 0

    @property
    def history(self) -> History:
        """The history of the console's app (its first, under ``kiln dev`` its only one)."""
        return next(iter(self.histories.values()))

    def _parse(self, pages: dict[str, str | None]) -> dict[str, dict[str, dict[Key, float] | None]]:
        """Each app's parse of each page (a page read once for every app; None: its scrape failed)."""
        apps = frozenset(self.histories)
        parsed = {url: None if text is None else parse_apps(text, apps) for url, text in pages.items()}
        return {app: {url: None if by_app is None else by_app.get(app, {}) for url, by_app in parsed.items()}
                for app in self.histories}

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        """Read every target once and add what they said to the history."""
        pages = await asyncio.gather(*(self._read(session, url) for url in self.urls))
        read_at = time.time()
        # Parsed on a thread (the pages' lines cost tens of microseconds each), added on the loop that serves
        # /dashboard/data, so a request never sees the history half-changed.
        parsed = await asyncio.to_thread(self._parse, dict(zip(self.urls, pages)))
        for app, history in self.histories.items():
            history.add_parsed(read_at, parsed[app])
        self.scrapes += 1

    async def _read(self, session: aiohttp.ClientSession, url: str) -> str | None:
        try:
            async with session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 << 10):
                    body += chunk
                    if len(body) > MAX_PAGE:
                        raise ValueError(f"page longer than {MAX_PAGE} bytes")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            if self.errors.get(url) != str(exc):
                log.warning("dashboard: could not scrape %s: %s", url, exc or type(exc).__name__)
            self.errors[url] = str(exc) or type(exc).__name__
            return None
        self.errors.pop(url, None)
        return body.decode("utf-8", "replace")

    async def run(self) -> None:
        """Scrape every ``interval`` seconds until cancelled."""
        timeout = aiohttp.ClientTimeout(total=max(min(self.interval, 10.0), 1.0))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                started = time.monotonic()
                try:
                    await self.scrape(session)
                except Exception:  # noqa: BLE001 - the dashboard must never take the console down
                    log.exception("dashboard: a scrape failed")
                await asyncio.sleep(max(self.interval - (time.monotonic() - started), 0.0))

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """The scraping task for the application's lifetime (an aiohttp ``cleanup_ctx``)."""
        task = asyncio.create_task(self.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def data(scraper: Scraper | None, app_id: str, version: str, since: float | None = None) -> dict[str, object]:
    """What ``/dashboard/data`` answers for ``app_id``: the versions, the chosen one's series (its points after
    ``since`` only, when given: the page adds them to those it has), and the targets that fail."""
    history = scraper.histories.get(app_id) if scraper is not None else None
    if scraper is None or history is None:
        return {"configured": False, "versions": [], "version": "", "series": None, "errors": {},
                "interval": 0}
    versions = history.versions()
    chosen = version if version in versions else (versions[0] if versions else "")
    if chosen != version:
        since = None  # the page showed another version (or none): all of this one's points
    return {"configured": True, "versions": versions, "version": chosen,
            "series": history.series(chosen, since) if chosen else None, "errors": dict(scraper.errors),
            "since": since,
            "interval": scraper.interval, "scrapes": scraper.scrapes, "figures": list(FIGURES)}


def _since(text: str) -> float | None:
    """The ``since`` parameter: a time in seconds (the newest point the page has), or None when absent.

    Raises:
        BadRequestError: it is not a finite number.
    """
    if not text:
        return None
    try:
        since = float(text)
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        raise BadRequestError(f"since: expected a time in seconds, got {text[:40]!r}")
    return since


def routes(scraper: Scraper | None) -> list[web.RouteDef]:
    """The page's routes."""

    async def dashboard_page(request: web.Request) -> web.StreamResponse:
        interval = scraper.interval if scraper else 0.0
        return render.page(request, "dashboard.html", configured=scraper is not None, interval=interval,
                           refresh_ms=int(1000 * min(max(interval, 1.0), 5.0)))

    async def dashboard_data(request: web.Request) -> web.StreamResponse:
        since = _since(request.query.get("since", ""))
        version = request.query.get("version", "")
        app_id = request.get("app_id", request.app["app_id"])  # a cluster's console: the app of the request's host
        response = web.json_response(data(scraper, app_id, version, since if version else None))
        response.headers["Cache-Control"] = "no-store"
        return response

    return [web.get("/dashboard", dashboard_page), web.get("/dashboard/data", dashboard_data)]
