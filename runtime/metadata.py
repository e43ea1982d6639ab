"""The metadata server, answered in the app's process: what Google's SDK and google-auth ask it for.

On Google's runtimes an app asks the metadata server (``http://metadata.google.internal/computeMetadata/v1/…``,
header ``Metadata-Flavor: Google``) for its service account's access tokens: the SDK's
``app_identity.get_access_token()`` does (``GCE_METADATA_HOST``), and so do google-auth's Compute Engine
credentials. kiln has no metadata server; the runtime's ``http.client`` (:mod:`runtime.httpfetch`) hands every
request for a metadata host to :func:`answer`, which answers it here, without a socket:

- ``GET …/instance/service-accounts/{default|EMAIL}/token?scopes=a,b``: a kiln-issued access token from
  ``identity_svc`` for this app (the call carries the instance's app token, so an app only ever gets its own), as
  JSON ``{access_token, expires_in, token_type}``; without ``scopes``, Compute Engine's default scope
  (:data:`DEFAULT_SCOPE`). A malformed scope is a 400 naming it. **Google's APIs do not accept these tokens.**
- ``GET …/instance/service-accounts/{default|EMAIL}/email``: the app's service account name; ``…/scopes``:
  :data:`DEFAULT_SCOPE`; ``…/{default|EMAIL}/?recursive=true``: both, with the alias ``default``, as JSON (what
  google-auth's Compute Engine credentials read before their first token); without ``recursive``, the directory's
  entries.
- ``GET …/project/project-id``: the app id. ``GET /``: an empty answer with ``Metadata-Flavor: Google`` (how
  google-auth checks that a metadata server is there).
- Anything else: 404 naming what kiln answers; no ``Metadata-Flavor`` header: 403; another method than GET: 405.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Mapping

from kiln.api import app_identity

# The names Google's libraries use for the metadata server (GCE_METADATA_HOST, when set, is answered too).
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "169.254.169.254"})
DEFAULT_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_ACCOUNTS = "/computeMetadata/v1/instance/service-accounts/"
_ANSWERED = ("kiln's metadata server answers only /computeMetadata/v1/instance/service-accounts/default/token, "
             "…/default/email, …/default/scopes, …/default/ and /computeMetadata/v1/project/project-id")

Answer = tuple[int, list[tuple[str, str]], bytes]


def is_metadata_host(host: str) -> bool:
    """True if ``host`` (a URL's host, without port) names the metadata server."""
    named = os.environ.get("GCE_METADATA_HOST", "").rsplit(":", 1)[0].lower()
    host = host.lower().rstrip(".")
    return host in METADATA_HOSTS or (bool(named) and host == named)


def answer(method: str, url: str, headers: Mapping[str, str]) -> Answer | None:
    """The metadata server's answer to a request for ``url``, or ``None`` when ``url`` is not the metadata
    server's (module docstring)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not is_metadata_host(parts.hostname or ""):
        return None
    flavor = next((v for k, v in headers.items() if k.lower() == "metadata-flavor"), "")
    if flavor.strip().lower() != "google":
        return _text(403, "Missing Metadata-Flavor:Google header.")
    if method.upper() != "GET":
        return _text(405, f"the metadata server answers GET, not {method}")
    path, query = parts.path, urllib.parse.parse_qs(parts.query)
    if path in ("", "/"):
        return _text(200, "computeMetadata/\n")
    if path == "/computeMetadata/v1/project/project-id":
        return _text(200, app_identity.get_application_id())
    if path.startswith(_ACCOUNTS):
        account, _, what = path[len(_ACCOUNTS):].partition("/")
        own = app_identity.get_service_account_name()
        if account not in ("default", own):
            return _text(404, f"no service account {account!r} here: an app has only its own ({own})")
        if what == "email":
            return _text(200, own)
        if what == "scopes":
            return _text(200, DEFAULT_SCOPE + "\n")
        if what == "":  # the account's directory; google-auth reads it recursively, as JSON, before a token
            if query.get("recursive", [""])[0].lower() == "true":
                body = {"aliases": ["default"], "email": own, "scopes": [DEFAULT_SCOPE]}
                return 200, [("Metadata-Flavor", "Google"), ("Content-Type", "application/json")], \
                    json.dumps(body).encode()
            return _text(200, "aliases\nemail\nscopes\ntoken\n")
        if what == "token":
            return _token(query.get("scopes", []))
    return _text(404, f"{path}: {_ANSWERED}")


def _token(given: list[str]) -> Answer:
    scopes = [s for value in given for s in value.split(",") if s] or [DEFAULT_SCOPE]
    try:
        found = app_identity.access_token(scopes)
    except app_identity.InvalidScope as exc:
        return _text(400, str(exc))
    except Exception as exc:  # noqa: BLE001 - the service's failure, reported to the app's HTTP client as a 500
        return _text(500, f"kiln's identity service failed: {type(exc).__name__}: {exc}")
    body = {"access_token": found.access_token, "token_type": "Bearer",
            "expires_in": max(0, found.expiration_time - int(time.time()))}
    return 200, [("Metadata-Flavor", "Google"), ("Content-Type", "application/json")], json.dumps(body).encode()


def _text(status: int, text: str) -> Answer:
    return status, [("Metadata-Flavor", "Google"), ("Content-Type", "text/plain; charset=utf-8")], text.encode()
