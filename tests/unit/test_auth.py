"""kiln.auth: app identity tokens."""

import pytest

from kiln import auth
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
