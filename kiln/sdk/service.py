"""What one App Engine service looks like to kiln's API proxy (:mod:`kiln.sdk.proxy`).

A service (``datastore_v3``, ``memcache``…) is an object with a ``name`` and a :meth:`Service.handle` method. The
proxy calls ``handle`` for each API call the SDK makes to that service, on a thread of its choosing, with the
request message the SDK built and the response message the SDK will read. ``handle`` fills ``response`` and
returns, or raises:

- ``google.appengine.runtime.apiproxy_errors.ApplicationError(code, detail)`` for an error of the service
  (its own error enum, e.g. datastore_v3's ``NEED_INDEX``), which the SDK's module turns into its exception;
- ``apiproxy_errors.CallNotFoundError`` for a method kiln does not serve, naming it;
- another ``apiproxy_errors.Error`` (``ArgumentError``, ``DeadlineExceededError``, ``RequestTooLargeError``…) as
  App Engine's API host did.

This module is the contract between the proxy and the services; it must not import the SDK.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True)
class CallContext:
    """Who makes an API call, and until when.

    Attributes:
        app_id: the calling app (kiln's app id, without App Engine's ``s~`` partition).
        deadline: the call's deadline in seconds from its start, as the SDK gave it (``None``: the service's
            default).
        environ: the CGI/WSGI environment of the request the call belongs to, as the runtime built it
            (``USER_EMAIL``, ``HTTP_X_APPENGINE_*``…); empty for a call outside a request (a background thread).
    """

    app_id: str
    deadline: float | None = None
    environ: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Service(Protocol):
    """One App Engine service served by kiln (see the module docstring)."""

    name: str

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        """Serve one call: fill ``response`` from ``request`` or raise the SDK's error."""
