"""The app-facing runtime API, mirroring ``google.appengine.runtime``.

App Engine gives each request its own CGI environment in ``os.environ``
(``USER_EMAIL``, ``PATH_INFO``, ``REQUEST_LOG_ID``…), also when requests run
concurrently in threads; threads an app starts during a request belong to
that request (they see its environment and are joined before it ends), and
only instances of manual or basic scaling may start background threads that
outlive requests (:mod:`kiln.api.background_thread`).

This module is what apps may use of that: the request's deadline error, the
current request's environment, and the background-thread rules.

:class:`DeadlineExceededError` is the one class the request timer raises. When
the app's environment has Google's SDK, the runtime makes it the SDK's own
``google.appengine.runtime.DeadlineExceededError`` before any app code runs,
so ``except`` clauses naming either catch it. The
machinery that sets the state up — per-request ``os.environ``, request-bound
threads, log capture, whether background threads are allowed — is the
runtime's own (``kiln_platform.requestscope``), which app code cannot import.
The state lives here, in private names, because both sides read it; changing
it grants no authority (threads an app starts are sandboxed wherever they run,
``runtime/sandbox.py``).
"""


from __future__ import annotations

import sys
import threading
import time
from typing import Any

__all__ = ["MAX_BACKGROUND_THREADS", "DeadlineExceededError", "background_threads_allowed", "in_app_code",
           "mark_background", "request_environ"]

_local = threading.local()
_passed_lock = threading.Lock()  # makes each _Deadline's `passed` event once


class DeadlineExceededError(BaseException):
    """The request ran past its deadline (App Engine's; a BaseException so ``except Exception`` misses it)."""


class _Deadline:
    """When the request a thread serves must end, and the wake-up its timer gives blocked waits.

    The runtime makes one per request; waits on the request's thread (``time.sleep``,
    ``threading`` conditions, ``kiln.api`` calls) end by :attr:`at`, so that the timer's
    :class:`DeadlineExceededError`, raised only while Python code runs, is not held up.
    """

    # After the deadline, how often a wait that cannot be woken directly returns to Python code.
    POLL_SECONDS = 0.05

    def __init__(self, at: float, hard_at: float) -> None:
        self.at = at  # time.monotonic() of the request deadline
        self.hard_at = hard_at  # past this the runtime gives up on the request (the grace has run out)
        self._passed: threading.Event | None = None  # made when first asked for (see passed)

    @property
    def passed(self) -> threading.Event:
        """Set by the timer, just after it raised DeadlineExceededError.

        Made on first use, once (under a lock: the timer and the request's waits may ask at the same moment): only a
        request that waits past its deadline, or whose deadline passes, needs it, and making an Event (a Condition
        and its lock) for every request cost more than the request timer's own work.
        """
        passed = self._passed
        if passed is None:
            with _passed_lock:
                passed = self._passed
                if passed is None:
                    passed = self._passed = threading.Event()
        return passed

    def time_left(self) -> float:
        """Seconds a wait may block now: until the deadline, or after it until the end of the grace."""
        now = time.monotonic()
        return max(0.0, (self.at if now < self.at else self.hard_at) - now)

    def step(self) -> float:
        """Seconds a wait that only the clock can end may block before it looks again."""
        now = time.monotonic()
        return self.at - now if now < self.at else self.POLL_SECONDS


def _current_deadline() -> _Deadline | None:
    """The deadline of the request this thread serves (its own thread, not threads it started), or ``None``."""
    found: _Deadline | None = getattr(_local, "deadline", None)
    return found


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
_state = {"background_threads_allowed": False}
MAX_BACKGROUND_THREADS = 10


def background_threads_allowed() -> bool:
    """True if this instance's scaling lets app code start threads that outlive requests."""
    return _state["background_threads_allowed"]


# The runtime's sandbox (runtime.sandbox) treats the thread raising this audit event as running app code from then on.
_APP_THREAD_EVENT = "kiln.sandbox.app_thread"


def mark_background() -> None:
    """Called first on a background thread: it runs app code (the sandbox applies) outside any request."""
    sys.audit(_APP_THREAD_EVENT)
    _local.background = True
