"""App credentials toward services (kiln_platform/appcalls.py, used by the router and the console)."""

from __future__ import annotations

import pytest

from kiln.errors import UnauthenticatedError
from kiln_platform import auth
from kiln_platform.appcalls import AppCredentials

SECRET = "s" * 32


def token_of(metadata: tuple[tuple[str, str], ...]) -> str:
    return auth.bearer_token(metadata)


def test_the_metadata_authenticates_as_the_named_app():
    creds = AppCredentials(SECRET)
    assert auth.verify_app_token(SECRET, token_of(creds.metadata("alpha"))) == "alpha"
    assert auth.verify_app_token(SECRET, token_of(creds.metadata("beta"))) == "beta"


def test_the_token_expires():
    token = token_of(AppCredentials(SECRET, token_seconds=60).metadata("alpha", now=1_000))
    assert auth.verify_app_token(SECRET, token, now=1_059) == "alpha"
    with pytest.raises(UnauthenticatedError):
        auth.verify_app_token(SECRET, token, now=1_061)


def test_a_token_is_reused_until_half_its_life_then_minted_again():
    creds = AppCredentials(SECRET, token_seconds=60)
    first = creds.metadata("alpha", now=1_000)
    assert creds.metadata("alpha", now=1_029) is first
    renewed = creds.metadata("alpha", now=1_031)
    assert renewed != first
    assert auth.verify_app_token(SECRET, token_of(renewed), now=1_090) == "alpha"


def test_an_invalid_app_id_is_refused():
    with pytest.raises(ValueError):
        AppCredentials(SECRET).metadata("Not An App")


def test_no_secret_is_refused():
    with pytest.raises(ValueError):
        AppCredentials("")
