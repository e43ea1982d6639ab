"""identity_svc's pure parts: keys sealed at rest, names, certificates, signatures, scopes, access tokens, and the
keyring's periods over a real SQLite store with a clock the test moves (no sockets)."""

from __future__ import annotations

import asyncio
import dataclasses

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from identity_svc import errors, keys
from identity_svc.config import IdentityConfig
from identity_svc.keyring import Keyring
from identity_svc.store import SqliteKeyStore
from kiln.errors import ConfigError
from kiln_platform.config import load

SECRET = "unit-identity-key-secret"
ROTATION = keys.Rotation(100)


@pytest.fixture(scope="module")
def made():
    return keys.new_key("unit-app", 1000, ROTATION, 60, keys.Sealer(SECRET))


# --- periods -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("now, start", [(0, 0), (99.9, 0), (100, 100), (1234.5, 1200)])
def test_a_moment_falls_in_the_period_that_starts_at_the_last_multiple_of_the_rotation(now, start):
    assert ROTATION.start(now) == start


@pytest.mark.parametrize("seconds, cache", [(2, 1), (100, 25), (86_400, 3600)])
def test_clients_may_cache_certificates_for_a_quarter_period_at_most_an_hour(seconds, cache):
    assert keys.Rotation(seconds).cache_seconds() == cache


# --- keys, certificates, signatures --------------------------------------------------------------------------------

def test_a_key_is_named_by_the_sha1_of_its_certificates_public_key(made):
    stored, private_key = made
    cert = x509.load_pem_x509_certificate(stored.certificate_pem.encode())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA1())
    digest.update(der)
    assert stored.key_name == digest.finalize().hex() == keys.key_name(private_key.public_key())


def test_the_certificate_names_the_app_and_is_valid_while_published(made):
    cert = x509.load_pem_x509_certificate(made[0].certificate_pem.encode())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "unit-app"
    assert cert.issuer == cert.subject and cert.signature_hash_algorithm.name == "sha256"
    assert cert.not_valid_before_utc.timestamp() == 1000
    assert cert.not_valid_after_utc.timestamp() == 1000 + 2 * 100 + 60


def test_a_signature_is_pkcs1_v1_5_over_sha256(made):
    stored, private_key = made
    cert = x509.load_pem_x509_certificate(stored.certificate_pem.encode())
    signature = keys.sign(private_key, b"data")
    cert.public_key().verify(signature, b"data", padding.PKCS1v15(), hashes.SHA256())
    assert len(signature) == 256


# --- sealing -------------------------------------------------------------------------------------------------------

def test_a_sealed_key_opens_with_the_same_key_secret(made):
    stored, private_key = made
    assert keys.Sealer(SECRET).open(stored).private_numbers() == private_key.private_numbers()


def test_the_stored_form_holds_no_readable_private_key(made):
    stored, private_key = made
    der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    assert der[40:80] not in stored.sealed and b"PRIVATE" not in stored.sealed


@pytest.mark.parametrize("change", [
    lambda s: (keys.Sealer("another-key-secret-entirely"), s),
    lambda s: (keys.Sealer(SECRET), dataclasses.replace(s, app="other-app")),  # a row copied to another app
    lambda s: (keys.Sealer(SECRET), dataclasses.replace(s, key_name="0" * 40)),
    lambda s: (keys.Sealer(SECRET), dataclasses.replace(s, sealed=s.sealed[:-1] + bytes([s.sealed[-1] ^ 1]))),
])
def test_a_sealed_key_does_not_open_under_another_secret_app_name_or_when_altered(made, change):
    sealer, stored = change(made[0])
    with pytest.raises(keys.SealError, match="does not open with this key_secret"):
        sealer.open(stored)


# --- scopes and tokens ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scopes", [["email"], ["https://www.googleapis.com/auth/cloud-platform", "a:b"],
                                    ["x" * 512], [f"s{i}" for i in range(32)]])
def test_well_formed_scopes_are_accepted(scopes):
    assert keys.scope_problem(scopes) is None


@pytest.mark.parametrize("scopes, reason", [
    ([], "no scope given"), ([""], "is not a scope"), (["a b"], "is not a scope"), (["a,b"], "is not a scope"),
    (["tab\there"], "is not a scope"), (["\u00fcber"], "is not a scope"), (["x" * 513], "is not a scope"),
    ([f"s{i}" for i in range(33)], "33 scopes; at most 32"),
])
def test_malformed_scopes_are_named(scopes, reason):
    assert reason in keys.scope_problem(scopes)


def test_an_access_token_names_the_app_account_and_scopes_and_its_key(made):
    stored, private_key = made
    token, expires = keys.access_token(app="unit-app", account="unit-app@localhost", scopes=["a", "b:c"], key=stored,
                                       private_key=private_key, now=2_000_000_000, lifetime=3600)
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": stored.key_name}
    claims = jwt.decode(token, private_key.public_key(), algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False})
    assert claims == {"iss": "unit-app@localhost", "sub": "unit-app@localhost", "app_id": "unit-app", "scope": "a b:c",
                      "iat": 2_000_000_000, "exp": 2_000_003_600} and expires == 2_000_003_600


def test_an_expired_access_token_does_not_verify(made):
    stored, private_key = made
    token, _ = keys.access_token(app="unit-app", account="unit-app@localhost", scopes=["a"], key=stored,
                                 private_key=private_key, now=1000, lifetime=60)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, private_key.public_key(), algorithms=["RS256"])


# --- the keyring over a real store ---------------------------------------------------------------------------------

class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


_RINGS: list[Keyring] = []


@pytest.fixture
async def store(tmp_path):
    found = SqliteKeyStore(tmp_path / "keys.sqlite3")
    await found.open()
    yield found
    while _RINGS:  # keys being made ahead finish before their store closes
        await _RINGS.pop().settle()
    await found.close()


def keyring(store, clock, secret=SECRET):
    _RINGS.append(Keyring(store, keys.Sealer(secret), ROTATION, token_seconds=60, clock=clock))
    return _RINGS[-1]


async def test_an_app_signs_with_one_key_throughout_a_period(store):
    clock = Clock(1000)
    ring = keyring(store, clock)
    first, _ = await ring.current("app")
    clock.now = 1099
    assert (await ring.current("app"))[0].key_name == first.key_name


async def test_apps_have_keys_of_their_own(store):
    ring = keyring(store, Clock(1000))
    assert (await ring.current("one"))[0].key_name != (await ring.current("two"))[0].key_name


async def test_a_new_period_makes_the_announced_next_key_current_and_keeps_the_previous_published(store):
    clock = Clock(1000)
    ring = keyring(store, clock)
    old, _ = await ring.current("app")
    published = await ring.published("app")
    assert [k.key_name for k in published][:1] == [old.key_name] and len(published) == 2
    clock.now = 1100
    new, _ = await ring.current("app")
    assert new.key_name == published[1].key_name  # the key announced a period ahead
    names = [k.key_name for k in await ring.published("app")]
    assert names[0] == new.key_name and names[2] == old.key_name and len(names) == 3
    clock.now = 1300
    assert old.key_name not in [k.key_name for k in await ring.published("app")]


async def test_signing_makes_the_next_key_ahead_so_a_lookup_already_finds_it(store):
    clock = Clock(1000)
    ring = keyring(store, clock)
    current, _ = await ring.current("app")
    await ring.settle()
    announced = [k.key_name for k in await ring.published_existing("app")]
    assert announced[0] == current.key_name and len(announced) == 2
    clock.now = 1100
    assert (await ring.current("app"))[0].key_name == announced[1]


async def test_a_lookup_by_anyone_makes_no_key(store):
    ring = keyring(store, Clock(1000))
    assert await ring.published_existing("never-signed") == []
    assert await store.since("never-signed", 0) == []


async def test_replicas_racing_for_a_period_sign_with_the_same_key(store):
    rings = [keyring(store, Clock(1000)) for _ in range(3)]
    found = await asyncio.gather(*(ring.current("raced") for ring in rings for _ in range(3)))
    assert len({stored.key_name for stored, _ in found}) == 1
    for ring in rings:
        await ring.settle()
    assert [k.period_start for k in await store.since("raced", 0)] == [1100, 1000]  # one each: this and the next


async def test_a_keyring_with_another_key_secret_refuses_the_stored_key_precisely(store):
    await keyring(store, Clock(1000)).current("app")
    with pytest.raises(errors.KeySecretMismatchError, match="does not open with this key_secret"):
        await keyring(store, Clock(1000), secret="another-key-secret-entirely").current("app")


async def test_keys_outlive_the_keyring_that_made_them(store):
    first, _ = await keyring(store, Clock(1000)).current("app")
    assert (await keyring(store, Clock(1050)).current("app"))[0].key_name == first.key_name


# --- settings ------------------------------------------------------------------------------------------------------

BASE = {"KILN_IDENTITY_SERVICE_SECRET": "s", "KILN_IDENTITY_KEY_SECRET": SECRET}


@pytest.mark.parametrize("env, reason", [
    ({"KILN_IDENTITY_KEY_SECRET": ""}, "key_secret: required"),
    ({"KILN_IDENTITY_KEY_SECRET": "short"}, "at least 16 characters"),
    ({"KILN_IDENTITY_ROTATION_SECONDS": "1"}, "rotation_seconds: must be at least 2"),
    ({"KILN_IDENTITY_ROTATION_SECONDS": "60"}, "access_token_seconds: must be from 1 to rotation_seconds"),
    ({"KILN_IDENTITY_ACCESS_TOKEN_SECONDS": "0"}, "access_token_seconds: must be from 1 to rotation_seconds"),
    ({"KILN_IDENTITY_APPS_DOMAIN": "a@b"}, "is not a domain name"),
])
def test_bad_settings_are_refused_naming_the_setting(env, reason):
    with pytest.raises(ConfigError, match=reason):
        load(IdentityConfig, prefix="IDENTITY", env={**BASE, **env})


def test_the_defaults_rotate_daily_with_hour_long_tokens():
    cfg = load(IdentityConfig, prefix="IDENTITY", env=BASE)
    assert (cfg.rotation_seconds, cfg.access_token_seconds, cfg.apps_domain) == (86_400, 3600, "localhost")
    assert "unit-identity" not in repr(cfg)
