"""router.users.Sessions: the session cookie's format, binding to one app, lifetime and renewal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from router.users import IDLE_SECONDS, MAX_SECONDS, RENEW_AFTER_SECONDS, Session, Sessions

SECRET = "unit-session-secret"
NOW = 1_800_000_000


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sessions(clock: Clock | None = None, secret: str = SECRET) -> Sessions:
    return Sessions(secret, auth_domain="gmail.com", clock=clock or Clock())


def payload_of(cookie: str) -> dict[str, object]:
    encoded = cookie.rpartition(".")[0]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def resign(cookie: str, change: dict[str, object], secret: str = SECRET) -> str:
    """The cookie with its payload changed and signed properly (what only the router can do)."""
    data = {**payload_of(cookie), **change}
    raw = json.dumps(data, separators=(",", ":")).encode()
    mac = hmac.new(secret.encode(), b"kiln-session-v2\x00" + raw, hashlib.sha256).hexdigest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + mac


def test_payload_names_the_app_email_admin_flag_and_both_times():
    cookie = sessions().encode(sessions().start("alpha", "ann@example.com", True))
    assert payload_of(cookie) == {"app": "alpha", "email": "ann@example.com", "admin": True,
                                  "issued": NOW, "expires": NOW + IDLE_SECONDS}


def test_cookie_reads_back_on_its_own_app():
    made = sessions()
    session = made.start("alpha", "ann@example.com", False)
    assert made.decode(made.encode(session), app="alpha") == session


@pytest.mark.parametrize("other", ["beta", "Alpha", "alpha ", "", "alpha.beta"])
def test_cookie_for_one_app_is_refused_on_any_other(other):
    made = sessions()
    assert made.decode(made.encode(made.start("alpha", "ann@example.com", True)), app=other) is None


def test_cookie_signed_with_another_secret_is_refused():
    cookie = sessions(secret="other").encode(sessions().start("alpha", "ann@example.com", False))
    assert sessions().decode(cookie, app="alpha") is None


@pytest.mark.parametrize("change", [{"admin": True}, {"app": "beta"}, {"email": "boss@example.com"},
                                    {"expires": NOW + MAX_SECONDS}])
def test_changed_payload_with_the_old_mac_is_refused(change):
    made = sessions()
    cookie = made.encode(made.start("alpha", "ann@example.com", False))
    forged = resign(cookie, change).rpartition(".")[0] + "." + cookie.rpartition(".")[2]
    assert made.decode(forged, app="alpha") is None


@pytest.mark.parametrize("mac", [
    "é" * 64,                       # Latin-1
    "０" * 64,                      # full-width digits (str.isdigit and int() accept them)
    "٣" * 64,                       # Arabic-Indic digits
    "a" * 63 + "\udcff",            # a byte that was not UTF-8, as aiohttp passes it on (surrogateescape)
    "a" * 63 + "\u00a0",            # no-break space
    "ｆ" * 64,                      # full-width hex letter
])
def test_non_ascii_mac_is_not_signed_in(mac):
    made = sessions()
    cookie = made.encode(made.start("alpha", "ann@example.com", False))
    assert made.decode(cookie.rpartition(".")[0] + "." + mac, app="alpha") is None


@pytest.mark.parametrize("value", ["", ".", "abc", "abc.", ".%s" % ("0" * 64), "é.%s" % ("0" * 64),
                                   "e30.%s" % ("0" * 63), "e30.%s" % ("0" * 65), "e30.%s" % ("A" * 64),
                                   '"e30.%s"' % ("0" * 64), "e30 .%s" % ("0" * 64), "x" * 10000])
def test_malformed_cookie_is_not_signed_in(value):
    assert sessions().decode(value, app="alpha") is None


@pytest.mark.parametrize("change", [
    {"admin": "true"}, {"admin": 1}, {"issued": float(NOW)}, {"expires": str(NOW + 60)}, {"expires": True},
    {"app": None}, {"email": ["ann@example.com"]}, {"extra": 1},
])
def test_properly_signed_payload_with_wrong_fields_is_refused(change):
    made = sessions()
    cookie = made.encode(made.start("alpha", "ann@example.com", False))
    assert made.decode(resign(cookie, change), app="alpha") is None


def test_cookie_of_the_old_unbound_format_is_refused():
    raw = json.dumps({"e": "ann@example.com", "a": True, "u": "1", "x": NOW + 3600}, separators=(",", ":")).encode()
    old = base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + hmac.new(
        SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert sessions().decode(old, app="alpha") is None


def test_idle_session_ends():
    clock = Clock()
    made = sessions(clock)
    cookie = made.encode(made.start("alpha", "ann@example.com", False))
    clock.now = NOW + IDLE_SECONDS - 1
    assert made.decode(cookie, app="alpha") is not None
    clock.now = NOW + IDLE_SECONDS
    assert made.decode(cookie, app="alpha") is None


def test_session_signed_to_outlive_the_absolute_limit_is_refused():
    made = sessions()
    cookie = made.encode(Session(app="alpha", email="ann@example.com", admin=False, issued=NOW - 3600,
                                 expires=NOW - 3600 + MAX_SECONDS + 1))
    assert made.decode(cookie, app="alpha") is None


def test_session_issued_in_the_future_is_refused():
    made = sessions()
    cookie = made.encode(Session(app="alpha", email="ann@example.com", admin=False, issued=NOW + 3600,
                                 expires=NOW + 3600 + IDLE_SECONDS))
    assert made.decode(cookie, app="alpha") is None


def test_fresh_session_is_not_renewed():
    clock = Clock()
    made = sessions(clock)
    session = made.start("alpha", "ann@example.com", False)
    clock.now = NOW + RENEW_AFTER_SECONDS - 1
    assert made.renewed(session) is None


def test_session_in_use_is_renewed_for_another_idle_period_from_now():
    clock = Clock()
    made = sessions(clock)
    session = made.start("alpha", "ann@example.com", True)
    clock.now = NOW + RENEW_AFTER_SECONDS
    renewed = made.renewed(session)
    assert renewed == Session(app="alpha", email="ann@example.com", admin=True, issued=NOW,
                              expires=NOW + RENEW_AFTER_SECONDS + IDLE_SECONDS)
    assert made.decode(made.encode(renewed), app="alpha") == renewed


def test_renewal_never_passes_the_absolute_limit():
    clock = Clock()
    made = sessions(clock)
    session = made.start("alpha", "ann@example.com", False)
    ends = []
    for hour in range(1, 30):  # used every hour: renewed each time until the limit
        clock.now = NOW + hour * 3600
        if made.decode(made.encode(session), app="alpha") is None:
            break
        session = made.renewed(session) or session
        ends.append(session.expires)
    assert max(ends) == NOW + MAX_SECONDS
    assert clock.now == NOW + MAX_SECONDS  # refused exactly at the limit
