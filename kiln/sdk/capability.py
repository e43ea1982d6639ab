"""App Engine's ``capability_service`` for Google's SDK: every capability kiln serves is enabled.

kiln has no scheduled maintenance windows to announce: ``IsEnabled`` answers ``ENABLED``. A service kiln does not
serve fails on its own calls with the SDK's ``CallNotFoundError`` naming it.
"""

from __future__ import annotations

from typing import Any

from google.appengine.api.capabilities import capability_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.sdk.service import CallContext

__all__ = ["Capability"]


class Capability:
    """The ``capability_service`` (module docstring)."""

    name = "capability_service"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        if method != "IsEnabled":
            raise apiproxy_errors.CallNotFoundError(
                f"capability_service.{method}() is not a method of App Engine's capability service")
        response.summary_status = gae.IsEnabledResponse.ENABLED
