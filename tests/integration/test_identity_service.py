"""App identity: kiln.api.app_identity in this process against a real ``python -m identity_svc`` (embedded store).

Signatures and tokens are checked with ``cryptography`` and PyJWT against the certificates the service publishes,
as a third party would; every refused call is followed by one that must still succeed, so a service that died or
wedged on bad input fails the test that fed it."""

from __future__ import annotations

import re
import time

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from kiln.api import _rpc, app_identity
from kiln.pb.identity.v1 import identity_pb2 as pb
from kiln.pb.identity.v1 import identity_pb2_grpc
from kiln_platform import auth
from kiln_platform.supervisor import python_module
from tests.integration.conftest import SECRET, app_metadata, service_env

KEY_SECRET = "integration-identity-key-secret"


def start_identity(supervisor, name, data_dir, *extra, key_secret=KEY_SECRET):
    ready = supervisor.run_dir / f"{name}.addr"
    env = {**service_env(), "KILN_IDENTITY_SERVICE_SECRET": SECRET, "KILN_IDENTITY_KEY_SECRET": key_secret}
    return supervisor.start(name, python_module("identity_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                                                "--data-dir", str(data_dir), *extra), env=env, ready_file=ready)


def stop(supervisor, child):
    child.proc.terminate()
    child.proc.wait(30)
    supervisor.children.remove(child)


@pytest.fixture(scope="module")
def identity(supervisor, tmp_path_factory):
    return start_identity(supervisor, "identity_svc-test", tmp_path_factory.mktemp("identity"))


@pytest.fixture
def as_app(monkeypatch):
    def use(app_id, address):
        monkeypatch.setenv("KILN_IDENTITY_ADDR", address)
        monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app_id))
        _rpc.reset()
    yield use
    _rpc.reset()


def certificates():
    return {c.key_name: x509.load_pem_x509_certificate(c.x509_certificate_pem.encode())
            for c in app_identity.get_public_certificates()}


def verifies(cert, data, signature):
    try:
        cert.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def stub(address):
    return identity_pb2_grpc.IdentityServiceStub(grpc.insecure_channel(address))


# --- signing -----------------------------------------------------------------------------------------------------

def test_a_signature_verifies_with_the_apps_certificate_of_the_key_that_made_it(identity, as_app):
    as_app("signer", identity.address)
    for data in (b"", b"a blob to sign", bytes(range(256)) * 100):
        key_name, signature = app_identity.sign_blob(data)
        certs = certificates()
        assert len(signature) == 256 and verifies(certs[key_name], data, signature)
        assert not verifies(certs[key_name], data + b"!", signature)


def test_a_text_blob_is_signed_as_its_utf8_bytes(identity, as_app):
    as_app("signer", identity.address)
    key_name, signature = app_identity.sign_blob("grüße")
    assert verifies(certificates()[key_name], "grüße".encode(), signature)


def test_key_names_are_the_sha1_of_the_certificates_public_key(identity, as_app):
    as_app("signer", identity.address)
    app_identity.sign_blob(b"x")
    from cryptography.hazmat.primitives import serialization
    for name, cert in certificates().items():
        der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = hashes.Hash(hashes.SHA1())
        digest.update(der)
        assert re.fullmatch(r"[0-9a-f]{40}", name) and digest.finalize().hex() == name
        assert cert.public_key().key_size == 2048
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "signer"


def test_the_current_key_is_published_first_with_the_next_one(identity, as_app):
    as_app("signer", identity.address)
    key_name, _ = app_identity.sign_blob(b"x")
    found = app_identity.get_public_certificates()
    assert found[0].key_name == key_name and len(found) >= 2 and found[1].key_name != key_name


def test_another_apps_certificates_do_not_verify_the_first_apps_signature(identity, as_app):
    as_app("first", identity.address)
    key_name, signature = app_identity.sign_blob(b"signed by first")
    first = certificates()
    as_app("second", identity.address)
    second_name, second_signature = app_identity.sign_blob(b"signed by first")
    second = certificates()
    assert key_name not in second and second_name not in first
    assert not any(verifies(cert, b"signed by first", signature) for cert in second.values())
    assert not any(verifies(cert, b"signed by first", second_signature) for cert in first.values())


def test_an_oversize_blob_is_refused_with_blob_too_large_and_the_service_keeps_serving(identity, as_app):
    as_app("signer", identity.address)
    for size in (1024 * 1024 + 1, 4 * 1024 * 1024):
        with pytest.raises(app_identity.BlobSizeTooLarge, match=f"{size} bytes to sign; the limit is 1048576"):
            app_identity.sign_blob(b"x" * size)
        key_name, signature = app_identity.sign_blob(b"y" * (1024 * 1024))
        assert verifies(certificates()[key_name], b"y" * (1024 * 1024), signature)


# --- who may call ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [
    None,  # no credentials
    "",
    auth.mint_app_token("another-deployments-secret", "first"),  # minted without the deployment's secret
    "first." + auth.mint_app_token(SECRET, "second").rpartition(".")[2],  # the first app's id, the second's MAC
    "first",
    "first.0123456789abcdef",
])
def test_a_call_without_the_apps_own_token_is_refused_and_the_service_keeps_serving(identity, token):
    client = stub(identity.address)
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    for call, request in ((client.SignForApp, pb.SignForAppRequest(bytes_to_sign=b"x")),
                          (client.GetAccessToken, pb.GetAccessTokenRequest(scopes=["email"])),
                          (client.GetPublicCertificates, pb.GetPublicCertificatesRequest())):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=metadata, timeout=30)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    signed = client.SignForApp(pb.SignForAppRequest(bytes_to_sign=b"x"), metadata=app_metadata("first"), timeout=30)
    assert len(signed.signature) == 256


def test_anyone_can_read_an_apps_certificates_and_the_lookup_makes_no_key(identity, as_app):
    as_app("published", identity.address)
    key_name, _ = app_identity.sign_blob(b"x")
    client = stub(identity.address)
    found = client.GetAppCertificates(pb.GetAppCertificatesRequest(app_id="published"), timeout=30)
    assert found.certificates[0].key_name == key_name and found.max_client_cache_time_seconds > 0
    never = client.GetAppCertificates(pb.GetAppCertificatesRequest(app_id="never-signed"), timeout=30)
    assert list(never.certificates) == []
    assert list(client.GetAppCertificates(pb.GetAppCertificatesRequest(app_id="never-signed"),
                                          timeout=30).certificates) == []


@pytest.mark.parametrize("app_id", ["", "Upper", "has space", "-leading", "x" * 64])
def test_a_certificate_lookup_for_what_is_no_app_id_is_refused_precisely(identity, app_id):
    client = stub(identity.address)
    with pytest.raises(grpc.RpcError) as caught:
        client.GetAppCertificates(pb.GetAppCertificatesRequest(app_id=app_id), timeout=30)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "is not an app id" in caught.value.details()
    assert dict(caught.value.trailing_metadata())["kiln-error-code"] == "NOT_A_VALID_APP"


# --- access tokens -----------------------------------------------------------------------------------------------

def decoded(token, certs):
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.decode(token, certs[kid].public_key(), algorithms=["RS256"])


def test_an_access_token_verifies_with_the_apps_certificates_and_names_the_app_and_scopes(identity, as_app):
    as_app("tokens", identity.address)
    scopes = ["https://www.googleapis.com/auth/userinfo.email", "custom:read"]
    token, expires = app_identity.get_access_token(scopes)
    claims = decoded(token, certificates())
    assert claims["app_id"] == "tokens" and claims["sub"] == claims["iss"] == "tokens@localhost"
    assert claims["scope"] == " ".join(scopes) and claims["exp"] == expires
    assert 3500 <= expires - time.time() <= 3600


def test_a_token_of_one_app_names_that_app_and_does_not_verify_with_anothers_certificates(identity, as_app):
    as_app("tokens", identity.address)
    first_token, _ = app_identity.get_access_token("email")
    first_certs = certificates()
    as_app("intruder", identity.address)
    second_token, _ = app_identity.get_access_token("email")
    assert decoded(second_token, certificates())["app_id"] == "intruder"
    kid = jwt.get_unverified_header(second_token)["kid"]
    assert kid not in first_certs
    for cert in first_certs.values():
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(second_token, cert.public_key(), algorithms=["RS256"])
    assert decoded(first_token, first_certs)["app_id"] == "tokens"


def test_a_token_altered_anywhere_does_not_verify(identity, as_app):
    as_app("tokens", identity.address)
    token, _ = app_identity.get_access_token(["email"])
    certs = certificates()
    header, payload, signature = token.split(".")
    claims = decoded(token, certs)
    forged_payload = jwt.utils.base64url_encode(
        jwt.api_jws.json.dumps({**claims, "app_id": "other-app"}, separators=(",", ":")).encode()).decode()
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    for forged in (f"{header}.{forged_payload}.{signature}", f"{header}.{payload}.{flipped}"):
        with pytest.raises(jwt.InvalidSignatureError):
            decoded(forged, certs)


@pytest.mark.parametrize("scopes, reason", [
    ([], "no scope given"),
    ([""], "is not a scope"),
    (["two words"], "is not a scope"),
    (["a,b"], "is not a scope"),
    (["x" * 513], "is not a scope"),
    (["caf\u00e9"], "is not a scope"),
    ([f"s{i}" for i in range(33)], "33 scopes; at most 32"),
])
def test_bad_scopes_are_refused_with_invalid_scope_and_the_service_keeps_serving(identity, as_app, scopes, reason):
    as_app("tokens", identity.address)
    with pytest.raises(app_identity.InvalidScope, match=reason):
        app_identity.access_token(scopes)
    assert app_identity.get_access_token(["email"])[0]


def test_the_sdks_empty_scope_is_refused_before_any_call():
    with pytest.raises(app_identity.InvalidScope, match="No scopes specified"):
        app_identity.get_access_token([])


# --- keys at rest --------------------------------------------------------------------------------------------------

def test_keys_survive_a_restart_of_the_service(supervisor, tmp_path, as_app):
    first = start_identity(supervisor, "identity_svc-restart", tmp_path)
    as_app("durable", first.address)
    key_name, signature = app_identity.sign_blob(b"before the restart")
    stop(supervisor, first)
    second = start_identity(supervisor, "identity_svc-restart", tmp_path)
    as_app("durable", second.address)
    assert app_identity.sign_blob(b"after")[0] == key_name
    assert verifies(certificates()[key_name], b"before the restart", signature)
    stop(supervisor, second)


def test_stored_keys_are_sealed_and_another_key_secret_cannot_use_them(supervisor, tmp_path, as_app):
    first = start_identity(supervisor, "identity_svc-sealed", tmp_path)
    as_app("sealed", first.address)
    app_identity.sign_blob(b"x")
    stop(supervisor, first)
    assert b"PRIVATE KEY" not in (tmp_path / "keys.sqlite3").read_bytes()
    other = start_identity(supervisor, "identity_svc-sealed", tmp_path, key_secret="not-the-same-key-secret")
    as_app("sealed", other.address)
    with pytest.raises(app_identity.InternalError, match="does not open with this key_secret"):
        app_identity.sign_blob(b"x")
    as_app("fresh-app", other.address)
    assert app_identity.sign_blob(b"x")[0]  # other apps' keys are unaffected; the service keeps serving
    stop(supervisor, other)


# --- rotation ------------------------------------------------------------------------------------------------------

ROTATION = 8


def wait_for_new_key(old, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key_name, signature = app_identity.sign_blob(b"after the rotation")
        if key_name != old:
            return key_name, signature
        time.sleep(0.2)
    raise AssertionError(f"no new key within {seconds}s")


def test_a_new_key_becomes_current_each_period_and_the_previous_stays_published(supervisor, tmp_path, as_app):
    svc = start_identity(supervisor, "identity_svc-rotation", tmp_path, "--rotation-seconds", str(ROTATION),
                         "--access-token-seconds", "4")
    as_app("rotating", svc.address)
    for _ in range(3):  # a period boundary may fall between two calls: then observe the next rotation
        old_name, old_signature = app_identity.sign_blob(b"before the rotation")
        announced = app_identity.get_public_certificates()[1].key_name  # the next key, published ahead
        new_name, new_signature = wait_for_new_key(old_name, 3 * ROTATION)
        certs = app_identity.get_public_certificates()
        if app_identity.sign_blob(b"x")[0] != new_name:
            continue
        break
    names = [c.key_name for c in certs]
    assert names[0] == new_name == announced and old_name in names
    loaded = certificates()
    assert verifies(loaded[old_name], b"before the rotation", old_signature)
    assert verifies(loaded[new_name], b"after the rotation", new_signature)
    newest = wait_for_new_key(wait_for_new_key(new_name, 3 * ROTATION)[0], 3 * ROTATION)[0]
    assert old_name not in [c.key_name for c in app_identity.get_public_certificates()] and newest != old_name
    stop(supervisor, svc)


# --- Cassandra: replicas share keys --------------------------------------------------------------------------------

@pytest.mark.cassandra
def test_replicas_on_cassandra_racing_to_make_an_apps_first_key_all_sign_with_one(supervisor, tmp_path,
                                                                                   cassandra_hosts):
    import concurrent.futures
    import uuid

    storage = ("--storage", "cassandra", "--cassandra-hosts", cassandra_hosts, "--cassandra-keyspace",
               "kiln_identity_test")
    replicas = [start_identity(supervisor, f"identity_svc-cassandra-{n}", tmp_path / str(n), *storage)
                for n in range(2)]
    try:
        for _ in range(3):  # three fresh apps, each raced for from both replicas at once
            app = "raced-" + uuid.uuid4().hex[:8]
            clients = [stub(r.address) for r in replicas]

            def sign(n, clients=clients, app=app):
                return clients[n % 2].SignForApp(pb.SignForAppRequest(bytes_to_sign=b"race"),
                                                 metadata=app_metadata(app), timeout=60).key_name
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                names = set(pool.map(sign, range(16)))
            assert len(names) == 1
            published = [[c.key_name for c in client.GetPublicCertificates(
                pb.GetPublicCertificatesRequest(), metadata=app_metadata(app), timeout=60).certificates]
                for client in clients]
            assert published[0] == published[1] and published[0][0] in names
    finally:
        for replica in replicas:
            stop(supervisor, replica)
