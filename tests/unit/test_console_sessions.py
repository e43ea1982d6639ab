"""The console's CSRF tokens (console/security.py): one per browser session, checked in one place."""

from __future__ import annotations

import pytest

from console.security import CsrfRefusedError, Sessions, allowed_hosts


def test_a_new_browser_gets_a_session_and_its_token_is_accepted():
    sessions = Sessions()
    token, session = sessions.token(None)
    assert session is not None
    sessions.check(session, token)
    assert sessions.token(session) == (token, None)  # the same session keeps its token


def test_another_sessions_token_is_refused():
    sessions = Sessions()
    _, session = sessions.token(None)
    theirs, _ = sessions.token(None)
    with pytest.raises(CsrfRefusedError):
        sessions.check(session, theirs)


@pytest.mark.parametrize("presented", [None, "", "guess"])
def test_a_missing_or_wrong_token_is_refused(presented):
    sessions = Sessions()
    _, session = sessions.token(None)
    with pytest.raises(CsrfRefusedError):
        sessions.check(session, presented)


def test_an_unknown_session_is_refused_even_with_a_token():
    sessions = Sessions()
    token, _ = sessions.token(None)
    with pytest.raises(CsrfRefusedError):
        sessions.check("planted-by-another-site", token)


def test_the_oldest_sessions_are_forgotten_past_the_limit():
    sessions = Sessions(limit=2)
    first, session = sessions.token(None)
    sessions.token(None)
    sessions.token(None)
    with pytest.raises(CsrfRefusedError):
        sessions.check(session, first)


def test_the_console_answers_its_own_names_at_its_port_only():
    hosts = allowed_hosts(8000, ["console.example:443"], "127.0.0.1")
    assert {"127.0.0.1:8000", "localhost:8000", "console.example:443"} <= hosts
    assert "localhost:8080" not in hosts and "evil.example:8000" not in hosts
