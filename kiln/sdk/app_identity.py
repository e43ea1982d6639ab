"""App Engine's ``app_identity_service`` for Google's SDK: the app's service account name; what needs Google's
infrastructure (Cloud Storage, Google-signed keys) fails naming what kiln lacks.

- ``GetServiceAccountName``: ``APP_ID@DOMAIN``, where DOMAIN is the deployment's apps domain, read from the request's
  ``DEFAULT_VERSION_HOSTNAME`` (``APP_ID.DOMAIN[:port]``; under ``kiln dev``, ``localhost``). On App Engine it was
  ``APP_ID@appspot.gserviceaccount.com``, a Google account other Google services accepted; kiln's name identifies
  the app but no Google service knows it.
- ``GetDefaultGcsBucketName``: the SDK's ``FeatureNotEnabledError``: kiln has no Cloud Storage.
- ``SignForApp`` and ``GetPublicCertificatesForApp`` (``sign_blob``, ``get_public_certificates``):
  ``FeatureNotEnabledError``. Signing for an app needs a private key per app held outside the app's instances (a
  signing service with its own secret), so that one app can neither read nor use another's; kiln has no such
  service yet, and a key the instance could read would let the app's code take it away.
- ``GetAccessToken``: the SDK asks the metadata server (``GCE_METADATA_HOST``) for tokens, never this service;
  kiln has no metadata server, so ``get_access_token()`` fails in the SDK's own HTTP call.
"""

from __future__ import annotations

from typing import Any

from google.appengine.runtime import apiproxy_errors

from kiln.sdk.service import CallContext

__all__ = ["AppIdentity", "service_account_name"]

_NO_SIGNING = ("app_identity_service.{method}(): kiln cannot sign for apps yet: it needs a per-app signing key held "
               "by a kiln service outside the app's instances, which kiln does not have")
_MISSING = {
    "GetDefaultGcsBucketName": "app_identity_service.GetDefaultGcsBucketName(): kiln has no Cloud Storage, so apps "
                               "have no default bucket",
    "SignForApp": _NO_SIGNING.format(method="SignForApp"),
    "GetPublicCertificatesForApp": _NO_SIGNING.format(method="GetPublicCertificatesForApp"),
    "GetAccessToken": "app_identity_service.GetAccessToken(): kiln issues no OAuth access tokens for Google APIs "
                      "(the SDK asks the metadata server for them, which kiln does not provide)",
}


class AppIdentity:
    """The ``app_identity_service`` (module docstring)."""

    name = "app_identity_service"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        if method == "GetServiceAccountName":
            response.service_account_name = service_account_name(ctx)
        elif method in _MISSING:
            raise apiproxy_errors.FeatureNotEnabledError(_MISSING[method])
        else:
            raise apiproxy_errors.CallNotFoundError(
                f"app_identity_service.{method}() is not a method of App Engine's app identity service")


def service_account_name(ctx: CallContext) -> str:
    """``APP_ID@DOMAIN`` for the calling app (module docstring)."""
    hostname = str(ctx.environ.get("DEFAULT_VERSION_HOSTNAME") or "")
    host = hostname.rsplit(":", 1)[0] if not hostname.endswith("]") else hostname
    prefix = f"{ctx.app_id}."
    domain = host[len(prefix):] if host.startswith(prefix) else host
    return f"{ctx.app_id}@{domain or 'localhost'}"
