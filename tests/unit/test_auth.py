"""kiln_platform.auth: app identity tokens."""

import pytest

from kiln_platform import auth
from kiln.errors import UnauthenticatedError


def test_token_verifies_to_its_app():
    token = auth.mint_app_token("secret", "guestbook")
    assert auth.verify_app_token("secret", token) == "guestbook"


def test_token_for_one_app_cannot_be_relabelled_for_another():
    token = auth.mint_app_token("secret", "guestbook")
    forged = "other" + token[len("guestbook"):]
    with pytest.raises(UnauthenticatedError):
        auth.verify_app_token("secret", forged)


def test_token_signed_with_another_secret_is_refused():
    with pytest.raises(UnauthenticatedError):
        auth.verify_app_token("secret", auth.mint_app_token("other-secret", "guestbook"))


def test_an_expiring_token_verifies_until_its_time():
    token = auth.mint_app_token("secret", "guestbook", expires_at=2000)
    assert auth.verify_app_token("secret", token, now=1999) == "guestbook"
    with pytest.raises(UnauthenticatedError, match="expired"):
        auth.verify_app_token("secret", token, now=2001)


def test_an_expiring_tokens_time_cannot_be_extended():
    token = auth.mint_app_token("secret", "guestbook", expires_at=2000)
    with pytest.raises(UnauthenticatedError, match="does not match"):
        auth.verify_app_token("secret", token.replace(".2000.", ".9999999999."), now=2001)


def test_an_expiring_token_cannot_pass_as_a_permanent_one():
    app, expires, mac = auth.mint_app_token("secret", "guestbook", expires_at=2000).split(".")
    with pytest.raises(UnauthenticatedError):
        auth.verify_app_token("secret", f"{app}.{mac}", now=0)


@pytest.mark.parametrize("token", ["guestbook.soon.abc", "guestbook..abc", "guestbook.1.2.abc", "Guest.1.abc"])
def test_malformed_expiring_tokens_are_refused(token):
    with pytest.raises(UnauthenticatedError, match="malformed"):
        auth.verify_app_token("secret", token)


def test_missing_metadata_is_unauthenticated():
    with pytest.raises(UnauthenticatedError, match="no app token"):
        auth.app_from_metadata("secret", ())


def test_metadata_needs_bearer_scheme():
    with pytest.raises(UnauthenticatedError, match="Bearer"):
        auth.app_from_metadata("secret", (("authorization", "Basic abc"),))



def test_an_inbound_signature_verifies_only_for_its_request_and_while_fresh():
    sig = auth.sign_inbound("s", "caller", "GET", "Target.Example.com", "/p?q=1", now=1000)
    assert auth.verify_inbound("s", sig, "caller", "get", "target.example.com", "/p?q=1", now=1030)
    assert not auth.verify_inbound("s", sig, "other", "GET", "target.example.com", "/p?q=1", now=1030)
    assert not auth.verify_inbound("s", sig, "caller", "POST", "target.example.com", "/p?q=1", now=1030)
    assert not auth.verify_inbound("s", sig, "caller", "GET", "target.example.com", "/p?q=2", now=1030)
    assert not auth.verify_inbound("s", sig, "caller", "GET", "target.example.com", "/p?q=1", now=1061)
    assert not auth.verify_inbound("other-secret", sig, "caller", "GET", "target.example.com", "/p?q=1", now=1030)
    assert not auth.verify_inbound("s", "garbage", "caller", "GET", "target.example.com", "/p?q=1", now=1030)


@pytest.mark.parametrize("value", ["Bearer guestbook.\u00e9", "Bearer \uff47uestbook.abc", b"Bearer \xff\xfe"])
def test_a_bearer_token_that_is_not_ascii_is_refused(value):
    with pytest.raises(UnauthenticatedError):
        auth.app_from_metadata("secret", (("authorization", value),))
