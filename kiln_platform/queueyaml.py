"""The ``queue.yaml`` model: an app's task queues, as App Engine declared them::

    total_storage_limit: 500M
    queue:
    - name: mail
      rate: 20/s
      bucket_size: 40
      max_concurrent_requests: 10
      target: beta
      retry_parameters:
        task_retry_limit: 7
        task_age_limit: 2d
        min_backoff_seconds: 10
        max_backoff_seconds: 200
        max_doublings: 2
    - name: pulled
      mode: pull

The ``default`` queue always exists (push, 5/s, bucket 5) and may be redefined. Google's SDK validates the file
with ``google.appengine.api.queueinfo``; kiln accepts no file that module refuses, and also refuses what App Engine's
servers refused at deploy time and ``queueinfo`` lets through: an empty queue name, a rate above 500/s or a bucket
above 500 (App Engine's limits), push-only settings on a pull queue, a pull ``default`` queue, two queues of one name,
``min_backoff_seconds`` above ``max_backoff_seconds``. Errors name the file, line and field, as ``app.yaml`` errors do.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

from kiln_platform.appyaml import AppYamlError, _check_keys, _Ctx, _int, _Map, _seq, _str, load_yaml
from kiln_platform.cronyaml import backoff_delay

DEFAULT_QUEUE = "default"
DEFAULT_RATE = "5/s"
DEFAULT_BUCKET_SIZE = 5
MAX_QUEUES = 100  # App Engine's limit per app
MAX_RATE_PER_SECOND = 500.0  # App Engine's limit per push queue
MAX_BUCKET_SIZE = 500  # App Engine's limit
MAX_CONCURRENT_REQUESTS = 5000
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9-]{1,100}$")
# A version, or App Engine's ``version.service`` (kiln serves one service per app: the version is used).
TARGET_RE = re.compile(r"^(?:(?!-)[a-z\d-]{1,100}\.)?(?!-)[a-z\d-]{1,63}$")
RATE_RE = re.compile(r"^(?:0|(\d+(?:\.\d*)?)/([smhd]))$")
AGE_RE = re.compile(r"^(\d+(?:\.\d*)?)([smhd])$")
STORAGE_RE = re.compile(r"^(\d+(?:\.\d*)?)([BKMGT]?)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PUSH_ONLY = ("rate", "bucket_size", "max_concurrent_requests", "target")


@dataclasses.dataclass(frozen=True)
class RetryParameters:
    """``retry_parameters`` of a queue or a task (App Engine's defaults for push queues: retry without limit,
    from 0.1 s doubling 16 times up to one hour between attempts)."""

    task_retry_limit: int | None = None
    task_age_limit_seconds: int | None = None
    min_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 3600.0
    max_doublings: int = 16

    def backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (1 = the first retry)."""
        return backoff_delay(retry, self.min_backoff_seconds, self.max_backoff_seconds, self.max_doublings)

    def exhausted(self, retries: int, age_seconds: float) -> bool:
        """Whether a task that has been retried ``retries`` times and was added ``age_seconds`` ago is given up.

        As App Engine: when both limits are set, both must be reached.
        """
        over_count = self.task_retry_limit is not None and retries >= self.task_retry_limit
        over_age = self.task_age_limit_seconds is not None and age_seconds >= self.task_age_limit_seconds
        if self.task_retry_limit is not None and self.task_age_limit_seconds is not None:
            return over_count and over_age
        return over_count or over_age


@dataclasses.dataclass(frozen=True)
class Queue:
    """One ``queue:`` entry."""

    name: str
    mode: str = "push"
    rate: str = DEFAULT_RATE
    rate_per_second: float = 5.0
    bucket_size: int = DEFAULT_BUCKET_SIZE
    max_concurrent_requests: int | None = None
    target: str = ""
    retry: RetryParameters = dataclasses.field(default_factory=RetryParameters)
    acl: tuple[str, ...] = ()  # pull queues' writer/user emails: kept, not yet enforced

    @property
    def version(self) -> str:
        """The version tasks go to (``target`` without App Engine's ``.service``), or ``""`` for the default."""
        return self.target.partition(".")[0] if "." in self.target else self.target


DEFAULT = Queue(name=DEFAULT_QUEUE)


@dataclasses.dataclass(frozen=True)
class QueueYaml:
    """A parsed queue.yaml: every queue by name (``default`` always among them)."""

    queues: dict[str, Queue]
    total_storage_limit_bytes: int | None = None


def parse_rate(text: str) -> float:
    """``N/s|m|h|d`` (or ``0``) in tasks per second.

    Raises:
        ValueError: not a rate.
    """
    m = RATE_RE.match(text)
    if not m:
        raise ValueError(f"must be a number of tasks per s, m, h or d (e.g. 5/s, 100/m) or 0, got {text!r}")
    if text == "0":
        return 0.0
    return float(m.group(1)) / _UNIT_SECONDS[m.group(2)]


def parse_age(text: str) -> int:
    """App Engine's ``task_age_limit`` (a number with s, m, h or d) in seconds.

    Raises:
        ValueError: not an age.
    """
    m = AGE_RE.match(text.strip())
    if not m:
        raise ValueError(f"must be a number followed by s, m, h or d (e.g. 2d, 90m), got {text!r}")
    return int(float(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def parse_storage(text: str) -> int:
    """``total_storage_limit`` (a number with an optional B, K, M, G or T, powers of 1024) in bytes.

    Raises:
        ValueError: not a size.
    """
    m = STORAGE_RE.match(text.strip())
    if not m:
        raise ValueError(f"must be a number of bytes with an optional B, K, M, G or T suffix, got {text!r}")
    power = "BKMGT".index(m.group(2)) if m.group(2) else 0
    return int(float(m.group(1)) * 1024 ** power)


def parse(text: str, *, filename: str = "queue.yaml") -> QueueYaml:
    """Parse queue.yaml text.

    Raises:
        AppYamlError: the message names the file, line and field.
    """
    data = load_yaml(text, filename)
    if data is None:  # refused as Google's SDK refuses it: a deploy that meant to change queues changes none
        raise AppYamlError(filename, None, "", "the file is empty (delete it, or list queues under queue:)")
    ctx = _Ctx(filename)
    if not isinstance(data, _Map):
        raise AppYamlError(filename, 1, "", "the top level must be a mapping with a queue list")
    _check_keys(ctx, data, {"queue", "total_storage_limit", "application", "resume_paused_queues"}, "")
    storage = None
    limit = _str(ctx, data, "total_storage_limit", "")
    if limit is not None:
        try:
            storage = parse_storage(limit)
        except ValueError as exc:
            raise ctx.fail(data, "total_storage_limit", "total_storage_limit", str(exc)) from None
    entries = _seq(ctx, data, "queue", "")
    if len(entries) > MAX_QUEUES:
        raise ctx.fail(data, "queue", "queue", f"at most {MAX_QUEUES} queues, got {len(entries)}")
    queues: dict[str, Queue] = {}
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        queue = _queue(ctx, entries, i, entry)
        if queue.name in seen:
            raise ctx.fail(entry, "name", f"queue[{i}].name", f"queue {queue.name!r} is already defined by "
                                                              f"queue[{seen[queue.name]}]")
        seen[queue.name] = i
        queues[queue.name] = queue
    queues.setdefault(DEFAULT_QUEUE, DEFAULT)
    return QueueYaml(queues, storage)


def _queue(ctx: _Ctx, entries: Any, i: int, entry: Any) -> Queue:
    where = f"queue[{i}]"
    if not isinstance(entry, _Map):
        raise ctx.fail(entries, i, where, "must be a mapping with a name")
    _check_keys(ctx, entry, {"name", "rate", "bucket_size", "max_concurrent_requests", "target", "retry_parameters",
                             "mode", "acl"}, where)
    name = _str(ctx, entry, "name", where + ".", required=True) or ""
    if not QUEUE_NAME_RE.match(name):
        raise ctx.fail(entry, "name", where + ".name",
                       f"must be 1 to 100 letters, digits and hyphens, got {name!r}")
    mode = _str(ctx, entry, "mode", where + ".") or "push"
    if mode not in ("push", "pull"):
        raise ctx.fail(entry, "mode", where + ".mode", f"must be push or pull, got {mode!r}")
    if mode == "pull":
        if name == DEFAULT_QUEUE:
            raise ctx.fail(entry, "mode", where + ".mode", "the default queue is a push queue")
        for key in _PUSH_ONLY:
            if key in entry:
                raise ctx.fail(entry, key, f"{where}.{key}", "only push queues have this setting")
    rate_text = _str(ctx, entry, "rate", where + ".")
    rate = DEFAULT.rate_per_second
    if rate_text is not None:
        try:
            rate = parse_rate(rate_text.strip())
        except ValueError as exc:
            raise ctx.fail(entry, "rate", where + ".rate", str(exc)) from None
        if rate > MAX_RATE_PER_SECOND:
            raise ctx.fail(entry, "rate", where + ".rate",
                           f"at most {MAX_RATE_PER_SECOND:g}/s (App Engine's limit), got {rate_text}")
    bucket = _int(ctx, entry, "bucket_size", where + ".", 1, MAX_BUCKET_SIZE)
    concurrent = _int(ctx, entry, "max_concurrent_requests", where + ".", 1, MAX_CONCURRENT_REQUESTS)
    target = _str(ctx, entry, "target", where + ".") or ""
    if target and not TARGET_RE.match(target):
        raise ctx.fail(entry, "target", where + ".target",
                       f"must be a version name (lower-case letters, digits and hyphens), got {target!r}")
    return Queue(name=name, mode=mode, rate=rate_text.strip() if rate_text is not None else DEFAULT_RATE,
                 rate_per_second=rate, bucket_size=bucket if bucket is not None else DEFAULT_BUCKET_SIZE,
                 max_concurrent_requests=concurrent, target=target, retry=_retry(ctx, entry, where, mode),
                 acl=_acl(ctx, entry, where))


def _number(ctx: _Ctx, m: _Map, key: str, where: str, *, integer: bool) -> float | None:
    if key not in m:
        return None
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or value < 0:
        raise ctx.fail(m, key, f"{where}.{key}", f"must be {'an integer' if integer else 'a number'} of 0 or more, "
                                                 f"got {value!r}")
    return float(value)


def _retry(ctx: _Ctx, entry: _Map, where: str, mode: str) -> RetryParameters:
    if "retry_parameters" not in entry or entry["retry_parameters"] is None:
        return RetryParameters()
    params = entry["retry_parameters"]
    rwhere = where + ".retry_parameters"
    if not isinstance(params, _Map):
        raise ctx.fail(entry, "retry_parameters", rwhere, "must be a mapping")
    allowed = {"task_retry_limit", "task_age_limit", "min_backoff_seconds", "max_backoff_seconds", "max_doublings"}
    _check_keys(ctx, params, allowed if mode == "push" else {"task_retry_limit"}, rwhere)
    limit = _number(ctx, params, "task_retry_limit", rwhere, integer=True)
    age = None
    if "task_age_limit" in params:
        try:
            age = parse_age(str(params["task_age_limit"]))
        except ValueError as exc:
            raise ctx.fail(params, "task_age_limit", rwhere + ".task_age_limit", str(exc)) from None
        if age <= 0:
            raise ctx.fail(params, "task_age_limit", rwhere + ".task_age_limit", "must be longer than 0s")
    low = _number(ctx, params, "min_backoff_seconds", rwhere, integer=False)
    high = _number(ctx, params, "max_backoff_seconds", rwhere, integer=False)
    doublings = _number(ctx, params, "max_doublings", rwhere, integer=True)
    base = RetryParameters()
    # As App Engine: one bound given alone moves the other default out of its way.
    if low is not None and high is None:
        high = max(low, base.max_backoff_seconds)
    if high is not None and low is None:
        low = min(high, base.min_backoff_seconds)
    if low is not None and high is not None and low > high:
        raise ctx.fail(params, "min_backoff_seconds", rwhere + ".min_backoff_seconds",
                       f"must not be above max_backoff_seconds ({high:g}), got {low:g}")
    return RetryParameters(
        task_retry_limit=int(limit) if limit is not None else None, task_age_limit_seconds=age,
        min_backoff_seconds=low if low is not None else base.min_backoff_seconds,
        max_backoff_seconds=high if high is not None else base.max_backoff_seconds,
        max_doublings=int(doublings) if doublings is not None else base.max_doublings)


def _acl(ctx: _Ctx, entry: _Map, where: str) -> tuple[str, ...]:
    out: list[str] = []
    for j, item in enumerate(_seq(ctx, entry, "acl", where + ".")):
        awhere = f"{where}.acl[{j}]"
        if not isinstance(item, _Map):
            raise ctx.fail(entry, "acl", awhere, "must be a mapping with user_email or writer_email")
        _check_keys(ctx, item, {"user_email", "writer_email"}, awhere)
        out += [v for v in (_str(ctx, item, "user_email", awhere + "."), _str(ctx, item, "writer_email",
                                                                                awhere + ".")) if v]
    return tuple(out)


def load(path: pathlib.Path) -> QueueYaml:
    """Parse a queue.yaml file; a missing file declares only the default queue."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return QueueYaml({DEFAULT_QUEUE: DEFAULT})
    return parse(text, filename=str(path))
