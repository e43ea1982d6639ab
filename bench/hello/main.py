"""Hello world, and the same static file served through WSGI (for gunicorn, which has no static handler)."""

import pathlib

STATIC = pathlib.Path(__file__).with_name("static") / "page.html"


def app(environ, start_response):
    if environ["PATH_INFO"] == "/static/page.html":
        body = STATIC.read_bytes()
        start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [b"Hello world!"]
