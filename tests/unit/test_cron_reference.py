"""kiln's cron schedules (kiln_platform.cronschedule) against Google's own parser, groc, as recorded in
tests/fixtures/cron/groc_reference.json by tests/fixtures/cron/record_groc.py where the Google Cloud SDK is
installed: the same schedules accepted and refused, and the same next firings from every recorded start in every
recorded zone. No SDK is needed here."""

from __future__ import annotations

import datetime
import json
import zoneinfo
from pathlib import Path

import pytest

from kiln_platform.cronschedule import ScheduleError, parse

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "cron" / "groc_reference.json").read_text())
UTC = datetime.timezone.utc

# Where kiln deliberately differs from groc: schedule -> reason. Each is listed in README.md's Cron section.
DOCUMENTED_EXCEPTIONS: dict[str, str] = {}
# groc's pytz reads only the explicit transitions of a zone file, which end in 2037; after that it keeps the last
# offset for ever (New York on standard time, Lord Howe on summer time), where kiln (zoneinfo) follows the zone's
# rule. Firings from 2038 on are therefore not compared (README: documented exceptions).
PYTZ_HORIZON = int(datetime.datetime(2038, 1, 1, tzinfo=UTC).timestamp()) // 60


def kiln_firings(text: str, zone: zoneinfo.ZoneInfo, start: int, count: int) -> list[int]:
    """The next ``count`` firings from ``start`` as the fixture stores them: minute deltas, the first from the
    start's minute, each next one from the previous firing; each firing is asked with the previous one, as
    cron_svc asks."""
    schedule = parse(text)
    t, previous, out, last = datetime.datetime.fromtimestamp(start, UTC), None, [], start // 60
    for _ in range(count):
        try:
            t = previous = schedule.next_after(t, zone, previous)
        except ScheduleError:  # never fires (again) in this zone
            break
        minute = int(t.timestamp()) // 60
        out.append(minute - last)
        last = minute
    return out


def before_horizon(start: int, deltas: list[int]) -> list[int]:
    """The firings before PYTZ_HORIZON."""
    minute, out = start // 60, []
    for delta in deltas:
        minute += delta
        if minute >= PYTZ_HORIZON:
            break
        out.append(delta)
    return out


def describe(start: int, deltas: list[int]) -> list[str]:
    """The firings, as UTC times."""
    minute, out = start // 60, []
    for delta in deltas:
        minute += delta
        out.append(datetime.datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%d %H:%M"))
    return out


@pytest.mark.parametrize("index", range(len(FIXTURE["schedules"])), ids=lambda i: FIXTURE["schedules"][i])
def test_next_firings_match_groc_in_every_zone_from_every_start(index):
    text = FIXTURE["schedules"][index]
    if text in DOCUMENTED_EXCEPTIONS:
        pytest.fail(f"{text!r} is a documented exception yet in the firing corpus")
    differences = []
    for zone_name, rows in FIXTURE["firings"][index].items():
        zone = zoneinfo.ZoneInfo(zone_name)
        for start, expected in zip(FIXTURE["starts"][zone_name], rows, strict=True):
            expected = before_horizon(start, expected)
            got = before_horizon(start, kiln_firings(text, zone, start, FIXTURE["count"]))
            if got != expected:
                when = datetime.datetime.fromtimestamp(start, UTC).isoformat()
                first = next(i for i in range(len(expected) + 1) if expected[i:i + 1] != got[i:i + 1])
                differences.append(f"{zone_name} from {when}, firing {first + 1}: groc "
                                   f"{describe(start, expected)[first:first + 1]}, kiln "
                                   f"{describe(start, got)[first:first + 1]}")
    assert not differences, f"{len(differences)} differences, e.g.\n" + "\n".join(differences[:5])


@pytest.mark.parametrize("text, accepted, message", FIXTURE["grammar"], ids=[repr(g[0]) for g in FIXTURE["grammar"]])
def test_kiln_accepts_and_refuses_what_groc_does(text, accepted, message):
    if text in DOCUMENTED_EXCEPTIONS:
        return
    try:
        parse(text)
        kiln_accepted, error = True, ""
    except ScheduleError as exc:
        kiln_accepted, error = False, str(exc)
    assert kiln_accepted == accepted, f"groc: {message or 'accepted'}; kiln: {error or 'accepted'}"


def test_the_fixture_covers_every_zone_kind_and_twenty_firings():
    assert FIXTURE["count"] == 20
    assert {"UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Australia/Sydney"} <= set(
        FIXTURE["zones"])
    assert all(len(FIXTURE["starts"][z]) >= 20 for z in FIXTURE["zones"])
