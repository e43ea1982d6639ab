"""App Engine's background threads (``google.appengine.api.background_thread``).

On instances of manual or basic scaling an app may start threads that outlive
the request that started them; on automatically scaled instances, as on App
Engine, it may not (:class:`FrontendsNotSupported`). A background thread runs
the app's code under the same sandbox as requests, outside any request: it
has no request environment, and what it logs goes to the instance's log. At
most :data:`MAX_THREADS` run at once per instance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kiln import runtime as kiln_runtime

__all__ = ["BackgroundThread", "BackgroundThreadLimitReachedError", "Error", "FrontendsNotSupported",
           "start_new_background_thread"]

MAX_THREADS = kiln_runtime.MAX_BACKGROUND_THREADS
_lock = threading.Lock()
_running: set[threading.Thread] = set()


class Error(Exception):
    """Base class of background thread errors."""


class FrontendsNotSupported(Error):
    """Background threads need manual or basic scaling; this instance scales automatically."""


class BackgroundThreadLimitReachedError(Error):
    """The instance already runs the most background threads it may."""


class BackgroundThread(threading.Thread):
    """A thread that may outlive the request that starts it (manual and basic scaling only)."""

    kiln_background = True

    def start(self) -> None:
        if not kiln_runtime.background_threads_allowed():
            raise FrontendsNotSupported("background threads need manual_scaling or basic_scaling in app.yaml")
        with _lock:
            _running.difference_update({t for t in _running if not t.is_alive()})
            if len(_running) >= MAX_THREADS:
                raise BackgroundThreadLimitReachedError(f"at most {MAX_THREADS} background threads per instance")
            _running.add(self)
        super().start()

    def run(self) -> None:
        kiln_runtime.mark_background()
        super().run()


def start_new_background_thread(target: Callable[..., Any], args: Sequence[Any],
                                kwargs: Mapping[str, Any] | None = None) -> int:
    """Start ``target(*args, **kwargs)`` on a background thread; return its id."""
    thread = BackgroundThread(target=target, args=tuple(args), kwargs=dict(kwargs or {}), daemon=True)
    thread.start()
    assert thread.ident is not None
    return thread.ident
