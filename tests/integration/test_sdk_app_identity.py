"""A python27-style app on Google's SDK uses ``google.appengine.api.app_identity`` under kiln dev, unmodified:
``sign_blob``, ``get_public_certificates`` and ``get_access_token`` (which the SDK asks of the metadata server,
answered in the app's process by the runtime) through kiln's identity service. The test checks what the app got
with ``cryptography`` and PyJWT, as a third party would."""

from __future__ import annotations

import base64
import json
import textwrap
import time
import urllib.parse

import jwt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

MAIN = textwrap.dedent(r'''
    import base64, json, urllib.parse
    import requests
    from google.appengine.api import app_identity

    METADATA = "http://metadata.google.internal/computeMetadata/v1/"

    def answer(path, query):
        if path == "/sign":
            key_name, signature = app_identity.sign_blob(query["data"].encode())
            return {"key_name": key_name, "signature": base64.b64encode(signature).decode()}
        if path == "/sign-size":
            key_name, _ = app_identity.sign_blob(b"x" * int(query["size"]))
            return {"key_name": key_name}
        if path == "/certs":
            return {"certs": [[c.key_name, c.x509_certificate_pem] for c in app_identity.get_public_certificates()]}
        if path == "/token":
            scopes = [s for s in query.get("scopes", "").split(" ") if s]
            token, expires = app_identity.get_access_token(scopes, query.get("account"))
            return {"token": token, "expires": expires}
        if path == "/metadata":
            flavor = query.get("flavor", "Google")
            reply = requests.get(METADATA + query["at"], headers={} if flavor == "none" else {"Metadata-Flavor": flavor})
            return {"status": reply.status_code, "text": reply.text}
        return {}

    def app(environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
        try:
            body = answer(environ["PATH_INFO"], query)
        except Exception as exc:
            body = {"error": type(exc).__name__, "message": str(exc)}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')

APP_YAML = "application: signer\n" + ("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("identity"), {"main.py": MAIN}, app_yaml=APP_YAML) as srv:
        yield srv


def get(server, path, **query):
    status, _, body = fetch(server, path + "?" + urllib.parse.urlencode(query))
    assert status == 200, body
    return json.loads(body)


def certificates(server):
    return {name: x509.load_pem_x509_certificate(pem.encode()) for name, pem in get(server, "/certs")["certs"]}


def verifies(cert, data, signature):
    try:
        cert.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_the_sdks_sign_blob_verifies_with_the_certificate_from_get_public_certificates(server):
    signed = get(server, "/sign", data="sign me")
    certs = certificates(server)
    signature = base64.b64decode(signed["signature"])
    assert verifies(certs[signed["key_name"]], b"sign me", signature)
    assert not verifies(certs[signed["key_name"]], b"sign me!", signature)
    assert list(certs)[0] == signed["key_name"]  # the current key first


def test_an_oversize_blob_raises_the_sdks_blob_size_too_large_and_the_app_keeps_signing(server):
    found = get(server, "/sign-size", size=str(1024 * 1024 + 1))
    assert found["error"] == "BlobSizeTooLarge" and "limit is 1048576" in found["message"]
    assert get(server, "/sign-size", size=str(1024 * 1024))["key_name"]


def test_the_sdks_get_access_token_returns_a_token_that_verifies_and_names_the_app_and_scope(server):
    found = get(server, "/token", scopes="https://www.googleapis.com/auth/userinfo.email custom")
    certs = certificates(server)
    kid = jwt.get_unverified_header(found["token"])["kid"]
    claims = jwt.decode(found["token"], certs[kid].public_key(), algorithms=["RS256"])
    assert claims["app_id"] == "signer" and claims["sub"] == "signer@localhost"
    assert claims["scope"] == "https://www.googleapis.com/auth/userinfo.email custom"
    assert abs(found["expires"] - claims["exp"]) <= 2 and 3500 <= claims["exp"] - time.time() <= 3600


def test_no_scope_raises_the_sdks_invalid_scope(server):
    assert get(server, "/token", scopes="")["error"] == "InvalidScope"


@pytest.mark.parametrize("scopes", ["caf\u00e9", "x" * 513])
def test_a_malformed_scope_is_refused_by_kilns_metadata_server_naming_it(server, scopes):
    found = get(server, "/token", scopes=scopes)
    assert found["error"] == "TransportError" and "Status: 400" in found["message"]
    assert "is not a scope" in found["message"]


@pytest.mark.parametrize("account", ["other-app@localhost", "someone@example.com"])
def test_a_token_for_another_service_account_cannot_be_obtained(server, account):
    found = get(server, "/token", scopes="email", account=account)
    assert found["error"] == "TransportError" and "Status: 404" in found["message"]
    assert "an app has only its own (signer@localhost)" in found["message"]


@pytest.mark.parametrize("path, expected", [
    ("instance/service-accounts/default/email", "signer@localhost"),
    ("instance/service-accounts/signer@localhost/email", "signer@localhost"),
    ("project/project-id", "signer"),
])
def test_the_metadata_server_answers_the_apps_identity(server, path, expected):
    assert get(server, "/metadata", at=path) == {"status": 200, "text": expected}


@pytest.mark.parametrize("path, flavor, status", [
    ("instance/service-accounts/default/email", "none", 403),
    ("instance/service-accounts/default/email", "Other", 403),
    ("instance/attributes/", "Google", 404),
    ("instance/service-accounts/default/identity", "Google", 404),
])
def test_the_metadata_server_refuses_what_it_does_not_answer(server, path, flavor, status):
    assert get(server, "/metadata", at=path, flavor=flavor)["status"] == status


def test_kiln_dev_gives_the_app_a_new_key_each_run_as_its_key_secret_is_in_no_file(tmp_path):
    with running(tmp_path, {"main.py": MAIN}, app_yaml=APP_YAML) as first:
        signed = get(first, "/sign", data="before")
        key_secret = first.secrets["identity_key"]
        assert not [p for p in first.data_dir.rglob("*") if p.is_file() and key_secret.encode() in p.read_bytes()]
    with running(tmp_path, {"main.py": MAIN}, app_yaml=APP_YAML) as second:
        renewed = get(second, "/sign", data="after")
        certs = certificates(second)
        assert renewed["key_name"] != signed["key_name"] and signed["key_name"] not in certs
        assert verifies(certs[renewed["key_name"]], b"after", base64.b64decode(renewed["signature"]))
