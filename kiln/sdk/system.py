"""App Engine's ``system`` service for Google's SDK: this instance's CPU and memory, and background requests.

``GetSystemStats`` reports this process (CPU in megacycles at App Engine's 1.2 GHz reference, memory in MB).
``StartBackgroundRequest`` is allowed where :mod:`kiln.api.background_thread` allows background threads (manual and
basic scaling), with the same limit; elsewhere it fails with App Engine's ``BACKEND_REQUIRED`` (the SDK raises
``FrontendsNotSupported``). Where App Engine then sent the instance a ``/_ah/background`` request, kiln starts the
thread itself: the SDK's own background machinery gives it the app's function.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from google.appengine.api.system import system_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors
from google.appengine.runtime import background

from kiln import runtime as kiln_runtime
from kiln.api import background_thread
from kiln.sdk.service import CallContext

__all__ = ["System"]

_ERR = gae.SystemServiceError
MCYCLES_PER_CPU_SECOND = 1200  # App Engine's quota unit: megacycles of a 1.2 GHz reference CPU
_PAGE = os.sysconf("SC_PAGE_SIZE")


class System:
    """The ``system`` service (module docstring)."""

    name = "system"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        if method == "GetSystemStats":
            _stats(response)
        elif method == "StartBackgroundRequest":
            response.request_id = _start_background()
        else:
            raise apiproxy_errors.CallNotFoundError(f"system.{method}() is not a method of App Engine's system service")


def _stats(response: gae.GetSystemStatsResponse) -> None:
    cpu = time.process_time() * MCYCLES_PER_CPU_SECOND
    response.cpu.total = cpu
    response.cpu.current = cpu
    with open("/proc/self/statm", "rb") as statm:
        rss_mb = int(statm.read().split()[1]) * _PAGE / (1024 * 1024)
    response.memory.current = rss_mb
    response.memory.total = rss_mb


def _start_background() -> str:
    if not kiln_runtime.background_threads_allowed():
        raise apiproxy_errors.ApplicationError(
            _ERR.BACKEND_REQUIRED, "background threads need manual_scaling or basic_scaling in app.yaml")
    request_id = uuid.uuid4().hex
    thread = background_thread.BackgroundThread(
        target=background._pending_background_threads.RunBackgroundThread, args=(request_id,), daemon=True)
    try:
        thread.start()
    except background_thread.BackgroundThreadLimitReachedError as exc:
        raise apiproxy_errors.ApplicationError(_ERR.LIMIT_REACHED, str(exc)) from None
    return request_id
