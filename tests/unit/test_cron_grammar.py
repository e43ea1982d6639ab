"""App Engine's cron schedule grammar (kiln_platform.cronschedule) and cron.yaml (kiln_platform.cronyaml): parsing, errors that
point at the word, and firing times across time zones and DST changes."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest

from kiln_platform import cronyaml
from kiln_platform.cronschedule import ScheduleError, parse, parse_timezone
from kiln_platform.appyaml import AppYamlError

UTC = datetime.timezone.utc
NY = zoneinfo.ZoneInfo("America/New_York")
LONDON = zoneinfo.ZoneInfo("Europe/London")


def at(text, tz=UTC):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=tz)


def firings(schedule, start, tz=UTC, count=5):
    out, t, previous = [], start, None
    for _ in range(count):
        t = schedule.next_after(t, tz, previous)
        previous = t
        out.append(t)
    return out


def test_every_n_minutes_runs_n_minutes_after_the_previous_run():
    s = parse("every 5 minutes")
    assert s.next_after(at("2026-01-01 10:00:30"), UTC) == at("2026-01-01 10:05")  # groc: start + N, to the minute
    assert s.next_after(at("2026-01-01 10:01:00"), UTC, previous=at("2026-01-01 10:01")) == at("2026-01-01 10:06")
    assert s.next_after(at("2026-01-01 10:20:00"), UTC, previous=at("2026-01-01 10:01")) == at("2026-01-01 10:21")


def test_plain_intervals_keep_their_spacing_across_dst():
    s = parse("every 2 hours")
    times = firings(s, at("2026-03-08 00:30", NY), NY, count=4)
    assert [(b - a) for a, b in zip(times, times[1:])] == [datetime.timedelta(hours=2)] * 3


def test_synchronized_interval_aligns_to_midnight():
    s = parse("every 6 hours synchronized")
    assert firings(s, at("2026-01-01 01:00"), count=4) == [
        at("2026-01-01 06:00"), at("2026-01-01 12:00"), at("2026-01-01 18:00"), at("2026-01-02 00:00")]


def test_synchronized_interval_must_divide_the_day():
    with pytest.raises(ScheduleError, match="divides 24 hours"):
        parse("every 7 hours synchronized")


def test_window_fires_from_its_start_every_n_inside_it():
    s = parse("every 30 mins from 10:00 to 11:00")
    assert firings(s, at("2026-01-01 09:00"), count=4) == [
        at("2026-01-01 10:00"), at("2026-01-01 10:30"), at("2026-01-01 11:00"), at("2026-01-02 10:00")]


def test_window_may_cross_midnight():
    s = parse("every 1 hours from 23:00 to 01:00")
    assert firings(s, at("2026-01-01 12:00"), count=4) == [
        at("2026-01-01 23:00"), at("2026-01-02 00:00"), at("2026-01-02 01:00"), at("2026-01-02 23:00")]


def test_every_day_fires_at_the_wall_time_of_its_zone():
    s = parse("every day 09:00")
    assert s.next_after(at("2026-07-01 00:00"), LONDON) == at("2026-07-01 08:00")  # BST
    assert s.next_after(at("2026-12-01 00:00"), LONDON) == at("2026-12-01 09:00")  # GMT


def test_weekday_lists_and_abbreviations():
    s = parse("every mon,Wednesday , fri 18:30")
    assert firings(s, at("2026-11-23 19:00"), count=3) == [  # Monday 23 Nov 2026, after 18:30
        at("2026-11-25 18:30"), at("2026-11-27 18:30"), at("2026-11-30 18:30")]


def test_ordinal_weekdays_of_every_month():
    s = parse("1st,3rd tuesday of month 10:00")
    assert firings(s, at("2026-01-01"), count=3) == [at("2026-01-06 10:00"), at("2026-01-20 10:00"),
                                                     at("2026-02-03 10:00")]


def test_ordinal_weekday_of_listed_months():
    s = parse("2nd wednesday of march,june 12:00")
    assert firings(s, at("2026-01-01"), count=3) == [at("2026-03-11 12:00"), at("2026-06-10 12:00"),
                                                     at("2027-03-10 12:00")]


def test_fifth_weekday_skips_months_without_one():
    s = parse("fifth friday of month 08:00")
    assert firings(s, at("2026-01-01"), count=3) == [at("2026-01-30 08:00"), at("2026-05-29 08:00"),
                                                     at("2026-07-31 08:00")]


def test_every_weekday_of_a_month():
    s = parse("every monday of sep 07:15")
    assert s.next_after(at("2026-01-01"), UTC) == at("2026-09-07 07:15")


def test_days_of_listed_months():
    s = parse("1 of jan,april,july,oct 00:00")
    assert firings(s, at("2026-02-10"), count=4) == [at("2026-04-01"), at("2026-07-01"), at("2026-10-01"),
                                                     at("2027-01-01")]


def test_days_of_every_month_skip_months_too_short():
    s = parse("15,31 of month 09:00")
    assert firings(s, at("2026-03-20"), count=4) == [at("2026-03-31 09:00"), at("2026-04-15 09:00"),
                                                     at("2026-05-15 09:00"), at("2026-05-31 09:00")]


def test_february_29th_waits_for_a_leap_year():
    assert parse("29 of feb 12:00").next_after(at("2026-03-01"), UTC) == at("2028-02-29 12:00")


def test_rare_fifth_weekday_is_found_decades_ahead():
    # February has a fifth Sunday only in a leap year whose 1 February is a Sunday: 2032, then 2060.
    s = parse("5th sunday of february 10:00")
    assert firings(s, at("2026-01-01"), count=2) == [at("2032-02-29 10:00"), at("2060-02-29 10:00")]


def test_time_skipped_by_spring_forward_does_not_fire_that_day():
    s = parse("every day 02:30")
    assert s.next_after(at("2026-03-07 12:00", NY), NY) == at("2026-03-09 02:30", NY)


def test_time_repeated_by_fall_back_fires_at_both_occurrences():
    s = parse("every day 01:30")
    first = s.next_after(at("2026-10-31 12:00", NY), NY)
    assert first == datetime.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    second = s.next_after(first, NY)
    assert second == datetime.datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert s.next_after(second, NY) == datetime.datetime(2026, 11, 2, 6, 30, tzinfo=UTC)


def test_window_start_skipped_by_spring_forward_starts_at_the_jump():
    s = parse("every 5 minutes from 02:30 to 03:10")
    assert firings(s, at("2026-03-08 00:00", NY), NY, count=3) == [
        at("2026-03-08 03:00", NY), at("2026-03-08 03:05", NY), at("2026-03-08 03:10", NY)]


def test_window_steps_in_absolute_time_through_the_repeated_hour():
    s = parse("every 30 minutes from 00:00 to 02:00")
    times = firings(s, at("2026-10-31 23:59", NY), NY, count=7)
    assert [t.astimezone(NY).strftime("%H:%M %Z") for t in times] == [
        "00:00 EDT", "00:30 EDT", "01:00 EDT", "01:30 EDT", "01:00 EST", "01:30 EST", "02:00 EST"]


def test_a_time_that_never_exists_in_the_zone_never_fires():
    s = parse("2nd sunday of march 02:30")  # New York's spring-forward day, every year
    with pytest.raises(ScheduleError, match="never fires"):
        s.next_after(at("2026-01-01"), NY)


def test_interval_on_weekdays_fires_only_on_those_days():
    s = parse("every 6 hours synchronized on sat,sun")
    assert firings(s, at("2026-12-04 12:00"), count=5) == [  # Friday 4 December 2026
        at("2026-12-05 00:00"), at("2026-12-05 06:00"), at("2026-12-05 12:00"), at("2026-12-05 18:00"),
        at("2026-12-06 00:00")]


def test_ordinal_day_of_month_is_that_day_of_the_month():
    assert firings(parse("1st,3rd day of month 09:00"), at("2026-01-02"), count=3) == [
        at("2026-01-03 09:00"), at("2026-02-01 09:00"), at("2026-02-03 09:00")]


def test_quarter_means_its_first_months_or_the_nth_month_of_each_quarter():
    assert parse("first sunday of quarter 00:00").months == frozenset({1, 4, 7, 10})
    assert parse("1 of 2nd,3rd month of quarter 09:00").months == frozenset({2, 3, 5, 6, 8, 9, 11, 12})


@pytest.mark.parametrize("text", ["1,1 of month 09:00", "every mon,mon 10:00", "every 99999 hours",
                                  "every 5minutes", "1st,1st sun of month 10:00"])
def test_groc_forms_with_repeats_touching_words_or_long_intervals_are_accepted(text):
    assert parse(text).text == text


def test_window_across_a_dst_change_never_repeats_a_time():
    s = parse("every 30 minutes from 00:00 to 04:00")
    for day in ("2026-03-08", "2026-11-01"):
        times = firings(s, at(f"{day} 00:00", NY) - datetime.timedelta(minutes=1), NY, count=8)
        assert times == sorted(set(times))


@pytest.mark.parametrize("text", ["every 5 minutes", "every 1 hours synchronized", "every 20 mins from 08:00 to 17:00",
                                  "every day 00:00", "2nd,4th sat of jan,jul 23:59", "every sun 02:30",
                                  "1,15,31 of month 02:30"])
def test_firing_times_strictly_increase_over_a_year(text):
    s = parse(text)
    t, previous = at("2026-01-01", NY), None
    for _ in range(500):
        nxt = s.next_after(t, NY, previous)
        assert nxt > t
        t = previous = nxt


def test_grammar_is_case_insensitive():
    assert parse("Every MONDAY 09:00").weekdays == frozenset({0})


@pytest.mark.parametrize("text, word", [
    ("every 5 minuts", "'minuts' (word 3)"), ("every 0 minutes", "'0' (word 2)"),
    ("evry day 10:00", "'evry' (word 1)"), ("every day 25:00", "'25:00' (word 3)"),
    ("every day 9:7x", "'9:7x' (word 3)"), ("every monday", "ends too early"),
    ("every 1 hour", "'hour' (word 3)"), ("every 2 hrs", "'hrs' (word 3)"), ("1 of sept 10:00", "'sept' (word 3)"),
    ("every 123456 minutes", "'123456' (word 2)"), ("every 30 hours on mon", "'on' (word 4)"),
    ("every day 10:00 please", "'please' (word 4)"), ("every 5 minutes from 10:00", "ends too early"),
    ("every 5 minutes from 10:00 till 11:00", "'till' (word 6)"),
    ("every 2 hours synchronized from 00:00 to 10:00", "'from'"), ("2nd wednesday of marsh 12:00", "'marsh'"),
    ("", "empty"),
    ("31 of april,june 10:00", "never has a day 31"), ("32 of month 10:00", "'32' (word 1)"),
    ("1,,2 of month 10:00", "unexpected ','"), ("1 monday 10:00", "'monday' (word 2)"),
    ("0 of jan 10:00", "'0' (word 1)"),
])
def test_invalid_schedules_name_the_word(text, word):
    with pytest.raises(ScheduleError) as caught:
        parse(text)
    assert word in str(caught.value)


def test_unknown_time_zone_is_refused():
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        parse_timezone("Mars/Olympus")


CRON_YAML = """\
cron:
- description: daily summary
  url: /tasks/summary?kind=daily
  schedule: every day 09:00
  timezone: Europe/London
  target: beta
  retry_parameters:
    job_retry_limit: 3
    job_age_limit: 2h
    min_backoff_seconds: 10
    max_backoff_seconds: 300
    max_doublings: 2
- url: /tasks/poll
  schedule: every 5 minutes
"""


def test_cron_yaml_parses_every_field():
    daily, poll = cronyaml.parse(CRON_YAML)
    assert (daily.url, daily.timezone, daily.target, daily.description) == (
        "/tasks/summary?kind=daily", "Europe/London", "beta", "daily summary")
    assert daily.retry == cronyaml.RetryParameters(3, 7200, 10.0, 300.0, 2)
    assert (poll.timezone, poll.target, poll.retry.retries) == ("UTC", "", False)
    assert daily.key != poll.key


def test_retry_backoff_doubles_then_grows_linearly_up_to_the_maximum():
    retry = cronyaml.RetryParameters(job_retry_limit=5, min_backoff_seconds=10, max_backoff_seconds=100,
                                     max_doublings=2)
    assert [retry.backoff(n) for n in range(1, 6)] == [10, 20, 40, 80, 100]


@pytest.mark.parametrize("text, where", [
    ("cron:\n- url: /x\n  schedule: every 5 minuts\n", "cron.yaml:3: cron[0].schedule"),
    ("cron:\n- url: x\n  schedule: every day 10:00\n", "cron.yaml:2: cron[0].url"),
    ("cron:\n- url: /x\n  schedule: every day 10:00\n  timezone: Nowhere/City\n", "cron.yaml:4: cron[0].timezone"),
    ("cron:\n- url: /x\n  schedule: every day 10:00\n  target: Bad_Version\n", "cron.yaml:4: cron[0].target"),
    ("cron:\n- url: /x\n  schedule: every day 10:00\n  colour: red\n", "cron.yaml:4: cron[0].colour"),
    ("cron:\n- url: /x\n  schedule: every day 10:00\n  retry_parameters:\n    job_retry_limit: 9\n",
     "cron.yaml:5: cron[0].retry_parameters.job_retry_limit"),
    ("cron:\n- url: /x\n  schedule: every day 10:00\n  retry_parameters:\n    job_age_limit: soon\n",
     "cron.yaml:5: cron[0].retry_parameters.job_age_limit"),
    ("cron:\n- url: /x\n  schedule: every day 10:00\n- url: /x\n  schedule: every day 10:00\n", "cron[1]"),
    ("cron:\n- url: /x\n", "cron[0].schedule: required"),
])
def test_bad_cron_yaml_names_file_line_and_field(text, where):
    with pytest.raises(AppYamlError) as caught:
        cronyaml.parse(text)
    assert where in str(caught.value)
