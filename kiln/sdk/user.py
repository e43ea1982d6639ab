"""App Engine's ``user`` service for Google's SDK: sign-in and sign-out URLs, as :mod:`kiln.api.users` makes them.

The signed-in user itself reaches the SDK through the request's environment (``USER_EMAIL``…), set by the runtime
from what the router established; only the URLs need a call. ``GetOAuthUser`` (OAuth 2 bearer tokens) is not
served: kiln's router signs users in by its sessions, not by OAuth tokens.
"""

from __future__ import annotations

from typing import Any

from google.appengine.api import user_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import users
from kiln.sdk.service import CallContext

__all__ = ["User"]

_ERR = gae.UserServiceError


class User:
    """The ``user`` service (module docstring)."""

    name = "user"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        try:
            if method == "CreateLoginURL":
                response.login_url = users.create_login_url(
                    request.destination_url, federated_identity=request.federated_identity or None)
            elif method == "CreateLogoutURL":
                response.logout_url = users.create_logout_url(request.destination_url)
            elif method == "GetOAuthUser":
                raise apiproxy_errors.FeatureNotEnabledError(
                    "user.GetOAuthUser(): kiln does not provide OAuth sign-in yet (the router signs users in with its "
                    "own sessions; use users.get_current_user())")
            else:
                raise apiproxy_errors.CallNotFoundError(f"user.{method}() is not a method of App Engine's user service")
        except users.RedirectTooLongError as exc:
            raise apiproxy_errors.ApplicationError(_ERR.REDIRECT_URL_TOO_LONG, str(exc)) from None
        except users.NotAllowedError as exc:
            raise apiproxy_errors.ApplicationError(_ERR.NOT_ALLOWED, str(exc)) from None
