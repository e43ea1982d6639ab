"""What an app can import: libraries it selects in app.yaml (C extensions allowed), its requirements.txt installed
into the version's own environment (native code refused, fallbacks work), packages it vendors, the standard
library and kiln's API, and nothing else of kiln's environment. Through router, NATS, the instance manager and
the runtime; libraries and requirements come from PyPI as a deploy would fetch them."""

from __future__ import annotations

import json
import pathlib
import sys
import textwrap

import pytest

from kiln_platform.supervisor import StartError
from tests.integration.apps import fetch, running, wait_for

pytestmark = pytest.mark.nats

APP_YAML = """
runtime: python27
api_version: 1
threadsafe: true
libraries:
- name: yaml
  version: "6.0"
- name: six
  version: latest
handlers:
- url: /.*
  script: main.app
"""

MAIN = textwrap.dedent(r'''
    import importlib, json

    def describe(name):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"file": module.__file__, "version": getattr(module, "__version__", None)}

    def app(environ, start_response):
        name = environ["PATH_INFO"].strip("/")
        if name == "yaml-native":
            import yaml
            body = {"libyaml": yaml.__with_libyaml__, "loaded": yaml.load("a: 1", Loader=yaml.CSafeLoader)}
        elif name == "markupsafe-escape":
            import markupsafe
            body = {"escaped": str(markupsafe.escape("<b>")), "implementation": markupsafe._escape_inner.__module__}
        else:
            body = describe(name)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

REQUIREMENTS = "# installed at deploy time\nitsdangerous==2.2.0\nMarkupSafe==3.0.3  # has a C extension\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("libs")
    (app_dir / "vendored_pkg").mkdir()
    (app_dir / "vendored_pkg" / "__init__.py").write_text("VALUE = 1\n")
    files = {"main.py": MAIN, "requirements.txt": REQUIREMENTS}
    with running(app_dir, files, app_yaml=APP_YAML) as srv:
        srv.app_dir = app_dir
        yield srv


def get(server, name):
    status, _, body = fetch(server, f"/{name}")
    assert status == 200, body
    return json.loads(body)


def test_a_selected_library_imports_with_its_c_extension(server):
    assert get(server, "yaml-native") == {"libyaml": True, "loaded": {"a": 1}}
    # The selected version: the library's copy, or the very same version kiln itself loaded (one copy per process).
    assert get(server, "yaml")["version"] == "6.0.3"


def test_latest_selects_the_newest_catalogued_version(server):
    assert "/libraries/six-" in get(server, "six")["file"]


def test_requirements_are_installed_into_the_versions_own_environment(server):
    found = get(server, "itsdangerous")["file"]
    assert "/requirements/" in found
    assert not found.startswith(sys.prefix)  # not the platform's environment
    assert "itsdangerous" not in sys.modules or not sys.modules["itsdangerous"].__file__.startswith(found)


def test_native_code_from_requirements_is_refused_and_the_pure_python_fallback_serves(server):
    assert get(server, "markupsafe-escape") == {"escaped": "&lt;b&gt;", "implementation": "markupsafe._native"}


def test_vendored_packages_and_the_standard_library_and_kilns_api_import(server):
    assert get(server, "vendored_pkg")["file"].endswith("vendored_pkg/__init__.py")
    assert "file" in get(server, "sqlite3")
    assert "file" in get(server, "kiln.api.datastore")


@pytest.mark.parametrize("name", ["grpc", "nats", "aiohttp", "cassandra", "router", "datastore_svc"])
def test_kilns_own_packages_are_not_importable_by_the_app(server, name):
    result = get(server, name)
    assert result["error"] == "ModuleNotFoundError"
    assert result["message"].startswith(f"No module named {name!r} (kiln:")


def test_an_unknown_library_stops_the_deploy_with_the_list_of_libraries(tmp_path):
    app_yaml = APP_YAML.replace("name: six", "name: nosuchlib")
    with pytest.raises(StartError, match="kiln does not provide 'nosuchlib'; it provides django, flask"):
        with running(tmp_path / "unknown", {"main.py": MAIN}, app_yaml=app_yaml):
            pass


def test_a_requirements_line_with_options_stops_the_deploy_naming_the_line(tmp_path):
    files = {"main.py": MAIN, "requirements.txt": "six\n-e git+https://example.com/repo.git\n"}
    with pytest.raises(StartError, match="requirements.txt:2: options are not allowed"):
        with running(tmp_path / "badreq", files):
            pass


def test_a_requirement_that_cannot_be_installed_stops_the_deploy_naming_its_line_and_the_fix(tmp_path):
    files = {"main.py": MAIN, "requirements.txt": "six\n# the next one does not exist\nkiln-no-such-package-anywhere==1.0\n"}
    with pytest.raises(StartError, match=r"requirements.txt:3: pip could not install 'kiln-no-such-package-anywhere"
                                         r"==1.0' for Python 3\.\d+: .*kiln installs wheels only"):
        with running(tmp_path / "missing", files):
            pass
    # Nothing half-installed is left behind. Another module's kiln dev (another xdist worker) may be installing its
    # own requirements into the same cache meanwhile: its .installing- directory is renamed when it is done, while a
    # leftover of ours would stay for good.
    wait_for(lambda: not list((pathlib.Path.home() / ".cache" / "kiln" / "requirements").glob(".installing-*")), 120)
