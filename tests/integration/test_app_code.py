"""How app code is shipped and what it sees: .pyc without source, .zip on the path, env_variables,
and request-local environment under concurrency; through router, NATS and runtime."""

from __future__ import annotations

import concurrent.futures
import json
import py_compile
import textwrap
import zipfile

import pytest

from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent('''
    import json, os, sys, time
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "vendor.zip"))
    import compiled_only
    import zipped

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/env":
            time.sleep(0.3)  # overlap with the other request
            body = {"query": os.environ["QUERY_STRING"], "colour": os.environ.get("COLOUR"),
                    "version": os.environ["CURRENT_VERSION_ID"]}
        else:
            body = {"compiled": compiled_only.answer(), "zipped": zipped.answer()}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app_dir = tmp_path_factory.mktemp("code")
    source = app_dir / "compiled_only.py"
    source.write_text("def answer():\n    return 'from a .pyc'\n")
    py_compile.compile(str(source), cfile=str(app_dir / "compiled_only.pyc"), doraise=True)
    source.unlink()
    with zipfile.ZipFile(app_dir / "vendor.zip", "w") as archive:
        archive.writestr("zipped.py", "def answer():\n    return 'from a .zip'\n")
    app_yaml = apps.THREADSAFE_YAML.replace("handlers:", "env_variables:\n  COLOUR: blue\nhandlers:")
    with running(app_dir, {"main.py": MAIN}, app_yaml=app_yaml) as srv:
        yield srv


def fetch(server, path):
    return json.loads(apps.fetch(server, path)[2])


def test_modules_ship_as_pyc_without_source_and_inside_zip_archives(server):
    assert fetch(server, "/") == {"compiled": "from a .pyc", "zipped": "from a .zip"}


def test_concurrent_requests_each_see_their_own_environment(server):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: fetch(server, f"/env?n={i}"), range(8)))
    assert [r["query"] for r in results] == [f"n={i}" for i in range(8)]
    assert all(r["colour"] == "blue" and r["version"] == "v1.1" for r in results)
