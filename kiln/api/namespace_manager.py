"""App Engine's namespace manager (``google.appengine.api.namespace_manager``): the current namespace.

As on App Engine, the current namespace lives in the request's environment
(``HTTP_X_APPENGINE_CURRENT_NAMESPACE``), so concurrent requests each have
their own; outside a request it is the process's.
"""

from __future__ import annotations

import os
import re

__all__ = ["BadValueError", "get_namespace", "google_apps_namespace", "set_namespace", "validate_namespace"]

_ENV = "HTTP_X_APPENGINE_CURRENT_NAMESPACE"
NAMESPACE_RE = re.compile(r"^[0-9A-Za-z._-]{0,100}$")


class BadValueError(ValueError):
    """A namespace that is not 0-100 of 0-9, A-Z, a-z, '.', '_' and '-'."""


def validate_namespace(value: str, exception: type[Exception] = BadValueError) -> None:
    if not isinstance(value, str) or not NAMESPACE_RE.match(value):
        raise exception(f"namespace {value!r} does not match {NAMESPACE_RE.pattern}")


def set_namespace(namespace: str | None) -> None:
    """Make ``namespace`` current for this request ('' or None: the default namespace)."""
    if not namespace:
        os.environ.pop(_ENV, None)
        return
    validate_namespace(namespace)
    os.environ[_ENV] = namespace


def get_namespace() -> str:
    return os.environ.get(_ENV, "")


def google_apps_namespace() -> str:
    return os.environ.get("HTTP_X_APPENGINE_DEFAULT_NAMESPACE", "")
