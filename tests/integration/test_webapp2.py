"""An app written for App Engine's webapp2 runs as written: ``libraries:`` selects webapp2 by one of App Engine's
versions and gets its Python 3 release (3.0.0b1, built once per host from its pinned sdist), with WebOb. Through
``kiln dev``: router, NATS, the instance manager and the runtime."""

from __future__ import annotations

import textwrap
import urllib.error
import urllib.request

import pytest

from kiln.errors import ConfigError
from kiln_platform.supervisor import StartError
from runtime import libraries
from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: true
libraries:
- name: webapp2
  version: "2.5.2"
handlers:
- url: /.*
  script: main.app
"""

MAIN = textwrap.dedent(r'''
    import webapp2


    class Home(webapp2.RequestHandler):
        def get(self):
            self.response.headers["Content-Type"] = "text/plain"
            self.response.write("hello " + self.request.get("name", "world"))


    class Sign(webapp2.RequestHandler):
        def post(self):
            self.response.write("signed " + self.request.get("content") + " by " + self.request.POST["who"])


    class Item(webapp2.RequestHandler):
        def get(self, *args, **kwargs):
            self.response.write("item " + repr(sorted(kwargs.items())) + " " + repr(args))


    class Back(webapp2.RequestHandler):
        def get(self):
            self.redirect("/?name=again")


    class ByName(webapp2.RequestHandler):
        def get(self):
            self.redirect(self.uri_for("item", kind="book", item_id="7"))


    class Gone(webapp2.RequestHandler):
        def get(self):
            webapp2.abort(404)


    class Teapot(webapp2.RequestHandler):
        def get(self):
            self.abort(403, detail="not yours")


    class Version(webapp2.RequestHandler):
        def get(self):
            import webob
            from importlib import metadata
            self.response.write(" ".join([metadata.version("webapp2"), webapp2.__file__, webob.__file__]))


    app = webapp2.WSGIApplication([
        ("/", Home),
        ("/sign", Sign),
        (r"/legacy/(\w+)/(\d+)", Item),
        webapp2.Route(r"/items/<kind>/<item_id:\d+>", Item, name="item"),
        ("/back", Back),
        ("/by-name", ByName),
        webapp2.Route("/old", webapp2.RedirectHandler, defaults={"_uri": "/items/cup/3"}),
        ("/gone", Gone),
        ("/forbidden", Teapot),
        ("/version", Version),
    ])
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("webapp2"), {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def first_answer(server, path):
    """Status and Location of the router's answer itself, not of where a redirect leads."""
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(server.url.rstrip("/") + path, timeout=30) as resp:
            return resp.status, resp.headers.get("Location")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location")


def test_a_get_handler_writes_its_response_with_its_headers(server):
    status, headers, body = fetch(server, "/?name=kiln")
    assert (status, body) == (200, b"hello kiln")
    assert headers["Content-Type"].startswith("text/plain")


def test_a_post_handler_reads_the_form(server):
    status, _, body = fetch(server, "/sign", data=b"content=hi+there&who=ann")
    assert (status, body) == (200, b"signed hi there by ann")


@pytest.mark.parametrize("path, expected", [
    ("/items/book/42", b"item [('item_id', '42'), ('kind', 'book')] ()"),  # a Route's named arguments
    ("/legacy/book/42", b"item [] ('book', '42')"),  # a regular expression's groups, webapp's form
])
def test_routes_pass_their_arguments_to_the_handler(server, path, expected):
    assert fetch(server, path)[::2] == (200, expected)


@pytest.mark.parametrize("path", ["/items/book/x", "/nowhere"])
def test_a_path_no_route_matches_is_404(server, path):
    assert fetch(server, path)[0] == 404


@pytest.mark.parametrize("path, location", [
    ("/back", "/?name=again"),  # self.redirect
    ("/by-name", "/items/book/7"),  # self.redirect(self.uri_for(...)), a route by its name
    ("/old", "/items/cup/3"),  # webapp2.RedirectHandler
])
def test_redirects_answer_with_their_location(server, path, location):
    status, got = first_answer(server, path)
    assert status in (301, 302)
    assert got is not None and got.endswith(location)


def test_a_redirect_is_followed_to_its_page(server):
    assert fetch(server, "/back")[::2] == (200, b"hello again")


@pytest.mark.parametrize("path, status", [("/gone", 404), ("/forbidden", 403)])
def test_abort_answers_its_status(server, path, status):
    assert fetch(server, path)[0] == status


def test_a_method_the_handler_lacks_is_405(server):
    assert fetch(server, "/", data=b"x=1")[0] == 405


def test_webapp2_is_its_python_3_release_with_webob_from_the_library_cache(server):
    status, _, body = fetch(server, "/version")
    assert status == 200, body
    version, webapp2_file, webob_file = body.decode().split()
    assert version == "3.0.0b1"
    assert "/libraries/webapp2-" in webapp2_file and "/libraries/webapp2-" in webob_file


def test_an_sdist_whose_sha256_differs_from_the_pin_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setitem(libraries.SOURCE_BUILDS, "webapp2==3.0.0b1", "0" * 64)
    with pytest.raises(ConfigError, match=r"webapp2 3.0.0b1: building its wheel from the sdist .*: the downloaded "
                                          r"file's sha256 is [0-9a-f]{64}, not the pinned one: refused"):
        libraries.built_wheel(tmp_path, "webapp2==3.0.0b1")
    assert [p.name for p in tmp_path.iterdir()] == [".install.lock"]


@pytest.mark.parametrize("name, alternative", [
    ("pycrypto", "PyCrypto has no Python 3 build.*use hashlib, hmac and secrets"),
    ("MySQLdb", "kiln has no Cloud SQL"),
])
def test_a_library_kiln_cannot_provide_stops_kiln_dev_naming_the_alternative(tmp_path, name, alternative):
    app_yaml = APP_YAML.replace("name: webapp2", f"name: {name}")
    with pytest.raises(StartError, match=f"kiln cannot provide '{name}': {alternative}"):
        with running(tmp_path / "refused", {"main.py": MAIN}, app_yaml=app_yaml):
            pass
