"""kiln_platform.signing: the one HMAC and comparison every kiln token uses."""

from __future__ import annotations

import pytest

from kiln_platform import auth, signing

SECRET = "s3cret"


def test_a_mac_verifies_for_its_purpose_and_fields():
    mac = signing.sign(SECRET, "kiln-test", "a", "b")
    assert signing.verify(SECRET, "kiln-test", mac, "a", "b")


def test_a_mac_for_one_purpose_does_not_verify_for_another():
    mac = signing.sign(SECRET, "kiln-app", "guestbook")
    assert not signing.verify(SECRET, "kiln-deploy", mac, "guestbook")


def test_a_mac_does_not_verify_under_another_secret():
    assert not signing.verify("other", "kiln-test", signing.sign(SECRET, "kiln-test", "a"), "a")


def test_moving_text_between_fields_changes_the_mac():
    assert signing.sign(SECRET, "kiln-test", "ab", "c") != signing.sign(SECRET, "kiln-test", "a", "bc")


@pytest.mark.parametrize("mac", ["é" * 64, "０" * 64, "\u0661" * 64, "A" * 64, "", "a" * 63, "a" * 65, "g" * 64,
                                 " " + "a" * 63])
def test_malformed_macs_are_refused_without_an_error(mac):
    assert signing.verify(SECRET, "kiln-test", mac, "a") is False


def test_fields_with_newlines_cannot_be_signed_or_verified():
    with pytest.raises(ValueError):
        signing.sign(SECRET, "kiln-test", "a\nb")
    assert signing.verify(SECRET, "kiln-test", signing.sign(SECRET, "kiln-test", "a", "b"), "a\nb") is False


def test_an_empty_secret_signs_nothing_and_verifies_nothing():
    with pytest.raises(ValueError):
        signing.sign("", "kiln-test", "a")
    assert signing.verify("", "kiln-test", "a" * 64, "a") is False


def test_a_stamped_signature_gives_back_its_stamp():
    value = signing.sign_stamped(SECRET, "kiln-test", 1_700_000_000, "x")
    assert signing.verify_stamped(SECRET, "kiln-test", value, "x") == 1_700_000_000


@pytest.mark.parametrize("stamp", ["１７００", "\u0661\u0662", "-1", "1e9", "0x10", "1" * 13, ""])
def test_stamps_that_are_not_ascii_digits_are_refused(stamp):
    mac = signing.sign(SECRET, "kiln-test", stamp, "x") if stamp else "a" * 64
    assert signing.verify_stamped(SECRET, "kiln-test", f"{stamp}.{mac}", "x") is None


@pytest.mark.parametrize("verify", [
    lambda sig: auth.verify_platform(SECRET, sig, "cron", "GET", "app.example.com", "/", now=0),
    lambda sig: auth.verify_inbound(SECRET, sig, "guestbook", "GET", "app.example.com", "/", now=0),
    lambda sig: auth.verify_user(SECRET, sig, "guestbook", "a@example.com", now=0),
])
@pytest.mark.parametrize("signature", ["0.é", "０.abc", "1.\udcff", "\u0661.ab", "é", "1." + "ä" * 64])
def test_request_signatures_with_non_ascii_text_are_refused(verify, signature):
    assert verify(signature) is False


def test_fields_holding_undecodable_bytes_are_signed_not_an_error():
    path = b"/caf\xe9".decode("utf-8", "surrogateescape")
    assert signing.verify(SECRET, "kiln-test", signing.sign(SECRET, "kiln-test", path), path)


def test_no_module_of_kiln_but_the_signing_module_uses_hmac():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[2]
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if ".venv" not in p.parts and "tests" not in p.parts and "import hmac" in p.read_text())
    assert users == ["kiln_platform/signing.py"]


@pytest.mark.parametrize("given", ["nonce", "nonc", "nonce ", "n\u00f6nce", b"\xff".decode("utf-8", "surrogateescape"),
                                   ""])
def test_secrets_are_compared_exactly_for_any_input(given):
    assert signing.same_secret(given, "nonce") is (given == "nonce")
