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

from console import cron, datastore, logs, mail, memcache, render, security, taskqueues, versions
from console.backend import DeployToken, Services
from console.config import ConsoleConfig
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
    raise web.HTTPFound("/logs")


def make_app(services: Services, *, hosts: Callable[[], frozenset[str]]) -> web.Application:
    """The console's aiohttp application over ``services``, answering the Host values ``hosts()`` gives."""
    sessions = security.Sessions()
    app = web.Application(middlewares=[security.middleware(sessions, hosts, render.problem), _errors],
                          client_max_size=2 * 1024 * 1024)
    app[SERVICES_KEY] = services
    app["app_id"] = services.app_id
    app.router.add_get("/", _home)
    for module in (versions, logs, datastore, memcache, cron, taskqueues, mail):
        app.add_routes(module.routes(services))
    app.router.add_static("/static/", render.STATIC, append_version=False)
    return app


async def serve(cfg: ConsoleConfig) -> None:
    """Run the console until SIGTERM."""
    services = Services(app_id=cfg.app_id, credentials=AppCredentials(cfg.service_secret.get()),
                        addresses={"logs": cfg.logs_addr, "datastore": cfg.datastore_addr,
                                   "memcache": cfg.memcache_addr, "cron": cfg.cron_addr,
                                   "taskqueue": cfg.taskqueue_addr, "mail": cfg.mail_addr,
                                   "deploy": cfg.control_addr},
                        timeout=cfg.call_timeout_seconds, credentials_for={"deploy": DeployToken(cfg.deploy_token)})
    bound: dict[str, frozenset[str]] = {"hosts": frozenset()}
    app = make_app(services, hosts=lambda: bound["hosts"])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.create_server((cfg.listen.host, cfg.listen.port),
                                family=socket.AF_INET6 if ":" in cfg.listen.host else socket.AF_INET)
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    bound["hosts"] = security.allowed_hosts(port, cfg.allowed_hosts, cfg.listen.host)
    address = f"{cfg.listen.host}:{port}" if ":" not in cfg.listen.host else f"[{cfg.listen.host}]:{port}"
    log.info("console for app %s serving on http://%s/", cfg.app_id, address)
    if cfg.ready_file is not None:
        grpcserver.write_ready_file(cfg.ready_file, address)
    try:
        await grpcserver.wait_for_signal()
    finally:
        await runner.cleanup()
        await services.close()

