"""kiln's responses against dev_appserver's, recorded (tests/fixtures/responses/dev_appserver.json).

``kiln dev`` serves the fixture's app (tests/fixtures/responses/app) through the real router, NATS and a runtime
instance; every recorded request is sent again and the answers, normalised the same way
(``record_dev_appserver.normalise``), are compared field by field with dev_appserver's. Every difference must be
in :data:`DIFFERENCES`, with kiln's value and the reason, and every listed difference must still be there: a new
difference, or one that went away, fails the test. Where dev_appserver is not what production App Engine
documents, kiln follows the documentation and the difference says so.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import pathlib
import shutil
import urllib.parse
from typing import Any

import pytest

from deploy.dev import DevOptions, DevServer

pytestmark = pytest.mark.nats

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "responses"
_spec = importlib.util.spec_from_file_location("record_dev_appserver", FIXTURES / "record_dev_appserver.py")
assert _spec is not None and _spec.loader is not None
recorder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recorder)
FIXTURE = json.loads((FIXTURES / "dev_appserver.json").read_text())

# Why kiln differs from dev_appserver; the README lists the same, in the same words.
DEFAULT_CACHING = ("An app response without Cache-Control: kiln sends `Cache-Control: private` and `Vary: "
                   "Accept-Encoding` (browsers may cache it, shared caches may not; the body may be gzipped), "
                   "dev_appserver `Cache-Control: no-cache` and `Expires: Fri, 01 Jan 1990 00:00:00 GMT`. App "
                   "Engine documents no default; kiln keeps the rule its README states. With a cookie and no "
                   "Cache-Control, kiln's answer is `private` and `Expires` now (App Engine's cookie rule); "
                   "dev_appserver's `no-cache` is already stricter and its 1990 Expires already past.")
NO_BODY_STATUS = ("A 204 answer: kiln gives it the same default caching headers as any app response; dev_appserver "
                  "adds none to a status that cannot have a body. Harmless: there is nothing to cache.")
STATIC_MAX_AGE = ("Static files: kiln sends `Cache-Control: public, max-age=N` with `Expires` (App Engine: "
                  "`expiration` sets both headers, and its front end sends max-age); dev_appserver sends `public` "
                  "and `Expires` only.")
NOT_MODIFIED = ("A conditional GET answered 304: kiln repeats the Cache-Control, Expires and `http_headers` the 200 "
                "would carry (RFC 9110 section 15.4.5 asks for them, so caches refresh their copy); dev_appserver "
                "sends only the ETag.")
STATIC_POST = ("POST to a static file: kiln answers 405 (static handlers serve GET and HEAD); dev_appserver "
               "serves the file.")
STATIC_DIRECTORY = ("A `static_dir` path naming a directory: kiln answers App Engine's empty 404, as for any missing "
                    "static file; dev_appserver a text/plain `/static/css/ not found`.")
GZIP = ("gzip: App Engine compresses text responses for clients that send `Accept-Encoding: gzip` and a "
        "User-Agent (its request-header reference: \"the server may automatically send a gzipped response\"), and "
        "kiln does; dev_appserver never compresses.")
SECURE = ("`secure: always` over plain HTTP: kiln redirects to https (302, empty body), as App Engine does; "
          "dev_appserver serves the page (App Engine's app.yaml reference: the development server does not "
          "support HTTPS and ignores `secure`).")
LOGIN_REDIRECT = ("`login: required`/`admin` with nobody signed in: both redirect (302) to /_ah/login; kiln's "
                  "Location is relative and its `continue` a path (sign-in can never send the visitor to another "
                  "site), dev_appserver's are absolute URLs; kiln labels the empty body text/plain.")
NOT_ADMIN = ("`login: admin` with a signed-in user who is not an administrator: kiln answers 403 with a text/plain "
             "line (the user is known and refused; a 401 asks for credentials and needs WWW-Authenticate), "
             "dev_appserver 401 with an HTML line. App Engine documents only that such a user is refused.")
ROUTER_PAGE = "kiln's own short pages (405, 403, redirects) are `text/plain; charset=utf-8` without caching headers."
BAD_HEADER = ("A response header HTTP cannot carry (CR/LF, NUL, a space in the name): both answer 500; the page is "
              "kiln runtime's (dev_appserver's is gunicorn's), with kiln's default caching headers.")
USAGE = ("A request by an administrator: kiln adds App Engine's `X-AppEngine-Resource-Usage` and "
         "`X-AppEngine-Estimated-CPM-US-Dollars`; dev_appserver does not.")
REPEATED_HEADER = ("A header the app sends twice: kiln sends the two lines as the app did; dev_appserver sends each "
                   "twice (four `X-Custom` lines: a dev_appserver defect).")

_SCRIPTS = ("script_text", "script_head", "script_no_content_type", "script_created", "script_teapot",
            "script_error_500", "no_handler_app_404", "script_repeated_header", "script_front_end_headers",
            "script_redirect", "script_redirect_permanent", "script_post", "text_gzip", "text_gzip_no_user_agent",
            "text_identity", "json_gzip", "binary_gzip", "big_body", "big_body_gzip", "big_body_head",
            "bad_header_newline", "bad_header_control", "bad_header_name", "login_required_signed_in",
            "login_admin_admin", "static_dir_prefix_only")
_STATIC_OK = ("static_dir_file", "static_dir_file_head", "static_dir_big_text", "static_dir_big_text_gzip",
              "static_dir_if_none_match_other")
_EMPTY = {"length": 0, "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "text": ""}
_RUNTIME_500 = {"length": 60, "sha256": "f06bdaff501eb8ca20edb9759eedee0c7564d485173bec4c7ca51311cc27bab8",
                "text": "<html><body><h1>500 Internal Server Error</h1></body></html>"}
_TEXT = ["text/plain; charset=utf-8"]


def _each(reason: str, field: str, kiln: Any, *cases: str) -> dict[tuple[str, str], tuple[Any, str]]:
    return {(case, field): (kiln, reason) for case in cases}


# (case, field) -> (kiln's normalised value, why it differs from dev_appserver's). A field is "status", "body" or
# "header NAME" (its values in order; None when absent).
DIFFERENCES: dict[tuple[str, str], tuple[Any, str]] = {
    **_each(DEFAULT_CACHING, "header cache-control", ["private"], *_SCRIPTS, "cookie_none"),
    **_each(DEFAULT_CACHING, "header vary", ["Accept-Encoding"], *_SCRIPTS),
    **_each(DEFAULT_CACHING, "header expires", None, *_SCRIPTS),
    **_each(DEFAULT_CACHING, "header expires", ["<date+0>"], "cookie_none"),
    **_each(NO_BODY_STATUS, "header cache-control", ["private"], "script_no_content"),
    **_each(NO_BODY_STATUS, "header vary", ["Accept-Encoding"], "script_no_content"),
    **_each(STATIC_MAX_AGE, "header cache-control", ["public, max-age=172800"], *_STATIC_OK),
    **_each(STATIC_MAX_AGE, "header cache-control", ["public, max-age=3600"], "static_files_default_expiration",
            "static_files_mime_type"),
    **_each(NOT_MODIFIED, "header cache-control", ["public, max-age=172800"], "static_dir_if_none_match_star"),
    **_each(NOT_MODIFIED, "header expires", ["<date+172800>"], "static_dir_if_none_match_star"),
    **_each(NOT_MODIFIED, "header x-static", ["yes"], "static_dir_if_none_match_star"),
    **_each(STATIC_POST, "status", 405, "static_dir_post"),
    **_each(STATIC_POST, "body", {"length": 39, "text": "Static files answer only GET and HEAD.\n",
                                  "sha256": "6d8e8a29226ec23e3d78b7e8e1016200409007b48620b5a02db4a7f8549d7c83"},
            "static_dir_post"),
    **{("static_dir_post", f"header {name}"): (None, STATIC_POST)
       for name in ("cache-control", "etag", "expires", "x-static")},
    **_each(STATIC_POST, "header content-type", _TEXT, "static_dir_post"),
    **_each(STATIC_DIRECTORY, "body", _EMPTY, "static_dir_directory"),
    **_each(STATIC_DIRECTORY, "header content-type", None, "static_dir_directory"),
    **_each(GZIP, "header content-encoding", ["gzip"], "text_gzip", "json_gzip", "big_body_gzip"),
    **_each(SECURE, "status", 302, "secure_always_over_http"),
    **_each(SECURE, "header location", ["https://{host}/secure/page?x=1"], "secure_always_over_http"),
    **_each(SECURE, "body", _EMPTY, "secure_always_over_http"),
    **_each(ROUTER_PAGE, "header content-type", _TEXT, "secure_always_over_http", "login_required_anonymous",
            "login_admin_anonymous", "login_admin_not_admin"),
    **_each(ROUTER_PAGE, "header cache-control", None, "secure_always_over_http", "login_admin_not_admin"),
    **_each(SECURE, "header expires", None, "secure_always_over_http"),
    **_each(LOGIN_REDIRECT, "header location", ["/_ah/login?continue=%2Faccount%2Fhome"], "login_required_anonymous"),
    **_each(LOGIN_REDIRECT, "header location", ["/_ah/login?continue=%2Fadmin%2Fpage"], "login_admin_anonymous"),
    **_each(NOT_ADMIN, "status", 403, "login_admin_not_admin"),
    **_each(NOT_ADMIN, "body", {"length": 51, "text": "Only administrators of this app may see this page.\n",
                                "sha256": "9cd7bfe012ccdf72a02471ec151367284d85a10e83bfabc05c0aa6123931cd8b"},
            "login_admin_not_admin"),
    **_each(BAD_HEADER, "body", _RUNTIME_500, "bad_header_newline", "bad_header_control", "bad_header_name"),
    **_each(BAD_HEADER, "header content-type", ["text/html; charset=utf-8"], "bad_header_newline",
            "bad_header_control", "bad_header_name"),
    **_each(USAGE, "header x-appengine-resource-usage", ["<usage>"], "login_admin_admin"),
    **_each(USAGE, "header x-appengine-estimated-cpm-us-dollars", ["<cost>"], "login_admin_admin"),
    **_each(REPEATED_HEADER, "header x-custom", ["one", "two"], "script_repeated_header"),
}


def _sign_in(port: int, email: str, admin: bool) -> str:
    form = urllib.parse.urlencode({"email": email, **({"admin": "True"} if admin else {})})
    conn = http.client.HTTPConnection("localhost", port, timeout=30)
    try:
        conn.request("POST", "/_ah/login?continue=/", body=form,
                     headers={"Host": f"localhost:{port}", "Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 302, resp.status
        return (resp.getheader("Set-Cookie") or "").split(";", 1)[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def kiln_answers(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Every recorded request sent to ``kiln dev`` serving the fixture's app: normalised responses by case name."""
    root = tmp_path_factory.mktemp("responses")
    app_dir = root / "app"
    shutil.copytree(FIXTURES / "app", app_dir)
    server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=root / "data"))
    server.start()
    try:
        port = int(server.addresses["router"].rpartition(":")[2])
        users = FIXTURE["users"]
        cookies = {"user": _sign_in(port, users["user"], False), "admin": _sign_in(port, users["admin"], True)}
        return {found["name"]: found["response"] for found in recorder.record(port, cookies)}
    finally:
        server.stop()


def _differences(dev: dict[str, Any], kiln: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """field -> (dev_appserver's value, kiln's value), for the fields that differ."""
    out: dict[str, tuple[Any, Any]] = {}
    if dev["status"] != kiln["status"]:
        out["status"] = (dev["status"], kiln["status"])
    for name in sorted(dev["headers"].keys() | kiln["headers"].keys()):
        theirs, ours = dev["headers"].get(name), kiln["headers"].get(name)
        if theirs != ours:
            out[f"header {name}"] = (theirs, ours)
    if dev["body"] != kiln["body"]:
        out["body"] = (dev["body"], kiln["body"])
    return out


def test_the_fixture_answers_every_request_the_recorder_sends():
    assert [case["name"] for case in FIXTURE["cases"]] == [case["name"] for case in recorder.CASES]
    assert [{k: v for k, v in case.items() if k != "response"} for case in FIXTURE["cases"]] == recorder.CASES


def test_kiln_differs_from_dev_appserver_exactly_where_listed(kiln_answers):
    found = {(case["name"], field): ours
             for case in FIXTURE["cases"]
             for field, (_, ours) in _differences(case["response"], kiln_answers[case["name"]]).items()}
    assert found == {key: value for key, (value, _) in DIFFERENCES.items()}
