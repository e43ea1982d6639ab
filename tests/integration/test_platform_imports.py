"""App code cannot import kiln's platform: the ``kiln_platform`` package, the deployables (router, runtime,
services, control plane, NATS callout) and what only kiln's environment has; it still imports ``kiln``'s API.
Through router, NATS and a runtime instance under ``kiln dev``."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats


# Every platform module the runtime process has loaded already (a cached module is the hard case) and some it has not.
PLATFORM = ["kiln_platform", "kiln_platform.natsauth", "kiln_platform.auth", "kiln_platform.bus",
            "kiln_platform.config", "kiln_platform.supervisor", "kiln_platform.forward", "kiln_platform.grpcserver",
            "natscallout", "natscallout.callout", "runtime.app", "runtime.manager", "router", "datastore_svc",
            "deploy.control", "nats", "grpc"]
HOW = ["import-statement", "from-import", "dunder-import", "import-module"]
APP_API = ["kiln", "kiln.api.datastore", "kiln.api.memcache", "kiln.ext.db", "kiln.runtime", "kiln.errors"]


def _statements(name: str) -> str:
    """Import statements written in the app's source for ``name`` (compiled as the app's code, as apps write them)."""
    key = name.replace(".", "_")
    return textwrap.dedent(f'''
        def import_statement_{key}():
            import {name}

        def from_import_{key}():
            from {name} import __name__ as _n
    ''')


MAIN = textwrap.dedent(r'''
    import importlib, json

    def attempt(how, name):
        try:
            if how in ("import-statement", "from-import"):
                globals()[how.replace("-", "_") + "_" + name.replace(".", "_")]()
            elif how == "dunder-import":
                __import__(name)
            else:
                importlib.import_module(name)
        except ImportError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"imported": True}

    def app(environ, start_response):
        how, _, name = environ["PATH_INFO"].strip("/").partition("/")
        body = attempt(how, name)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''') + "".join(_statements(name) for name in [*PLATFORM, *APP_API])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("imports"), {"main.py": MAIN}) as srv:
        yield srv


def attempt(server, how, name):
    status, _, body = fetch(server, f"/{how}/{name}")
    assert status == 200, body
    return json.loads(body)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", PLATFORM)
def test_app_code_cannot_import_platform_code(server, how, name):
    result = attempt(server, how, name)
    assert result.get("error") == "ModuleNotFoundError", result
    assert "not part of the runtime apps see" in result["message"]


@pytest.mark.parametrize("how", HOW)
def test_a_refused_grpc_import_says_why_and_what_to_use_instead(server, how):
    result = attempt(server, how, "grpc")
    assert "may not use gRPC itself, even when requirements.txt brings it" in result["message"]
    assert "GOOGLE_CLOUD_DISABLE_GRPC" in result["message"]
    assert "list it in requirements.txt" not in result["message"]  # it would not help


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", APP_API)
def test_app_code_imports_kilns_app_api(server, how, name):
    assert attempt(server, how, name) == {"imported": True}
