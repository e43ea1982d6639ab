"""The console's web server: aiohttp, its guards (:mod:`console.security`), and the pages.

``serve`` starts it on ``listen``, writes the bound address to ``ready_file`` once it serves, and stops on SIGTERM
(as every kiln part does). Each page lives in its own module (``console/logs.py``, ``datastore.py``,
``memcache.py``) and reaches kiln only through :class:`console.backend.Services`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from console import cron, dashboard, datastore, logs, mail, memcache, render, security, taskqueues, versions
from console.backend import DeployToken, GatewayCredentials, Services
from console.config import GATEWAY_SERVICES, ConsoleConfig
from console.signin import SignIn
from kiln import errors
from kiln_platform import grpcserver
from kiln_platform.appcalls import AppCredentials

log = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("services", Services)


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """A kiln error (the service's or the console's) becomes a page saying it; the console keeps serving."""
    try:
        return await handler(request)
    except errors.KilnError as exc:
        return render.error_page(request, exc)


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard")


def make_app(services: Services, *, hosts: Callable[[], frozenset[str]] | None = None,
             signin: SignIn | None = None, scraper: dashboard.Scraper | None = None) -> web.Application:
    """The console's aiohttp application over ``services``; its dashboard plots what ``scraper`` reads (None: no
    metrics to plot).

    Development: it answers the Host values ``hosts()`` gives. Cluster (``signin`` given; ``hosts`` is then
    unused): ``signin`` says which hosts it answers and who may see which app (:mod:`console.signin`).
    """
    sessions = security.Sessions()
    if signin is not None:
        middlewares = [security.middleware(sessions, signin.host_ok, render.problem, scheme=signin.scheme),
                       signin.middleware(), _errors]
    elif hosts is not None:
        known = hosts
        middlewares = [security.middleware(sessions, lambda host: host in known(), render.problem), _errors]
    else:
        raise ValueError("make_app: hosts (development) or signin (cluster) is required")
    app = web.Application(middlewares=middlewares, client_max_size=2 * 1024 * 1024)
    app[SERVICES_KEY] = services
    app["app_id"] = "" if signin is not None else services.app_id  # cluster: each request's, set by signin
    app.router.add_get("/", _home)
    for module in (versions, logs, datastore, memcache, cron, taskqueues, mail):
        app.add_routes(module.routes(services))
    app.add_routes(dashboard.routes(scraper))
    if scraper is not None:
        app.cleanup_ctx.append(scraper.running)
    app.router.add_static("/static/", render.STATIC, append_version=False)
    return app


async def serve(cfg: ConsoleConfig) -> None:
    """Run the console until SIGTERM."""
    signin: SignIn | None = None
    if cfg.cluster:
        signin = SignIn(cfg)
        services = Services(app_id="", credentials=GatewayCredentials(cfg.gateway_token.get()),
                            addresses={name: cfg.gateway for name in GATEWAY_SERVICES},
                            timeout=cfg.call_timeout_seconds,
                            missing="the control plane's gateway does not route {service}_svc yet, so this page is "
                                    "not available in a cluster")
    else:
        services = Services(app_id=cfg.app_id, credentials=AppCredentials(cfg.service_secret.get()),
                            addresses={"logs": cfg.logs_addr, "datastore": cfg.datastore_addr,
                                       "memcache": cfg.memcache_addr, "cron": cfg.cron_addr,
                                       "taskqueue": cfg.taskqueue_addr, "mail": cfg.mail_addr,
                                       "deploy": cfg.control_addr},
                            timeout=cfg.call_timeout_seconds,
                            credentials_for={"deploy": DeployToken(cfg.deploy_token)})
    bound: dict[str, frozenset[str]] = {"hosts": frozenset()}
    # The dashboard's histories: the app's (development), or each app an administrator may open (cluster).
    apps = tuple(sorted(cfg.admin_map())) if cfg.cluster else (cfg.app_id,)
    scraper = (dashboard.Scraper(apps, cfg.metrics_addrs, interval=cfg.metrics_scrape_seconds)
               if cfg.metrics_addrs else None)
    app = make_app(services, hosts=lambda: bound["hosts"], signin=signin, scraper=scraper)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.create_server((cfg.listen.host, cfg.listen.port),
                                family=socket.AF_INET6 if ":" in cfg.listen.host else socket.AF_INET)
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    bound["hosts"] = security.allowed_hosts(port, cfg.allowed_hosts, cfg.listen.host)
    address = f"{cfg.listen.host}:{port}" if ":" not in cfg.listen.host else f"[{cfg.listen.host}]:{port}"
    if signin is not None:
        log.info("console (cluster mode, sign-in at %s) serving on %s", cfg.public_url, address)
    else:
        log.info("console for app %s serving on http://%s/", cfg.app_id, address)
    if cfg.ready_file is not None:
        grpcserver.write_ready_file(cfg.ready_file, address)
    try:
        await grpcserver.wait_for_signal()
    finally:
        await runner.cleanup()
        await services.close()
        if signin is not None:
            await signin.client.close()

