"""Which audited events the sandbox's hook acts on (runtime/sandbox.py ``_ruled``), without installing it.

The hook returns at once for events no rule names, so the filter must let through every event a rule refuses: each
test here takes the refusing rule's own table or prefix, runs ``_check`` as the hook would on an app thread, and
checks both that it refuses and that the filter passes the event on to it.
"""

from __future__ import annotations

import pathlib
import types

import pytest

from runtime import sandbox


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    app = tmp_path_factory.mktemp("app")
    return sandbox._Places([app], [], [tmp_path_factory.mktemp("private")])


def _refused(event: str, args: tuple, places) -> bool:
    try:
        sandbox._check(event, args, places)
    except sandbox.SandboxError:
        return True
    return False


@pytest.mark.parametrize("event", sorted({*sandbox._FILE_CHANGES, *sandbox._PROCESSES, *sandbox._INTERPRETER}))
def test_every_event_a_table_rule_refuses_reaches_the_rules(event, places):
    assert _refused(event, ("target",), places)
    assert sandbox._ruled(event)


@pytest.mark.parametrize("event", ["os.execve", "os.execv", "os.spawnv", "os.spawnve",
                                   "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "ctypes.string_at",
                                   "ctypes.call_function"])
def test_events_refused_by_name_prefix_reach_the_rules(event, places):
    assert _refused(event, ("target",), places)
    assert sandbox._ruled(event)


def test_events_refused_by_their_arguments_reach_the_rules(places, tmp_path):
    def app_function() -> None:
        pass

    kiln_function = sandbox._refuse  # a function of kiln's code, not the app's
    refused = {
        "open": (str(tmp_path / "new.txt"), "w", 0),
        sandbox._OPEN_AT: (str(tmp_path / "x"), 0o101),
        "socket.__new__": (None, 2, 1, 0),
        sandbox._CALL: ("make FIFOs", "os.mkfifo"),
        "object.__setattr__": (kiln_function, "__code__", app_function.__code__),
    }
    for event, args in refused.items():
        assert _refused(event, args, places), event
        assert sandbox._ruled(event), event


def test_loads_of_code_are_ruled_whatever_their_verdict(places):
    # compile, code.__new__ and marshal.loads are refused only for kiln's own files loaded by app code; the hook
    # must see them all to decide.
    for event in ("compile", "code.__new__", "marshal.loads"):
        assert sandbox._ruled(event)


def test_the_hooks_own_events_are_ruled():
    for event in (sandbox.APP_THREAD_EVENT, sandbox._BOOT, sandbox._QUERY, sandbox._START):
        assert sandbox._ruled(event)


@pytest.mark.parametrize("event", ["builtins.id", "sys._getframe", "object.__getattr__", "import", "time.sleep",
                                   "os.listdir", "os.scandir", "socket.connect", "socket.getaddrinfo",
                                   "glob.glob", "app.own.event"])
def test_events_no_rule_refuses_are_not_acted_on(event, places):
    assert not _refused(event, (pathlib.Path("/"), types.SimpleNamespace()), places)
    assert not sandbox._ruled(event)
