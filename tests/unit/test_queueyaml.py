"""queue.yaml (kiln_platform.queueyaml): the model, its errors (file, line, field), and agreement with Google's own
validator, ``google.appengine.api.queueinfo``, on valid and invalid files."""

from __future__ import annotations

import textwrap

import pytest

from kiln_platform import queueyaml
from kiln_platform.appyaml import AppYamlError


def parse(text: str) -> queueyaml.QueueYaml:
    return queueyaml.parse(textwrap.dedent(text), filename="app/queue.yaml")


def sdk_accepts(text: str) -> bool:
    """Whether Google's SDK takes the file, as its deploy tooling read it (load, then translate rates, ages and
    storage limits)."""
    from google.appengine.api import queueinfo, validation, yaml_errors
    try:
        info = queueinfo.LoadSingleQueue(textwrap.dedent(text))
        if info.total_storage_limit:
            queueinfo.ParseTotalStorageLimit(info.total_storage_limit)
        for entry in info.queue or ():
            if entry.rate:
                queueinfo.ParseRate(entry.rate)
            if entry.retry_parameters:
                queueinfo.TranslateRetryParameters(entry.retry_parameters)
    except (queueinfo.MalformedQueueConfiguration, validation.Error, yaml_errors.Error):
        return False
    return True


VALID = {
    "no queues": "queue: []\n",
    "default only redefined": """
        queue:
        - name: default
          rate: 1/s
        """,
    "every setting": """
        total_storage_limit: 1.5G
        queue:
        - name: mail-out
          rate: 20/m
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
          retry_parameters:
            task_retry_limit: 3
        """,
    "rates in every unit and zero": """
        queue:
        - name: a
          rate: 3.5/s
        - name: b
          rate: 100/h
        - name: c
          rate: 1/d
        - name: paused
          rate: 0
        """,
    "only a minimum backoff above the default maximum": """
        queue:
        - name: slow
          rate: 1/s
          retry_parameters:
            min_backoff_seconds: 7200
        """,
}

INVALID = {  # (file, the field the error names, the line it points at)
    "empty file": ("", "", None),
    "unknown queue field": ("""
        queue:
        - name: a
          rate: 1/s
          speed: fast
        """, "queue[0].speed", 5),
    "unknown top-level field": ("""
        queues:
        - name: a
        """, "queues", 2),
    "rate with a bad unit": ("""
        queue:
        - name: a
          rate: 5/x
        """, "queue[0].rate", 4),
    "rate not a number": ("""
        queue:
        - name: a
          rate: fast
        """, "queue[0].rate", 4),
    "name with an underscore": ("""
        queue:
        - name: my_queue
        """, "queue[0].name", 3),
    "name too long": ("queue:\n- name: " + "q" * 501 + "\n", "queue[0].name", 2),
    "negative retry limit": ("""
        queue:
        - name: a
          retry_parameters:
            task_retry_limit: -1
        """, "queue[0].retry_parameters.task_retry_limit", 5),
    "age limit without a unit": ("""
        queue:
        - name: a
          retry_parameters:
            task_age_limit: 2x
        """, "queue[0].retry_parameters.task_age_limit", 5),
    "minimum backoff above maximum": ("""
        queue:
        - name: a
          retry_parameters:
            min_backoff_seconds: 20
            max_backoff_seconds: 10
        """, "queue[0].retry_parameters.min_backoff_seconds", 5),
    "negative doublings": ("""
        queue:
        - name: a
          retry_parameters:
            max_doublings: -2
        """, "queue[0].retry_parameters.max_doublings", 5),
    "storage limit not a size": ("""
        total_storage_limit: lots
        """, "total_storage_limit", 2),
    "unknown mode": ("""
        queue:
        - name: a
          mode: sometimes
        """, "queue[0].mode", 4),
    "bucket size not a number": ("""
        queue:
        - name: a
          bucket_size: five
        """, "queue[0].bucket_size", 4),
    "target with capitals and underscores": ("""
        queue:
        - name: a
          target: Beta_1
        """, "queue[0].target", 4),
    "queue without a name": ("""
        queue:
        - rate: 1/s
        """, "queue[0].name", 3),
}

# Files queueinfo lets through but App Engine's servers refused at deploy time; kiln refuses them at once.
STRICTER = {
    "empty name": ("""
        queue:
        - name: ''
        """, "queue[0].name", 3),
    "rate above App Engine's 500/s": ("""
        queue:
        - name: a
          rate: 501/s
        """, "queue[0].rate", 4),
    "bucket above 500": ("""
        queue:
        - name: a
          bucket_size: 501
        """, "queue[0].bucket_size", 4),
    "bucket of zero": ("""
        queue:
        - name: a
          bucket_size: 0
        """, "queue[0].bucket_size", 4),
    "a rate on a pull queue": ("""
        queue:
        - name: p
          mode: pull
          rate: 1/s
        """, "queue[0].rate", 5),
    "a pull default queue": ("""
        queue:
        - name: default
          mode: pull
        """, "queue[0].mode", 4),
    "two queues of one name": ("""
        queue:
        - name: a
        - name: b
        - name: a
        """, "queue[2].name", 5),
}


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_files_google_accepts_are_accepted(gae_sdk, text):
    assert sdk_accepts(text)
    parsed = parse(text)
    assert queueyaml.DEFAULT_QUEUE in parsed.queues


@pytest.mark.parametrize("text,field,line", INVALID.values(), ids=INVALID.keys())
def test_files_google_refuses_are_refused_with_file_line_and_field(gae_sdk, text, field, line):
    assert not sdk_accepts(text)
    with pytest.raises(AppYamlError) as err:
        parse(text)
    assert (err.value.filename, err.value.field, err.value.line) == ("app/queue.yaml", field, line)


@pytest.mark.parametrize("text,field,line", STRICTER.values(), ids=STRICTER.keys())
def test_files_app_engine_refused_at_deploy_are_refused(gae_sdk, text, field, line):
    assert sdk_accepts(text)
    with pytest.raises(AppYamlError) as err:
        parse(text)
    assert (err.value.field, err.value.line) == (field, line)


def test_the_default_queue_always_exists_at_five_per_second_bucket_five():
    for text in ("queue: []", "queue:\n- name: other\n  rate: 1/s\n"):
        default = parse(text).queues["default"]
        assert (default.mode, default.rate_per_second, default.bucket_size) == ("push", 5.0, 5)


def test_every_setting_is_read_as_app_engine_means_it():
    parsed = parse(VALID["every setting"])
    q = parsed.queues["mail-out"]
    assert parsed.total_storage_limit_bytes == int(1.5 * 1024 ** 3)
    assert (q.rate, q.rate_per_second, q.bucket_size, q.max_concurrent_requests, q.target) == (
        "20/m", pytest.approx(20 / 60), 40, 10, "beta")
    assert q.retry == queueyaml.RetryParameters(task_retry_limit=7, task_age_limit_seconds=2 * 86400,
                                                min_backoff_seconds=10, max_backoff_seconds=200, max_doublings=2)
    assert parsed.queues["pulled"].mode == "pull"
    assert parsed.queues["pulled"].retry.task_retry_limit == 3


@pytest.mark.parametrize("text,per_second", [("5/s", 5.0), ("30/m", 0.5), ("36/h", 0.01), ("0", 0.0),
                                             ("8.64/d", 0.0001)])
def test_rates_are_tasks_per_second_as_google_reads_them(gae_sdk, text, per_second):
    from google.appengine.api import queueinfo
    assert queueyaml.parse_rate(text) == pytest.approx(per_second)
    assert queueyaml.parse_rate(text) == pytest.approx(queueinfo.ParseRate(text))


@pytest.mark.parametrize("text", ["10", "1B", "2K", "1.5M", "3G", "1T"])
def test_storage_limits_are_bytes_as_google_reads_them(gae_sdk, text):
    from google.appengine.api import queueinfo
    assert queueyaml.parse_storage(text) == queueinfo.ParseTotalStorageLimit(text)


@pytest.mark.parametrize("text", ["30s", "1.5m", "2h", "7d"])
def test_age_limits_are_seconds_as_google_reads_them(gae_sdk, text):
    from google.appengine.api import queueinfo
    assert queueyaml.parse_age(text) == queueinfo.ParseTaskAgeLimit(text)


def test_one_backoff_bound_given_alone_moves_the_other_as_google_does(gae_sdk):
    from google.appengine.api import queueinfo
    for params in ({"min_backoff_seconds": 7200}, {"max_backoff_seconds": 0.05}):
        body = "\n".join(f"    {k}: {v}" for k, v in params.items())
        text = f"queue:\n- name: a\n  retry_parameters:\n{body}\n"
        ours = parse(text).queues["a"].retry
        theirs = queueinfo.TranslateRetryParameters(queueinfo.LoadSingleQueue(text).queue[0].retry_parameters)
        assert ours.min_backoff_seconds == pytest.approx(theirs.min_backoff_sec)
        assert ours.max_backoff_seconds == pytest.approx(theirs.max_backoff_sec)


def test_backoff_doubles_then_grows_linearly_up_to_the_maximum():
    retry = queueyaml.RetryParameters(min_backoff_seconds=1, max_backoff_seconds=20, max_doublings=2)
    assert [retry.backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 12, 16, 20]


def test_a_task_is_given_up_when_its_limits_are_reached_both_when_both_are_set():
    count = queueyaml.RetryParameters(task_retry_limit=3)
    assert not count.exhausted(2, 10_000) and count.exhausted(3, 0)
    age = queueyaml.RetryParameters(task_age_limit_seconds=60)
    assert not age.exhausted(100, 59) and age.exhausted(0, 60)
    both = queueyaml.RetryParameters(task_retry_limit=3, task_age_limit_seconds=60)
    assert not both.exhausted(3, 59) and not both.exhausted(2, 61) and both.exhausted(3, 60)
    assert not queueyaml.RetryParameters().exhausted(1000, 10 ** 7)


def test_a_missing_file_declares_the_default_queue_only(tmp_path):
    assert list(queueyaml.load(tmp_path / "queue.yaml").queues) == ["default"]
