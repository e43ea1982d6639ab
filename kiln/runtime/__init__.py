"""The app-facing runtime API, mirroring ``google.appengine.runtime``.

App Engine gives each request its own CGI environment in ``os.environ``
(``USER_EMAIL``, ``PATH_INFO``, ``REQUEST_LOG_ID``…), also when requests run
concurrently in threads. kiln's runtime does the same: :func:`install`
replaces ``os.environ`` with a mapping that, on a thread serving a request,
shows that request's variables over the process environment, and sends that
thread's writes to the request alone. Outside a request it is the process
environment.

Threads an app starts during a request belong to that request, as on App
Engine: they see its environment, and the request does not finish until they
have (they cannot outlive it).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["DeadlineExceededError", "install", "request_environ", "serving"]

_local = threading.local()


class DeadlineExceededError(BaseException):
    """The request ran past its deadline (App Engine's; a BaseException so ``except Exception`` misses it)."""


def request_environ() -> dict[str, Any] | None:
    """The environment of the request this thread is serving, or ``None``."""
    found: dict[str, Any] | None = getattr(_local, "environ", None)
    return found


@contextlib.contextmanager
def serving(environ: dict[str, Any]) -> Iterator[None]:
    """Make ``environ`` this thread's request environment for the block (the runtime uses this).

    Threads started in the block are joined before it ends.
    """
    previous = getattr(_local, "environ", None), getattr(_local, "threads", None)
    _local.environ = {k: v for k, v in environ.items() if isinstance(v, str)}
    _local.threads = []
    try:
        yield
        _join(_local.threads)
    finally:
        _local.environ, _local.threads = previous


def _join(threads: list[threading.Thread]) -> None:
    # Daemon threads are left alone: libraries (gRPC's channel threads, for one)
    # start them to live as long as the process. Short joins, so that the request
    # timer's DeadlineExceededError can land between them (it is only delivered
    # while Python code runs).
    for thread in threads:
        while thread.is_alive() and not thread.daemon:
            thread.join(0.05)


_original_start = threading.Thread.start


def _start_in_request(self: threading.Thread) -> None:
    """``Thread.start`` that ties the thread to the request starting it (see module docstring)."""
    owned: list[threading.Thread] | None = getattr(_local, "threads", None)
    environ: dict[str, str] | None = getattr(_local, "environ", None)
    if owned is not None and environ is not None:
        owned.append(self)
        target_run = self.run
        shared = environ

        def run() -> None:
            _local.environ = shared
            target_run()

        self.run = run  # type: ignore[method-assign]
    _original_start(self)


class _RequestEnviron(MutableMapping[str, str]):
    """``os.environ`` with the current request's variables on top (see module docstring)."""

    def __init__(self, base: MutableMapping[str, str]) -> None:
        self._base = base

    def _overlay(self) -> dict[str, str] | None:
        return getattr(_local, "environ", None)

    def __getitem__(self, key: str) -> str:
        overlay = self._overlay()
        if overlay is not None and key in overlay:
            return overlay[key]
        return self._base[key]

    def __setitem__(self, key: str, value: str) -> None:
        overlay = self._overlay()
        if overlay is not None:
            overlay[key] = value
        else:
            self._base[key] = value

    def __delitem__(self, key: str) -> None:
        overlay = self._overlay()
        if overlay is not None and key in overlay:
            del overlay[key]
        elif overlay is None:
            del self._base[key]

    def __iter__(self) -> Iterator[str]:
        overlay = self._overlay()
        if overlay is None:
            return iter(self._base)
        return iter({**dict(self._base), **overlay})

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def copy(self) -> dict[str, str]:
        return dict(self)

    @property
    def base(self) -> Mapping[str, str]:
        """The process environment underneath."""
        return self._base


def install() -> None:
    """Make ``os.environ`` request-aware and threads request-bound (once per process)."""
    if not isinstance(os.environ, _RequestEnviron):
        os.environ = _RequestEnviron(os.environ)  # type: ignore[assignment]
    threading.Thread.start = _start_in_request  # type: ignore[method-assign]
