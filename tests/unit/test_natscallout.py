"""The NATS auth callout's answers (natscallout), without a server: what it signs and for whom. The server side
(nats-server accepting these answers and enforcing the permissions) is in tests/integration/test_nats_permissions."""

from __future__ import annotations

import base64
import secrets

import nkeys
import pytest

from kiln_platform import natsauth
from natscallout import callout as natscallout

APP_SECRET = "app-secret"
SEED = natsauth.new_issuer_seed()
SERVER = nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_SERVER))
USER_NKEY = nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)).public_key.decode()


def request(user: str, password: str, *, user_nkey: str = USER_NKEY) -> str:
    return natscallout.encode_jwt({"sub": "nats_user_auth_request", "aud": "nats-authorization-request", "nats": {
        "user_nkey": user_nkey, "server_id": {"id": "NSERVERID", "name": "a"},
        "connect_opts": {"user": user, "pass": password}, "client_info": {"host": "127.0.0.1"},
        "type": "authorization_request", "version": 2}}, SERVER)


def answer(user: str, password: str) -> dict:
    reply = natscallout.Callout(SEED, APP_SECRET).answer(request(user, password))
    assert reply is not None
    return natscallout.jwt_claims(reply)


def verified(token: str) -> bool:
    signed, _, sig = token.rpartition(".")
    return bool(nkeys.from_seed(SEED.encode()).verify(signed.encode(), base64.urlsafe_b64decode(sig + "==")))


def test_an_apps_password_gets_a_user_jwt_with_its_permissions_for_the_requested_key():
    response = answer("app-alpha", natsauth.app_password(APP_SECRET, "alpha"))
    assert (response["sub"], response["aud"]) == (USER_NKEY, "NSERVERID")
    assert response["iss"] == natsauth.issuer_public_key(SEED) and "error" not in response["nats"]
    user = natscallout.jwt_claims(response["nats"]["jwt"])
    assert (user["sub"], user["aud"], user["name"]) == (USER_NKEY, "$G", "app-alpha")
    assert user["nats"]["sub"]["allow"] == natsauth.app_permissions("alpha")["subscribe"]["allow"]
    assert user["nats"]["pub"]["allow"] == natsauth.app_permissions("alpha")["publish"]["allow"]
    assert verified(response["nats"]["jwt"])


def test_the_response_is_signed_by_the_issuer():
    reply = natscallout.Callout(SEED, APP_SECRET).answer(request("app-alpha", "x"))
    assert reply is not None and verified(reply)
    tampered = reply.replace(reply.split(".")[1], natscallout._b64(b'{"sub":"U"}'))
    with pytest.raises(nkeys.ErrInvalidSignature):
        verified(tampered)


@pytest.mark.parametrize("user, password", [
    ("app-alpha", "guess"),
    ("app-alpha", natsauth.app_password(APP_SECRET, "beta")),
    ("app-Al.pha", natsauth.app_password(APP_SECRET, "Al.pha")),
    ("alpha", natsauth.app_password(APP_SECRET, "alpha")),
    ("kiln", "anything"),
    ("", ""),
])
def test_other_credentials_get_an_error_and_no_jwt(user, password):
    response = answer(user, password)
    assert response["nats"]["error"] and "jwt" not in response["nats"]
    assert (response["sub"], response["aud"]) == (USER_NKEY, "NSERVERID")


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c", "x." + natscallout._b64(b"[1]") + ".y",
                                   "x." + natscallout._b64(b'{"nats": {}}') + ".y"])
def test_a_malformed_request_gets_no_answer(token):
    assert natscallout.Callout(SEED, APP_SECRET).answer(token) is None


def test_a_request_without_a_user_key_gets_no_answer():
    assert natscallout.Callout(SEED, APP_SECRET).answer(request("app-alpha", "x", user_nkey="Nnotauser")) is None


def test_the_issuer_must_be_an_account_seed():
    user_seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()
    for bad in (user_seed, "SAnot-a-seed", ""):
        with pytest.raises(ValueError):
            natsauth.issuer_public_key(bad)
    assert natsauth.issuer_public_key(SEED).startswith("A")


def test_the_server_configuration_lists_only_the_platform_and_the_issuer():
    block = natsauth.callout_server_config("pw", SEED)["authorization"]
    assert block["users"] == [{"user": natsauth.PLATFORM_USER, "password": "pw"}]
    assert block["auth_callout"] == {"issuer": natsauth.issuer_public_key(SEED),
                                     "auth_users": [natsauth.PLATFORM_USER]}


def test_natsauth_prints_a_new_seed_and_the_callout_block(capsys, monkeypatch):
    import json
    assert natsauth.main(["--new-callout-seed"]) == 0
    seed = capsys.readouterr().out.strip()
    monkeypatch.setenv("KILN_NATS_PLATFORM_PASSWORD", "pw")
    monkeypatch.setenv("KILN_NATS_CALLOUT_SEED", seed)
    assert natsauth.main(["--callout"]) == 0
    assert json.loads(capsys.readouterr().out) == natsauth.callout_server_config("pw", seed)


def test_natsauth_refuses_the_callout_block_without_a_valid_seed(capsys, monkeypatch):
    monkeypatch.setenv("KILN_NATS_PLATFORM_PASSWORD", "pw")
    monkeypatch.setenv("KILN_NATS_CALLOUT_SEED", "not-a-seed")
    assert natsauth.main(["--callout"]) == 2
    assert "KILN_NATS_CALLOUT_SEED" in capsys.readouterr().err
