"""Pages from Jinja2 templates (``console/templates``), escaped everywhere.

Autoescaping is on for every template and undefined names are errors, so a value reaches HTML only escaped and a
misspelt name fails a test instead of printing nothing. A request from htmx (``HX-Request``) gets only the part
of the page it replaces (the template's ``fragment``); a plain request, the whole page.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jinja2
from aiohttp import web

from kiln import errors

TEMPLATES = pathlib.Path(__file__).resolve().parent / "templates"
STATIC = pathlib.Path(__file__).resolve().parent / "static"
HTMX = "vendor/htmx-2.0.11.min.js"  # vendored from npm's htmx.org 2.0.11 (0BSD; see static/vendor/)
UPLOT_JS = "vendor/uPlot-1.6.32.iife.min.js"  # vendored from npm's uplot 1.6.32 (MIT; the dashboard's plots)
UPLOT_CSS = "vendor/uPlot-1.6.32.min.css"

ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

# The navigation, in order: (path, title).
PAGES = (("/dashboard", "Dashboard"), ("/versions", "Versions"),
         ("/logs", "Request logs"), ("/datastore", "Datastore"), ("/memcache", "Memcache"), ("/cron", "Cron"),
         ("/queues", "Task queues"), ("/mail", "Mail"))


def is_htmx(request: web.Request) -> bool:
    """Whether htmx sent the request (it then replaces a part of the page with the answer)."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def page(request: web.Request, template: str, *, status: int = 200, fragment: str | None = None,
         **context: Any) -> web.Response:
    """``template`` rendered for ``request``: the whole page, or its ``fragment`` template for htmx."""
    name = fragment if fragment is not None and is_htmx(request) else template
    app_id = request.get("app_id", request.app["app_id"])  # a cluster's console: the app of the request's host
    html = ENV.get_template(name).render(
        request_path=request.path, csrf_token=request["csrf_token"], pages=PAGES if app_id else (), app_id=app_id,
        signed_in=request.get("signed_in"), htmx=HTMX, uplot_js=UPLOT_JS, uplot_css=UPLOT_CSS, **context)
    response = web.Response(text=html, content_type="text/html", status=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "HX-Request"
    return response


def problem(request: web.Request, message: str, status: int) -> web.Response:
    """A page (or, for htmx, a message in place) saying what went wrong."""
    response = page(request, "problem.html", status=status, fragment="problem_fragment.html", message=message,
                    status_code=status)
    if is_htmx(request):  # shown in the page's message area, whatever part the request meant to replace
        response.headers["HX-Retarget"] = "#messages"
        response.headers["HX-Reswap"] = "innerHTML"
    return response


def error_page(request: web.Request, exc: errors.KilnError) -> web.Response:
    """The page for a service's or the console's error: its message, with the HTTP status its class maps to."""
    return problem(request, str(exc), errors.code_for(exc).http)
