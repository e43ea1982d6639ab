"""The request timer: one watcher for the deadlines of every request an instance runs.

App Engine's request timer raises ``DeadlineExceededError`` in a handler still
running at its deadline. An instance runs up to ``max_concurrent_requests``
handlers at once, each with a deadline; starting a timer for each (a thread, or
an event-loop timer and the futures that wait on it) costs every request
tens of microseconds for an event that almost never happens. Instead a request
thread only files its deadline here when its handler starts and takes it back
when it ends (a lock and a dict operation each), and one watcher on the event
loop asks :meth:`RequestTimer.due` which deadlines have passed and when to look
next.

Why the watcher never needs waking: deadlines of the same length are filed in
the order they fall due (the clock is read under the lock), so the first of
each length is the earliest. :meth:`RequestTimer.due` answers the earliest
first deadline, or ``now + shortest`` when none is filed, and every deadline is
at least ``shortest`` long: a request filed after the watcher looked at
``now`` falls due at or after ``now + shortest``, never before the watcher's
next look. So the watcher wakes only at a deadline or once every ``shortest``
seconds when idle, and a request's own cost stays constant.
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class RequestTimer(Generic[T]):
    """The deadlines of the requests running now (see module docstring); safe to use from any thread."""

    def __init__(self, shortest: float) -> None:
        if not shortest > 0:
            raise ValueError(f"the shortest request deadline must be positive, got {shortest!r}")
        self._shortest = shortest
        self._lock = threading.Lock()
        # Deadline length -> (key -> (when it falls due, the request)), in the order they fall due.
        self._filed: dict[float, dict[int, tuple[float, T]]] = {}

    def start(self, key: int, seconds: float, item: T) -> float:
        """File ``item``'s deadline, ``seconds`` from now; returns when it falls due (``time.monotonic()``)."""
        if seconds < self._shortest:
            raise ValueError(f"a request deadline of {seconds} s is shorter than the timer's {self._shortest} s")
        with self._lock:
            at = time.monotonic() + seconds
            self._filed.setdefault(seconds, {})[key] = (at, item)
        return at

    def stop(self, key: int, seconds: float) -> bool:
        """The request ended: take its deadline back. False if it had passed (:meth:`due` returned it)."""
        with self._lock:
            filed = self._filed.get(seconds)
            return filed is not None and filed.pop(key, None) is not None

    def due(self, now: float) -> tuple[list[T], float]:
        """The requests whose deadline passed by ``now`` (no longer filed), and when to look again."""
        passed: list[T] = []
        wake = now + self._shortest
        with self._lock:
            for filed in self._filed.values():
                while filed:
                    key, (at, item) = next(iter(filed.items()))
                    if at > now:
                        wake = min(wake, at)
                        break
                    del filed[key]
                    passed.append(item)
        return passed, wake

    def __len__(self) -> int:
        with self._lock:
            return sum(len(filed) for filed in self._filed.values())
