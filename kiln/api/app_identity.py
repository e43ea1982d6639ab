"""App Engine's App Identity API (``google.appengine.api.app_identity``) for kiln apps.

- ``get_application_id()``, ``get_default_version_hostname()``: from the instance's and the request's
  environment, as App Engine's SDK read them.
- ``get_service_account_name()``: ``APP_ID@DOMAIN``, where DOMAIN is the deployment's apps domain, read from the
  request's ``DEFAULT_VERSION_HOSTNAME`` (``APP_ID.DOMAIN[:port]``; under ``kiln dev``, ``localhost``). On App
  Engine it was a Google account other Google services accepted; kiln's names the app, and no Google service knows
  it.
- ``sign_blob(bytes)`` → ``(key_name, signature)``: RSASSA-PKCS1-v1_5 over SHA-256 with the app's current key,
  which kiln's identity service holds (private keys never reach the app's instance); at most 1 MiB
  (``BlobSizeTooLarge``).
- ``get_public_certificates()`` → ``PublicCertificate`` (``key_name``, ``x509_certificate_pem``) of the current
  key, the next one and the previous one: verify a signature with the certificate whose ``key_name`` it came with.
- ``get_access_token(scopes)`` → ``(token, expiry)``: a JWT (RS256, ``kid`` the key name) naming the app
  (``app_id``, ``sub`` the service account) and the scopes (``scope``), valid for an hour, that anyone can verify
  with the app's certificates. **Google's APIs do not accept it**: kiln is not Google's OAuth server. Scopes must
  be non-empty (``InvalidScope``).

Each call goes to ``identity_svc`` with the app's token: an app can sign, and obtain tokens, only as itself.
"""

from __future__ import annotations

import os

from kiln.api import _rpc
from kiln.pb.identity.v1 import identity_pb2 as pb
from kiln.pb.identity.v1 import identity_pb2_grpc

__all__ = ["BackendDeadlineExceeded", "BlobSizeTooLarge", "Error", "InternalError", "InvalidScope", "NotAllowed",
           "OperationNotImplemented", "PublicCertificate", "get_access_token", "get_application_id",
           "get_default_version_hostname", "get_public_certificates", "get_service_account_name",
           "service_account_name", "sign_blob"]

DEFAULT_DEADLINE = 5.0


class Error(Exception):
    """Root of the App Identity API's errors."""


class BackendDeadlineExceeded(Error):
    """The identity service did not answer in time."""


class BlobSizeTooLarge(Error):
    """The bytes to sign are over the limit (1 MiB)."""


class InternalError(Error):
    """The identity service failed."""


class InvalidScope(Error):
    """No scope, or a malformed one."""


class NotAllowed(Error):
    """The operation is not allowed."""


class OperationNotImplemented(Error):
    """The operation is not implemented."""


_ERRORS = _rpc.ErrorTable(codes={"BLOB_TOO_LARGE": BlobSizeTooLarge, "UNKNOWN_SCOPE": InvalidScope,
                                 "DEADLINE_EXCEEDED": BackendDeadlineExceeded, "UNKNOWN_ERROR": InternalError},
                          unclassified=InternalError)


class PublicCertificate:
    """One key's certificate: ``key_name`` and ``x509_certificate_pem`` (PEM text)."""

    def __init__(self, key_name: str, x509_certificate_pem: str) -> None:
        self.key_name = key_name
        self.x509_certificate_pem = x509_certificate_pem

    def __repr__(self) -> str:
        return f"PublicCertificate(key_name={self.key_name!r})"


def _stub() -> identity_pb2_grpc.IdentityServiceStub:
    return _rpc.stub("IDENTITY", identity_pb2_grpc.IdentityServiceStub)


def sign_blob(bytes_to_sign: bytes | str, deadline: float | None = None) -> tuple[str, bytes]:
    """Sign with the app's current key: ``(key_name, signature)`` (module docstring)."""
    if not isinstance(bytes_to_sign, (bytes, str)):
        raise TypeError(f"bytes_to_sign must be str or bytes: {bytes_to_sign!r}")
    data = bytes_to_sign.encode("utf-8") if isinstance(bytes_to_sign, str) else bytes_to_sign
    found = _rpc.call(_stub().SignForApp, pb.SignForAppRequest(bytes_to_sign=data),
                      timeout=deadline or DEFAULT_DEADLINE, table=_ERRORS)
    return found.key_name, found.signature


def get_public_certificates(deadline: float | None = None) -> list[PublicCertificate]:
    """The app's published certificates, current key first."""
    found = _rpc.call(_stub().GetPublicCertificates, pb.GetPublicCertificatesRequest(),
                      timeout=deadline or DEFAULT_DEADLINE, table=_ERRORS)
    return [PublicCertificate(c.key_name, c.x509_certificate_pem) for c in found.certificates]


def access_token(scopes: list[str], deadline: float | None = None) -> pb.GetAccessTokenResponse:
    """The identity service's answer for ``scopes`` (token, expiry, service account)."""
    return _rpc.call(_stub().GetAccessToken, pb.GetAccessTokenRequest(scopes=scopes),
                     timeout=deadline or DEFAULT_DEADLINE, table=_ERRORS)


def get_access_token(scopes: str | list[str], service_account_id: object = None) -> tuple[str, int]:
    """A kiln-issued access token for the app and ``scopes``, and its expiry (module docstring)."""
    if not scopes:
        raise InvalidScope("No scopes specified.")
    if service_account_id not in (None, "default"):
        raise NotAllowed(f"kiln issues tokens only for the app's own service account, not {service_account_id!r}")
    found = access_token([scopes] if isinstance(scopes, str) else list(scopes))
    return found.access_token, found.expiration_time


def get_application_id() -> str:
    """The app id, without App Engine's partition (``s~``)."""
    full = os.environ.get("GAE_APPLICATION") or os.environ.get("APPLICATION_ID", "")
    return full.rpartition("~")[2]


def get_default_version_hostname() -> str | None:
    """The hostname of the app's default version (from the request)."""
    return os.environ.get("DEFAULT_VERSION_HOSTNAME")


def service_account_name(app_id: str, default_version_hostname: str) -> str:
    """``APP_ID@DOMAIN`` for ``app_id`` served at ``default_version_hostname`` (module docstring)."""
    hostname = default_version_hostname
    host = hostname.rsplit(":", 1)[0] if not hostname.endswith("]") else hostname
    prefix = f"{app_id}."
    domain = host[len(prefix):] if host.startswith(prefix) else host
    return f"{app_id}@{domain or 'localhost'}"


def get_service_account_name(deadline: float | None = None) -> str:
    """The app's service account name (module docstring)."""
    return service_account_name(get_application_id(), os.environ.get("DEFAULT_VERSION_HOSTNAME") or "")
