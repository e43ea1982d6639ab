"""What the ``kiln`` package offers apps is a pinned list, and none of it reaches into kiln's platform.

``kiln`` is what app code may import (the sandbox refuses everything else of kiln's environment to it); a new
module here is a new thing apps can reach, so adding one means changing this list on purpose.
"""

from __future__ import annotations

import ast
import pathlib
import pkgutil

import kiln
import kiln.pb

KILN = pathlib.Path(kiln.__file__).parent

APP_MODULES = {
    "kiln.api", "kiln.api._rpc", "kiln.api.app_identity", "kiln.api.background_thread", "kiln.api.blobstore", "kiln.api.datastore", "kiln.api.datastore_errors",
    "kiln.api.datastore_types", "kiln.api.deferred", "kiln.api.images", "kiln.api.images_errors", "kiln.api.mail", "kiln.api.mail_errors",
    "kiln.api.memcache", "kiln.api.namespace_manager", "kiln.api.taskqueue", "kiln.api.urlfetch", "kiln.api.urlfetch_errors",
    "kiln.api.users", "kiln.errors", "kiln.ext", "kiln.ext.db", "kiln.ext.db._errors", "kiln.ext.db._model",
    "kiln.ext.db._properties", "kiln.ext.db._query", "kiln.gql", "kiln.mailrules", "kiln.pb", "kiln.runtime",
    "kiln.sdk", "kiln.sdk._errors", "kiln.sdk.app_identity", "kiln.sdk.blobinfo", "kiln.sdk.blobstore", "kiln.sdk.capability", "kiln.sdk.datastore_v3",
    "kiln.sdk.images", "kiln.sdk.mail", "kiln.sdk.memcache", "kiln.sdk.modules", "kiln.sdk.proxy", "kiln.sdk.service",
    "kiln.sdk.system", "kiln.sdk.taskqueue", "kiln.sdk.tickets", "kiln.sdk.urlfetch", "kiln.sdk.user",
}
CONTRACTS = {"kiln.pb.blobstore", "kiln.pb.cron", "kiln.pb.datastore", "kiln.pb.deploy", "kiln.pb.identity", "kiln.pb.images", "kiln.pb.logs",
             "kiln.pb.mail", "kiln.pb.memcache", "kiln.pb.modules", "kiln.pb.runtime", "kiln.pb.taskqueue",
             "kiln.pb.urlfetch"}
# Top-level packages of kiln's own deployables and platform: never imported by anything in ``kiln``.
PLATFORM = {"kiln_platform", "natscallout", "router", "runtime", "deploy", "datastore_svc", "memcache_svc",
            "urlfetch_svc", "mail_svc", "images_svc", "cron_svc", "logs_svc", "identity_svc", "taskqueue_svc",
            "blobstore_svc", "nats"}


def test_kiln_package_holds_exactly_the_pinned_app_modules():
    found = {m.name for m in pkgutil.walk_packages(kiln.__path__, "kiln.") if not m.name.startswith("kiln.pb.")}
    assert found == APP_MODULES


def test_kiln_package_holds_exactly_the_pinned_contracts():
    assert {m.name for m in pkgutil.iter_modules(kiln.pb.__path__, "kiln.pb.")} == CONTRACTS


def _imported_tops(path: pathlib.Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.partition(".")[0])
    return tops


def test_no_kiln_module_imports_platform_code():
    offenders = {str(path.relative_to(KILN)): sorted(_imported_tops(path) & PLATFORM)
                 for path in KILN.rglob("*.py") if _imported_tops(path) & PLATFORM}
    assert offenders == {}


def test_kiln_runtime_offers_apps_only_its_public_face():
    import kiln.runtime

    assert sorted(kiln.runtime.__all__) == ["DeadlineExceededError", "MAX_BACKGROUND_THREADS",
                                            "background_threads_allowed", "in_app_code", "mark_background",
                                            "request_environ"]
    public = {name for name in vars(kiln.runtime) if not name.startswith("_")}
    assert not public & {"install", "serving", "allow_background_threads"}
