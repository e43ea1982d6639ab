"""Matching paths to app.yaml handlers."""

from __future__ import annotations

from kiln_platform import appyaml
from kiln_platform.handlers import Matcher

YAML = r"""
runtime: python27
api_version: 1
threadsafe: true
handlers:
- url: /static
  static_dir: public
- url: /img/(.*)/(.*)\.png
  static_files: pictures/\2/\1.png
  upload: pictures/.*\.png
- url: /admin/.*
  script: admin.app
- url: /.*
  script: main.app
"""

M = Matcher(appyaml.parse(YAML))


def test_first_matching_handler_wins():
    assert M.match("/admin/x").handler.script == "admin.app"
    assert M.match("/anything").handler.script == "main.app"


def test_url_must_match_the_whole_path():
    assert M.match("/admin").handler.script == "main.app"


def test_static_dir_is_a_prefix_mapped_to_the_directory():
    found = M.match("/static/css/site.css")
    assert found.index == 0 and found.static_path == "public/css/site.css"
    assert M.match("/staticky").handler.script == "main.app"


def test_the_bare_static_dir_url_is_left_to_the_next_handler():
    # App Engine's static_dir is "<url>/(.*)": "/static" itself is not one of its files.
    assert M.match("/static").handler.script == "main.app"
    assert M.match("/static/").index == 0


def test_static_files_use_back_references():
    assert M.match("/img/small/cat.png").static_path == "pictures/cat/small.png"


def test_paths_escaping_the_directory_name_no_file():
    assert M.match("/static/../main.py").static_path is None
    assert M.match("/static/a/../../main.py").static_path is None
    assert M.match("/img/x/..%2f..%2fsecret.png").static_path is not None  # still inside pictures/
    assert M.match("/img/a/../../../etc/passwd.png").static_path is None
