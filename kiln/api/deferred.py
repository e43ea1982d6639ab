"""App Engine's deferred library (``google.appengine.ext.deferred``): run a function later, through a push task.

::

    from kiln.api import deferred

    def send_report(user_id, *, full=False): ...

    deferred.defer(send_report, 42, full=True, _countdown=60, _queue="reports")

and in ``app.yaml`` the handler that runs them (App Engine's own URL; ``login: admin`` as App Engine's builtin)::

    handlers:
    - url: /_ah/queue/deferred
      script: kiln.api.deferred.application
      login: admin

``defer(obj, *args, **kwargs)`` pickles ``(obj, args, kwargs)`` — ``obj`` a module-level function or class, a
method of a picklable object, a callable instance or a builtin, as App Engine allows — and adds it as a POST task
with an ``application/octet-stream`` body. The options App Engine took, with a leading underscore, go to the task:
``_countdown``, ``_eta``, ``_name``, ``_target``, ``_retry_options``, ``_url`` (default ``/_ah/queue/deferred``),
``_headers``, ``_queue`` (default ``default``) and ``_transactional`` (the task runs only if the running
:func:`kiln.api.datastore.RunInTransaction` commits). A pickle too large for a task is stored in the datastore
and the task carries only its key, as App Engine did.

:data:`application` runs a task: the function's return ends the task (200); :class:`PermanentTaskFailure` also
ends it — logged, never retried; :class:`SingularTaskFailure` asks for a retry without logging an error; any other
exception is logged and retried with the queue's backoff. It answers 403 to any request that is not a push task:
only the task queue's signed requests carry ``X-AppEngine-QueueName`` (the router drops clients' copies), so a
user — even an administrator — cannot make the app unpickle a body of their choosing. The tasks that Google's SDK
defers (``google.appengine.ext.deferred``) have the same form and run here too.
"""

from __future__ import annotations

import datetime
import logging
import pickle
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kiln.api import taskqueue

__all__ = ["DEFAULT_QUEUE", "DEFAULT_URL", "Error", "PermanentTaskFailure", "SingularTaskFailure", "application",
           "defer", "invoke_member", "run", "run_from_datastore", "serialize"]

log = logging.getLogger(__name__)

DEFAULT_URL = "/_ah/queue/deferred"
DEFAULT_QUEUE = "default"
_CONTENT_TYPE = "application/octet-stream"
_ENTITY_KIND = "_DeferredTaskEntity"  # App Engine's kind for pickles too large for a task


class Error(Exception):
    """Base class of the deferred library's errors."""


class PermanentTaskFailure(Error):
    """Raised by a deferred function: the task failed and will never succeed; it is not retried."""


class SingularTaskFailure(Error):
    """Raised by a deferred function: this attempt failed; retry it (nothing is logged as an error)."""


def invoke_member(obj: Any, membername: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``obj.membername(*args, **kwargs)`` (how a bound method travels: its object and its name)."""
    return getattr(obj, membername)(*args, **kwargs)


def _curried(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if isinstance(obj, types.MethodType):
        return invoke_member, (obj.__self__, obj.__func__.__name__, *args), kwargs
    if isinstance(obj, types.BuiltinMethodType) and obj.__self__ is not None \
            and not isinstance(obj.__self__, types.ModuleType):
        return invoke_member, (obj.__self__, obj.__name__, *args), kwargs
    if callable(obj):
        return obj, args, kwargs
    raise ValueError(f"obj must be callable, got {type(obj).__name__}")


def serialize(obj: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    """The task body that runs ``obj(*args, **kwargs)``: the pickle of ``(callable, args, kwargs)``."""
    return pickle.dumps(_curried(obj, args, kwargs), pickle.HIGHEST_PROTOCOL)


def run(data: bytes) -> Any:
    """Unpickle a task body and call it; returns what the function returns.

    Raises:
        PermanentTaskFailure: the body cannot be unpickled (it never will be).
    """
    try:
        func, args, kwargs = pickle.loads(data)  # noqa: S301 - only the task queue's own requests reach here
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is permanent
        raise PermanentTaskFailure(f"the task's body cannot be unpickled: {exc!r}") from exc
    return func(*args, **kwargs)


def run_from_datastore(key: str) -> Any:
    """Run the pickle stored under ``key`` (a task too large for the queue), then delete it.

    Raises:
        PermanentTaskFailure: the stored task is gone.
    """
    from kiln.api import datastore  # noqa: PLC0415 - only apps with large tasks need the datastore

    stored = datastore.Key(key)
    try:
        entity = datastore.Get(stored)
    except datastore.EntityNotFoundError:
        raise PermanentTaskFailure(f"the stored deferred task {key} is gone") from None
    try:
        result = run(bytes(entity["data"]))
    except PermanentTaskFailure:
        datastore.Delete(stored)
        raise
    datastore.Delete(stored)
    return result


def defer(obj: Callable[..., Any], *args: Any, _countdown: float | None = None,
          _eta: datetime.datetime | None = None, _name: str | None = None, _target: str | None = None,
          _retry_options: taskqueue.TaskRetryOptions | None = None, _url: str = DEFAULT_URL,
          _headers: Mapping[str, str] | None = None, _queue: str = DEFAULT_QUEUE, _transactional: bool = False,
          **kwargs: Any) -> taskqueue.Task:
    """Run ``obj(*args, **kwargs)`` later, from a push task (see the module docstring for the options).

    Raises:
        the errors of :meth:`kiln.api.taskqueue.Queue.add`; ``pickle.PicklingError`` (or ``AttributeError``,
        ``TypeError``) when the callable or its arguments cannot be pickled.
    """
    headers = {"Content-Type": _CONTENT_TYPE, **(_headers or {})}
    options: dict[str, Any] = dict(countdown=_countdown, eta=_eta, name=_name or "", target=_target,
                                   retry_options=_retry_options, url=_url, headers=headers)
    pickled = serialize(obj, *args, **kwargs)
    try:
        task = taskqueue.Task(payload=pickled, **options)
    except taskqueue.TaskTooLargeError:
        from kiln.api import datastore  # noqa: PLC0415

        entity = datastore.Entity(_ENTITY_KIND)
        entity["data"] = datastore.Blob(pickled)
        key = datastore.Put(entity)
        task = taskqueue.Task(payload=serialize(run_from_datastore, str(key)), **options)
    return task.add(_queue, transactional=_transactional)


def _named(exc: BaseException, name: str) -> bool:
    # Google's SDK has classes of the same names: a function deferred with either library may raise either's.
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def application(environ: Mapping[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI app that runs deferred tasks (App Engine's ``deferred.application``; module docstring)."""
    def answer(status: str, text: str, extra: tuple[tuple[str, str], ...] = ()) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain"), *extra])
        return [text.encode()]

    if not environ.get("HTTP_X_APPENGINE_QUEUENAME") or not environ.get("HTTP_X_APPENGINE_TASKNAME"):
        log.error("deferred: refused a request that is not a push task (no X-AppEngine-QueueName)")
        return answer("403 Forbidden", "Deferred tasks run only from the task queue.\n")
    if environ.get("REQUEST_METHOD") != "POST":
        return answer("405 Method Not Allowed", "Deferred tasks are POST requests.\n", (("Allow", "POST"),))
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length)
    task = environ.get("HTTP_X_APPENGINE_TASKNAME", "")
    try:
        run(body)
    except Exception as exc:  # noqa: BLE001 - the task's outcome is the answer
        if _named(exc, "PermanentTaskFailure"):
            log.exception("deferred task %s failed permanently; it is not retried", task)
            return answer("200 OK", "PermanentTaskFailure\n")
        if _named(exc, "SingularTaskFailure"):
            log.debug("deferred task %s failed once; it is retried", task)
            return answer("408 Request Timeout", "SingularTaskFailure\n")
        log.exception("deferred task %s failed; it is retried", task)
        return answer("500 Internal Server Error", "The deferred task failed; it will be retried.\n")
    return answer("200 OK", "Success\n")
