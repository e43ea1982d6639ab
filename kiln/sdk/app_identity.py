"""App Engine's ``app_identity_service`` for Google's SDK, through kiln's identity service (``identity_svc``).

- ``GetServiceAccountName``: ``APP_ID@DOMAIN`` (:func:`kiln.api.app_identity.service_account_name`), answered
  here from the request's ``DEFAULT_VERSION_HOSTNAME``. kiln's name identifies the app, but no Google service knows
  it.
- ``SignForApp`` (``sign_blob``), ``GetPublicCertificatesForApp`` (``get_public_certificates``): the app's per-app
  RSA-2048 key, held by ``identity_svc`` alone (the instance never sees a private key), rotated daily; the
  certificates of the current, next and previous keys are published. Signatures are RSASSA-PKCS1-v1_5 over
  SHA-256, key names 40 hex digits, certificates self-signed X.509 in PEM, as App Engine's.
- ``GetAccessToken``: a kiln-issued JWT for the app and scopes (``kiln.api.app_identity``'s docstring); the SDK's
  ``get_access_token()`` asks the metadata server instead, which the runtime answers in the app's process with
  the same call (``runtime/metadata.py``). Google's APIs do not accept these tokens.
- ``GetDefaultGcsBucketName``: the SDK's ``FeatureNotEnabledError``: kiln has no Cloud Storage.

Errors carry App Engine's codes, so the SDK raises its own exceptions: ``BLOB_TOO_LARGE`` → ``BlobSizeTooLarge``,
``UNKNOWN_SCOPE`` → ``InvalidScope``, anything else of the service → ``InternalError``.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.appengine.api.app_identity import app_identity_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.api import app_identity as api
from kiln.pb.identity.v1 import identity_pb2 as pb
from kiln.pb.identity.v1 import identity_pb2_grpc
from kiln.sdk import _errors
from kiln.sdk.service import CallContext

__all__ = ["AppIdentity", "service_account_name"]

_ERR = gae.AppIdentityServiceError
_ERRORS = _errors.table({
    "BLOB_TOO_LARGE": _ERR.BLOB_TOO_LARGE, "UNKNOWN_SCOPE": _ERR.UNKNOWN_SCOPE,
    "NOT_A_VALID_APP": _ERR.NOT_A_VALID_APP, "UNKNOWN_ERROR": _ERR.UNKNOWN_ERROR,
}, {grpc.StatusCode.INVALID_ARGUMENT: _ERR.UNKNOWN_ERROR, grpc.StatusCode.FAILED_PRECONDITION: _ERR.UNKNOWN_ERROR})
_NO_BUCKET = ("app_identity_service.GetDefaultGcsBucketName(): kiln has no Cloud Storage, so apps have no default "
              "bucket")


class AppIdentity:
    """The ``app_identity_service`` (module docstring)."""

    name = "app_identity_service"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        if method == "GetServiceAccountName":
            response.service_account_name = service_account_name(ctx)
        elif method == "GetDefaultGcsBucketName":
            raise apiproxy_errors.FeatureNotEnabledError(_NO_BUCKET)
        elif method == "GetAccessToken" and (request.service_account_id or request.service_account_name):
            raise apiproxy_errors.ApplicationError(
                _ERR.NOT_ALLOWED, "kiln issues access tokens only for the app's own service account")
        elif method in ("SignForApp", "GetPublicCertificatesForApp", "GetAccessToken"):
            self._call(method, request, response, ctx)
        else:
            raise apiproxy_errors.CallNotFoundError(
                f"app_identity_service.{method}() is not a method of App Engine's app identity service")

    @staticmethod
    def _call(method: str, request: Any, response: Any, ctx: CallContext) -> None:
        stub = _rpc.stub("IDENTITY", identity_pb2_grpc.IdentityServiceStub)
        timeout = ctx.deadline if ctx.deadline is not None else _rpc.DEFAULT_TIMEOUT
        if method == "SignForApp":
            signed = _rpc.call(stub.SignForApp, pb.SignForAppRequest(bytes_to_sign=request.bytes_to_sign),
                               timeout=timeout, table=_ERRORS)
            response.key_name, response.signature_bytes = signed.key_name, signed.signature
        elif method == "GetPublicCertificatesForApp":
            found = _rpc.call(stub.GetPublicCertificates, pb.GetPublicCertificatesRequest(), timeout=timeout,
                              table=_ERRORS)
            for cert in found.certificates:
                response.public_certificate_list.add(key_name=cert.key_name,
                                                     x509_certificate_pem=cert.x509_certificate_pem)
            response.max_client_cache_time_in_second = found.max_client_cache_time_seconds
        else:
            token = _rpc.call(stub.GetAccessToken, pb.GetAccessTokenRequest(scopes=list(request.scope)),
                              timeout=timeout, table=_ERRORS)
            response.access_token, response.expiration_time = token.access_token, token.expiration_time


def service_account_name(ctx: CallContext) -> str:
    """``APP_ID@DOMAIN`` for the calling app (module docstring)."""
    return api.service_account_name(ctx.app_id, str(ctx.environ.get("DEFAULT_VERSION_HOSTNAME") or ""))
