"""runtime.app.AppLoader.for_target: a request path's handler is found once per version and remembered, bounded."""

import pathlib
import sys

import pytest

from kiln_platform import appyaml
from runtime import app as runtime_app

APP_YAML = """\
runtime: python27
api_version: 1
threadsafe: true
handlers:
- url: /static/(.*)
  static_files: files/\\1
  upload: files/.*
- url: /broken/.*
  script: broken.app
- url: /(a|b)/(.*)
  script: main.app
"""


@pytest.fixture
def loader(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> runtime_app.AppLoader:
    (tmp_path / "app.yaml").write_text(APP_YAML)
    (tmp_path / "main.py").write_text("def app(environ, start_response):\n    return [b'main']\n")
    (tmp_path / "broken.py").write_text("raise ImportError('not yet')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "main", raising=False)
    monkeypatch.delitem(sys.modules, "broken", raising=False)
    return runtime_app.AppLoader(str(tmp_path), appyaml.load(tmp_path / "app.yaml"))


def test_a_cached_target_finds_what_the_matcher_finds_for_its_decoded_path(loader):
    for raw in ("/a/x", "/b/%78%2Fy", "/static/f.txt", "/c/x", "/a/x", "/b/%78%2Fy", "/static/f.txt", "/c/x"):
        assert loader.for_target(raw) is loader.resolve(runtime_app.urllib.parse.unquote(raw))
    assert loader.for_target("/a/x") is sys.modules["main"].app
    assert loader.for_target("/static/f.txt") is None  # a static handler: the router serves it
    assert loader.for_target("/c/x") is None  # no handler


def test_a_handler_whose_app_failed_to_import_is_looked_up_again(loader, tmp_path):
    with pytest.raises(ImportError):
        loader.for_target("/broken/x")
    (tmp_path / "broken.py").write_text("def app(environ, start_response):\n    return [b'fixed']\n")
    sys.modules.pop("broken", None)
    assert loader.for_target("/broken/x") is sys.modules["broken"].app


def test_the_path_cache_never_holds_more_than_its_bound(loader):
    for i in range(runtime_app.MAX_CACHED_TARGETS * 2 + 5):
        assert loader.for_target(f"/a/{i}") is sys.modules["main"].app
        assert len(loader._by_target) <= runtime_app.MAX_CACHED_TARGETS
