"""The runtime's request scope: what makes ``os.environ``, threads and logging per request in an instance.

App Engine gives each request its own CGI environment in ``os.environ``, also
when requests run concurrently in threads. :func:`install` replaces
``os.environ`` with a mapping that, on a thread serving a request, shows that
request's variables over the process environment, and sends that thread's
writes to the request alone; outside a request it is the process environment.
Threads an app starts during a request belong to that request: they see its
environment, and the request does not finish until they have. What a
request's threads log (``logging``, and what they write to ``sys.stdout`` and
``sys.stderr``) is collected for its request log (:func:`serving`).

**Printed output.** As on Google's Python 3 runtime, what an app writes to
``sys.stdout`` and ``sys.stderr`` is logged line by line as it is written:
each complete line goes to the instance's log at once (the process's own
stream, flushed), and, on a request's threads, into that request's log,
stdout at INFO and stderr at ERROR (Google's log agent files plain text from
stdout as INFO and from stderr as ERROR). A partial line waits for its
newline, or for the end of the request (or of the thread that wrote it).
Lines and their number are bounded per request (:data:`MAX_LOG_LINES`,
:data:`MAX_LOG_LINE_CHARS`), as ``logging``'s are. Lines that a ``logging``
handler writes to these streams are not logged a second time: the record
itself is already in the request log, at its own level. Outside a request
(background threads, kiln's own threads) output goes to the instance's log
only, flushed at each newline.

**Deadlines.** The request timer raises ``DeadlineExceededError`` in the
request's thread with ``PyThreadState_SetAsyncExc``, which Python delivers
only while the thread runs Python code. So that a thread blocked in a wait
gets it too, waits on the request's own thread end by the deadline
(``kiln.runtime._Deadline``): ``time.sleep`` waits on the wake-up the timer
sets (:func:`deadline_passed`); ``threading.Condition.wait`` — hence
``Event.wait``, ``Semaphore.acquire``, ``queue.Queue`` and gRPC futures —
and ``Thread.join`` wait in slices that end at the deadline; ``kiln.api``
calls get the request's deadline as their gRPC deadline
(``kiln.api._rpc``). Not covered: bare ``Lock``/``RLock.acquire`` (C code
that cannot be woken from Python), blocking C extensions, and waits on
threads the request started (only the request's own thread gets the timer's
exception). Platform code with its own waits (the SDK's API proxy) registers
with :func:`on_deadline` to be told when a request passes its deadline.

The state is kept in :mod:`kiln.runtime`, whose public face apps read
(:func:`kiln.runtime.request_environ`, :func:`kiln.runtime.background_threads_allowed`);
only the runtime, through this module, sets it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, SupportsIndex

import kiln.runtime as kiln_runtime
from kiln.runtime import _APP_THREAD_EVENT, _Deadline, _local

log = logging.getLogger(__name__)

# What one request may log (App Engine kept a request's app logs bounded too).
MAX_LOG_LINES = 1000
MAX_LOG_LINE_CHARS = 8192

# Google's SDK module whose DeadlineExceededError the request timer raises when the app's environment has it.
SDK_RUNTIME_MODULE = "google.appengine.runtime"


def allow_background_threads(allowed: bool) -> None:
    """The runtime says whether the version's scaling allows threads that outlive requests."""
    kiln_runtime._state["background_threads_allowed"] = allowed


LogLine = tuple[float, int, str]  # time, logging level, message


def _keep(lines: list[LogLine], created: float, level: int, message: str) -> None:
    """Add a line to a request's log, within the request's bounds."""
    if len(lines) < MAX_LOG_LINES:
        lines.append((created, level, message[:MAX_LOG_LINE_CHARS]))


def app_log(level: int, message: str, created: float | None = None) -> bool:
    """Add a line to the current request's app log (as ``print()`` and ``logging`` do); ``False`` outside a
    request, where the caller writes it to the instance's log instead."""
    lines: list[LogLine] | None = getattr(_local, "logs", None)
    if lines is None:
        return False
    _keep(lines, time.time() if created is None else created, level, message)
    return True


# Called with a request's environment when it passes its deadline (see on_deadline).
_deadline_hooks: list[Callable[[Mapping[str, str]], None]] = []


def on_deadline(hook: Callable[[Mapping[str, str]], None]) -> None:
    """Call ``hook`` with a request's environment when the request passes its deadline.

    For platform code whose waits the request's thread cannot be woken from (the SDK's API proxy
    fails the request's calls in flight). The hook runs on the runtime's event loop, just after
    ``DeadlineExceededError`` was raised in the request's thread: it must not block.
    """
    _deadline_hooks.append(hook)


def deadline_passed(deadline: _Deadline, environ: Mapping[str, str]) -> None:
    """The request timer says the request passed its deadline: wake its waits, tell the hooks.

    Called after the timer raised ``DeadlineExceededError`` in the request's thread, so that a
    wait this wakes returns straight into that error.
    """
    deadline.passed.set()
    for hook in list(_deadline_hooks):
        try:
            hook(environ)
        except Exception:  # noqa: BLE001 - one hook's failure must not stop the timer
            log.exception("deadline hook %r failed", hook)


@contextlib.contextmanager
def serving(environ: dict[str, Any], logs: list[LogLine] | None = None,
            deadline: _Deadline | None = None, *, variables: dict[str, str] | None = None) -> Iterator[None]:
    """Make ``environ`` this thread's request environment for the block (the runtime uses this).

    Threads started in the block are joined before it ends; what the request
    logs is appended to ``logs`` (at most :data:`MAX_LOG_LINES` lines); waits on
    this thread end by ``deadline`` (see module docstring). ``variables``, when
    the caller has it, is a new dict of ``environ``'s string values made for this
    scope alone (the runtime knows which of its keys hold other values:
    :func:`runtime.wsgi.string_variables`); the request's ``os.environ`` writes go
    to it, never to ``environ``.
    """
    sys.audit(_APP_THREAD_EVENT)
    previous = (getattr(_local, "environ", None), getattr(_local, "threads", None), getattr(_local, "logs", None),
                getattr(_local, "deadline", None))
    _local.environ = variables if variables is not None else {k: v for k, v in environ.items() if isinstance(v, str)}
    _local.threads = []
    _local.logs = logs if logs is not None else []
    _local.deadline = deadline
    try:
        yield
        _join(_local.threads)
    finally:
        _flush_partial_lines()
        _local.environ, _local.threads, _local.logs, _local.deadline = previous


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
        _keep(lines, record.created, record.levelno, message)


# The code of the method through which a logging handler writes a record to a stream (see _AppStream.write).
_STREAM_EMIT = logging.StreamHandler.emit.__code__


class _AppStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` for app code: logged line by line (see module docstring)."""

    def __init__(self, real: Any, level: int) -> None:
        self._real = real
        self._level = level
        self._partial = threading.local()  # the line a request's thread has begun and not ended yet

    @property
    def real(self) -> Any:
        """The process's own stream underneath: the instance's log."""
        return self._real

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        lines: list[LogLine] | None = getattr(_local, "logs", None)
        if lines is None or sys._getframe(1).f_code is _STREAM_EMIT:
            # Outside a request, or a logging record (already in the request log at its own level).
            self._real.write(text)
            if "\n" in text:
                self._real.flush()
            return len(text)
        pending = getattr(self._partial, "text", "") + text
        *complete, rest = pending.split("\n")
        # A line longer than the bound keeps its beginning; the rest of it is dropped as it comes.
        self._partial.text = rest[:MAX_LOG_LINE_CHARS + 1]
        if complete:
            self._emit(lines, complete)
        return len(text)

    def _emit(self, lines: list[LogLine], complete: list[str]) -> None:
        now = time.time()
        for line in complete:
            _keep(lines, now, self._level, line)
        self._real.write("".join(line[:MAX_LOG_LINE_CHARS] + "\n" for line in complete))
        self._real.flush()

    def end_line(self) -> None:
        """The request (or its thread) ends: a line it began and did not end is logged as it is."""
        rest = getattr(self._partial, "text", "")
        self._partial.text = ""
        lines: list[LogLine] | None = getattr(_local, "logs", None)
        if rest and lines is not None:
            self._emit(lines, [rest])

    def flush(self) -> None:
        self._real.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return int(self._real.fileno())

    def isatty(self) -> bool:
        return bool(self._real.isatty())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._real, "encoding", "utf-8"))

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        found = getattr(self._real, "errors", None)
        return None if found is None else str(found)


def _flush_partial_lines() -> None:
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _AppStream):
            stream.end_line()


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
            try:
                target_run()
            finally:
                _flush_partial_lines()

        self.run = run  # type: ignore[method-assign]
    _original_start(self)


_MISSING = object()


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

    def get(self, key: str, default: Any = None) -> Any:
        # Looked up many times per API call by Google's SDK (ndb reads its context from os.environ): without
        # raising KeyError for each variable that is not set.
        overlay = self._overlay()
        if overlay is not None:
            found = overlay.get(key, _MISSING)
            if found is not _MISSING:
                return found
        return self._base.get(key, default)

    def __contains__(self, key: object) -> bool:
        overlay = self._overlay()
        return (overlay is not None and key in overlay) or key in self._base

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
    if not isinstance(sys.stdout, _AppStream):
        sys.stdout = _AppStream(sys.stdout, logging.INFO)
    if not isinstance(sys.stderr, _AppStream):
        sys.stderr = _AppStream(sys.stderr, logging.ERROR)
    _install_deadline_waits()
    _adopt_sdk_deadline_error()


def _adopt_sdk_deadline_error() -> None:
    """With Google's SDK in the app's environment, the timer raises the SDK's ``DeadlineExceededError``.

    ``kiln.runtime.DeadlineExceededError`` becomes that class, before any app code runs, so an app's
    ``except`` naming either (``google.appengine.runtime`` or ``kiln.runtime``) catches what the timer raises.
    """
    try:
        sdk = importlib.import_module(SDK_RUNTIME_MODULE)
    except ImportError:
        return
    found = getattr(sdk, "DeadlineExceededError", None)
    if isinstance(found, type) and issubclass(found, BaseException):
        setattr(kiln_runtime, "DeadlineExceededError", found)  # noqa: B010 - mypy refuses rebinding a class name


_original_sleep = time.sleep
_original_condition_wait = threading.Condition.wait
_original_join = threading.Thread.join


def _sleep(seconds: float | SupportsIndex) -> None:
    """``time.sleep`` that the request timer wakes (see module docstring)."""
    deadline: _Deadline | None = getattr(_local, "deadline", None)
    if deadline is None or not isinstance(seconds, (int, float)) or not seconds >= 0:
        _original_sleep(seconds)  # also raises time.sleep's own errors
        return
    end = time.monotonic() + seconds
    while not deadline.passed.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return
        # Returns early when the timer fires; its DeadlineExceededError then lands right here. Past the
        # deadline, sleeps end at once: the handler has only the grace left to answer.
        deadline.passed.wait(min(left, threading.TIMEOUT_MAX))


def _condition_wait(self: threading.Condition, timeout: float | None = None) -> bool:
    """``Condition.wait`` that ends its waits at the request's deadline, and then waits on in short slices (the lock
    is held again between slices, so no notify is missed)."""
    return bool(_in_slices(lambda seconds: _original_condition_wait(self, seconds), timeout))


def _thread_join(self: threading.Thread, timeout: float | None = None) -> None:
    """``Thread.join`` that ends its waits at the request's deadline, and then waits on in short slices."""
    _in_slices(lambda seconds: (_original_join(self, seconds), not self.is_alive())[1], timeout)


def _in_slices(wait: Callable[[float | None], bool], timeout: float | None) -> bool:
    """``wait(seconds)`` (true once what it waits for happened) for at most ``timeout``, in slices that end at the
    request's deadline and after it every :attr:`_Deadline.POLL_SECONDS`, so the timer's exception can land."""
    deadline: _Deadline | None = getattr(_local, "deadline", None)
    if deadline is None:
        return wait(timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        step = deadline.step()
        if end is not None:
            left = end - time.monotonic()
            if left <= step:
                return wait(max(left, 0.0))
        if wait(min(step, threading.TIMEOUT_MAX)):
            return True


def _install_deadline_waits() -> None:
    time.sleep = _sleep
    threading.Condition.wait = _condition_wait  # type: ignore[method-assign]
    threading.Thread.join = _thread_join  # type: ignore[method-assign]
