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
have (they cannot outlive it). Only instances of manual or basic scaling may
start background threads that outlive requests
(:mod:`kiln.api.background_thread`).

What a request's threads log (the ``logging`` module, and lines written to
``sys.stderr``) is collected for its request log (:func:`request_logs`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

__all__ = ["DeadlineExceededError", "in_app_code", "install", "request_environ", "serving"]

_local = threading.local()


class DeadlineExceededError(BaseException):
    """The request ran past its deadline (App Engine's; a BaseException so ``except Exception`` misses it)."""


def request_environ() -> dict[str, Any] | None:
    """The environment of the request this thread is serving, or ``None``."""
    found: dict[str, Any] | None = getattr(_local, "environ", None)
    return found


def in_app_code() -> bool:
    """True on a thread running the app's code: serving a request, or one of its background threads.

    App code can change what this answers; the sandbox (``runtime.sandbox``) does not ask it.
    """
    return getattr(_local, "environ", None) is not None or getattr(_local, "background", False)


# Whether this instance may run background threads (App Engine: manual and basic scaling only); set by the runtime.
_background_threads_allowed = False
MAX_BACKGROUND_THREADS = 10


def allow_background_threads(allowed: bool) -> None:
    """The runtime says whether the version's scaling allows threads that outlive requests."""
    global _background_threads_allowed
    _background_threads_allowed = allowed


def background_threads_allowed() -> bool:
    return _background_threads_allowed


# The runtime's sandbox (runtime.sandbox) treats the thread raising this audit event as running app code from then on.
_APP_THREAD_EVENT = "kiln.sandbox.app_thread"


def mark_background() -> None:
    """Called first on a background thread: it runs app code (the sandbox applies) outside any request."""
    sys.audit(_APP_THREAD_EVENT)
    _local.background = True


LogLine = tuple[float, int, str]  # time, logging level, message


@contextlib.contextmanager
def serving(environ: dict[str, Any], logs: list[LogLine] | None = None) -> Iterator[None]:
    """Make ``environ`` this thread's request environment for the block (the runtime uses this).

    Threads started in the block are joined before it ends; what the request
    logs is appended to ``logs``.
    """
    sys.audit(_APP_THREAD_EVENT)
    previous = (getattr(_local, "environ", None), getattr(_local, "threads", None), getattr(_local, "logs", None))
    _local.environ = {k: v for k, v in environ.items() if isinstance(v, str)}
    _local.threads = []
    _local.logs = logs if logs is not None else []
    try:
        yield
        _join(_local.threads)
    finally:
        _local.environ, _local.threads, _local.logs = previous


class _RequestLogHandler(logging.Handler):
    """Collects records logged on a request's threads into that request's log.

    The app's DEBUG lines are kept, as on App Engine; DEBUG lines of the
    platform's own code (kiln, gRPC…) that run on a request thread are not.
    """

    def __init__(self, app_dirs: tuple[str, ...]) -> None:
        super().__init__(logging.DEBUG)
        self._app_dirs = app_dirs

    def emit(self, record: logging.LogRecord) -> None:
        lines: list[LogLine] | None = getattr(_local, "logs", None)
        if lines is None:
            return
        if record.levelno < logging.INFO and not record.pathname.startswith(self._app_dirs):
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # noqa: BLE001 - a bad log call must not break the request
            message = str(record.msg)
        lines.append((record.created, record.levelno, message))


class _RequestStderr(io.TextIOBase):
    """``sys.stderr`` that also puts a request's lines into its log (at INFO)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, text: str) -> int:
        lines: list[LogLine] | None = getattr(_local, "logs", None)
        if lines is not None:
            pending = getattr(_local, "stderr_partial", "") + text
            *complete, rest = pending.split("\n")
            _local.stderr_partial = rest
            now = time.time()
            lines.extend((now, logging.INFO, line) for line in complete if line)
        return int(self._real.write(text))

    def flush(self) -> None:
        self._real.flush()

    def fileno(self) -> int:
        return int(self._real.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._real, "encoding", "utf-8"))


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
    self._kiln_start = True  # type: ignore[attr-defined]  # the sandbox lets app code start threads this way only
    environ: dict[str, str] | None = getattr(_local, "environ", None)
    if getattr(self, "kiln_background", False):
        pass  # a background thread belongs to no request
    elif getattr(_local, "background", False):
        # Threads a background thread starts run app code too.
        target_run = self.run

        def run_in_background() -> None:
            _local.background = True
            target_run()

        self.run = run_in_background  # type: ignore[method-assign]
    elif owned is not None and environ is not None:
        owned.append(self)
        target_run = self.run
        shared = environ

        shared_logs = getattr(_local, "logs", None)

        def run() -> None:
            _local.environ = shared
            _local.logs = shared_logs
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


def install(app_dirs: Sequence[str] = ()) -> None:
    """Make ``os.environ`` request-aware, threads request-bound and logging request-captured (once per process).

    ``app_dirs`` hold the app's code, whose DEBUG lines are captured too. The
    root logger then passes DEBUG records; the process's own log handlers keep
    the level they had.
    """
    if not isinstance(os.environ, _RequestEnviron):
        os.environ = _RequestEnviron(os.environ)  # type: ignore[assignment]
    threading.Thread.start = _start_in_request  # type: ignore[method-assign]
    root = logging.getLogger()
    if not any(isinstance(h, _RequestLogHandler) for h in root.handlers):
        for handler in root.handlers:
            handler.setLevel(max(handler.level, root.level))
        root.setLevel(logging.DEBUG)
        root.addHandler(_RequestLogHandler(tuple(os.path.join(os.path.realpath(d), "") for d in app_dirs)))
    if not isinstance(sys.stderr, _RequestStderr):
        sys.stderr = _RequestStderr(sys.stderr)
