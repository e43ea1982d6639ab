"""kiln dev's stop request (``deploy.dev.StopFlag``) is set from signal handlers, which run in the main thread
between any two bytecodes — also inside its own ``wait``: setting it takes no lock, so a signal that lands
mid-wait ends the wait instead of deadlocking (as ``threading.Event.set`` in a handler could)."""

from __future__ import annotations

import signal

from deploy.dev import StopFlag


def test_a_signal_during_wait_sets_the_flag_and_ends_the_wait():
    flag = StopFlag()
    previous = signal.signal(signal.SIGALRM, lambda *_: flag.set())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01, 0.001)  # fires again and again while wait runs
        assert flag.wait(30) is True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_wait_without_a_signal_reports_unset_after_its_timeout():
    assert StopFlag().wait(0.05) is False


def test_reset_clears_the_flag():
    flag = StopFlag()
    flag.set()
    flag.reset()
    assert not flag.is_set()
