"""App Engine's cron ``schedule`` grammar, and when a schedule fires.

Two forms, case-insensitive:

- **Intervals**: ``every N minutes|mins|hours``, optionally ``synchronized`` (aligned to 00:00 each day; N must
  divide 24 hours) or ``from HH:MM to HH:MM`` (only inside that daily window, from its start, stepping by N; the
  window may cross midnight). A plain interval is in absolute time: N after the previous run.
- **Specific times**: ``[every|ORDINALS] DAYS [of MONTHS] HH:MM`` — ``every day 09:00``, ``every mon,wed 18:30``,
  ``1st,3rd tuesday of month 10:00``, ``2nd wednesday of march,june 12:00``; ordinals ``1st``–``5th`` (or
  ``first``–``fifth``): the N-th such weekday of the month (a month without a 5th one is skipped); days and
  months by full or three-letter name.
- **Days of the month**: ``DAYS of month|MONTHS HH:MM`` — ``1 of jan,april,july,oct 00:00``, ``1,15 of month
  09:00``; a month without that day (the 31st of April, the 29th of February outside leap years) is skipped, and
  a schedule no month can satisfy is refused.

Wall-clock times are in the job's time zone. Across a DST change a time that does not exist that day (02:30 when
clocks jump from 02:00 to 03:00) fires at the same offset after the jump (03:30); a time that happens twice (01:30
when clocks fall back) fires once, at its first occurrence. Errors name the offending word and its position.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime
import re
import zoneinfo

UTC = datetime.timezone.utc
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
ORDINALS = {"1st": 1, "first": 1, "2nd": 2, "second": 2, "3rd": 3, "third": 3, "4th": 4, "fourth": 4,
            "5th": 5, "fifth": 5}
MINUTE_UNITS = ("minutes", "minute", "mins", "min")
HOUR_UNITS = ("hours", "hour", "hrs", "hr")
TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
SEARCH_MONTHS = 400 * 12 + 1  # the Gregorian calendar repeats every 400 years
MONTH_LENGTHS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the longest each month gets


class ScheduleError(ValueError):
    """The schedule text is not App Engine's grammar (the message names the word)."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule; :meth:`next_after` gives its firing times."""

    text: str
    interval_minutes: int = 0  # > 0: an interval schedule
    synchronized: bool = False
    window: tuple[int, int] | None = None  # minutes of the day, from and to (inclusive)
    minute_of_day: int = 0
    weekdays: frozenset[int] = frozenset()  # 0 = Monday; empty: every day
    ordinals: frozenset[int] = frozenset()  # 1..5; empty: every occurrence
    months: frozenset[int] = frozenset()  # 1..12; empty: every month
    monthdays: frozenset[int] = frozenset()  # 1..31; non-empty: these days of the month (not weekdays)

    def next_after(self, after: datetime.datetime, tz: zoneinfo.ZoneInfo,
                   previous: datetime.datetime | None = None) -> datetime.datetime:
        """The first firing strictly after ``after`` (aware), in UTC. ``previous`` (the last scheduled firing)
        matters only for plain intervals, which run N after it."""
        after = after.astimezone(UTC)
        if self.interval_minutes and not self.synchronized and self.window is None:
            step = datetime.timedelta(minutes=self.interval_minutes)
            if previous is None:
                return _next_minute(after)
            first = previous.astimezone(UTC) + step
            if first > after:
                return first
            skipped = (after - first) // step + 1
            return first + skipped * step
        local_day = after.astimezone(tz).date()
        if self.interval_minutes:
            return self._next_interval(after, tz, local_day)
        start = local_day - datetime.timedelta(days=1)
        year, month = start.year, start.month
        for _ in range(SEARCH_MONTHS):
            if not self.months or month in self.months:
                for day in self._days_of(year, month):
                    if day >= start:
                        fire = _at(day, self.minute_of_day, tz)
                        if fire > after:
                            return fire
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        raise ScheduleError(f"schedule {self.text!r}: never fires")  # parse refuses such schedules

    def _next_interval(self, after: datetime.datetime, tz: zoneinfo.ZoneInfo,
                       local_day: datetime.date) -> datetime.datetime:
        for offset in range(-1, 3):
            found = self._first_after(local_day + datetime.timedelta(days=offset), tz, after)
            if found is not None:
                return found
        raise ScheduleError(f"schedule {self.text!r}: no firing time found")  # unreachable for valid schedules

    def _minutes(self) -> range:
        """The day's wall-clock firing minutes after its midnight (past 1440 for a window crossing midnight)."""
        if self.window is None:
            return range(0, 24 * 60, self.interval_minutes)
        start, end = self.window
        if end < start:
            end += 24 * 60  # the window crosses midnight
        return range(start, end + 1, self.interval_minutes)

    def _first_after(self, day: datetime.date, tz: zoneinfo.ZoneInfo,
                     after: datetime.datetime) -> datetime.datetime | None:
        """The earliest of ``day``'s firings after ``after``, or None."""
        minutes = self._minutes()
        midnight = datetime.datetime.combine(day, datetime.time())
        if tz.utcoffset(midnight) == tz.utcoffset(midnight + datetime.timedelta(days=2)):
            # No clock change that day: wall time and UTC keep their order, so the answer is found by arithmetic
            # (an every-minute schedule would otherwise convert 1,440 times per call).
            elapsed = (after.astimezone(tz).replace(tzinfo=None) - midnight) / datetime.timedelta(minutes=1)
            index = 0 if elapsed < minutes.start else int((elapsed - minutes.start) // minutes.step) + 1
            return _at(day, minutes[index], tz) if index < len(minutes) else None
        # A clock change: the UTC times of the day's wall-clock minutes need not be in order (a time skipped by
        # the jump lands after the jump), so the smallest one after `after` is taken rather than the first.
        found = [t for t in (_at(day, m, tz) for m in minutes) if t > after]
        return min(found) if found else None

    def _days_of(self, year: int, month: int) -> list[datetime.date]:
        """The days of that month the schedule fires on, in order."""
        length = calendar.monthrange(year, month)[1]
        if self.monthdays:
            return [datetime.date(year, month, d) for d in sorted(self.monthdays) if d <= length]
        days = (datetime.date(year, month, d) for d in range(1, length + 1))
        return [day for day in days
                if (not self.weekdays or day.weekday() in self.weekdays)
                and (not self.ordinals or (day.day - 1) // 7 + 1 in self.ordinals)]


def _at(day: datetime.date, minutes: int, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
    """Wall-clock ``minutes`` after midnight of ``day`` in ``tz`` (may run into the next day), in UTC. fold=0:
    a repeated time is its first occurrence; a skipped one lands the gap's length later."""
    naive = datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(minutes=minutes)
    return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _next_minute(after: datetime.datetime) -> datetime.datetime:
    return after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)


def parse_timezone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``America/New_York``)."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}; use an IANA name such as Europe/London or UTC") from None


class _Words:
    """The schedule's words (commas are separators, not words) with positions for errors."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = re.findall(r"[^\s,]+|,", text.lower())
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str | None:
        word = self.peek()
        if word is not None:
            self.i += 1
        return word

    def position(self) -> int:
        return sum(1 for t in self.tokens[: self.i] if t != ",") + 1

    def fail(self, word: str | None, expected: str, *, at: int | None = None) -> ScheduleError:
        where = at if at is not None else self.position()
        if word is None:
            return ScheduleError(f"schedule {self.text!r}: ends too early (after word {where - 1}); expected "
                                 f"{expected}")
        return ScheduleError(f"schedule {self.text!r}: unexpected word {word!r} (word {where}); expected {expected}")

    def word(self, expected: str) -> str:
        at = self.position()
        word = self.take()
        if word is None or word == ",":
            raise self.fail(word, expected, at=at)
        return word

    def names(self, table: dict[str, int], expected: str) -> list[int]:
        """A comma-separated list of names from ``table``; no repeats."""
        out: list[int] = []
        while True:
            at = self.position()
            word = self.word(expected)
            if word not in table:
                raise self.fail(word, expected, at=at)
            if table[word] in out:
                raise ScheduleError(f"schedule {self.text!r}: {word!r} (word {at}) is listed twice")
            out.append(table[word])
            if self.peek() != ",":
                return out
            self.take()


def _name_table(names: tuple[str, ...], base: int) -> dict[str, int]:
    table = {}
    for i, name in enumerate(names):
        table[name] = i + base
        table[name[:3]] = i + base
    return table


_DAY_TABLE = _name_table(DAYS, 0)
_MONTH_TABLE = _name_table(MONTHS, 1)
_MONTH_TABLE["sept"] = 9
_MONTHDAY_TABLE = {str(d): d for d in range(1, 32)}


def _time(words: _Words) -> int:
    at = words.position()
    word = words.word("a time HH:MM")
    match = TIME_RE.match(word)
    if not match:
        raise words.fail(word, "a time HH:MM (00:00 to 23:59)", at=at)
    return int(match.group(1)) * 60 + int(match.group(2))


def parse(text: str) -> Schedule:
    """Parse a schedule.

    Raises:
        ScheduleError: the message names the offending word and its position.
    """
    words = _Words(text)
    if not words.tokens:
        raise ScheduleError("schedule is empty; e.g. 'every 5 minutes' or 'every monday 09:00'")
    first = words.peek()
    if first == "every" and len(words.tokens) > 1 and words.tokens[1].isdigit():
        schedule = _interval(words)
    else:
        schedule = _times(words)
    if words.peek() is not None:
        raise words.fail(words.peek(), "nothing more")
    return schedule


def _interval(words: _Words) -> Schedule:
    words.take()  # every
    at = words.position()
    count = int(words.word("a number"))
    if count < 1:
        raise words.fail(str(count), "a number of at least 1", at=at)
    at = words.position()
    unit = words.word("minutes or hours")
    if unit in MINUTE_UNITS:
        minutes = count
    elif unit in HOUR_UNITS:
        minutes = count * 60
    else:
        raise words.fail(unit, "minutes or hours", at=at)
    if minutes > 24 * 60 * 366:
        raise words.fail(str(count), "an interval of at most a year", at=2)
    option = words.peek()
    if option is None:
        return Schedule(text=words.text, interval_minutes=minutes)
    if option == "synchronized":
        words.take()
        if (24 * 60) % minutes:
            raise ScheduleError(f"schedule {words.text!r}: 'synchronized' needs an interval that divides 24 hours "
                                f"evenly, got {minutes} minutes")
        if words.peek() == "from":
            raise words.fail("from", "nothing after 'synchronized' (it cannot have a from/to window)")
        return Schedule(text=words.text, interval_minutes=minutes, synchronized=True)
    if option == "from":
        words.take()
        start = _time(words)
        at = words.position()
        word = words.take()
        if word != "to":
            raise words.fail(word, "'to' and the window's end", at=at)
        end = _time(words)
        if words.peek() == "synchronized":
            raise words.fail("synchronized", "nothing after the window (it cannot be synchronized)")
        return Schedule(text=words.text, interval_minutes=minutes, window=(start, end))
    raise words.fail(option, "'synchronized', 'from HH:MM to HH:MM' or nothing")


def _times(words: _Words) -> Schedule:
    first = words.peek()
    if first is not None and first.isdigit():
        return _monthdays(words)
    ordinals: list[int] = []
    if first == "every":
        words.take()
    else:
        ordinals = words.names(ORDINALS, "'every', an ordinal (1st, 2nd, 3rd, 4th, 5th, first…) or days of the "
                                         "month (1,15)")
    weekdays: list[int] = []
    if words.peek() == "day":
        words.take()
        if ordinals:
            raise words.fail("day", "a weekday after an ordinal (e.g. 1st monday)", at=words.position() - 1)
    else:
        weekdays = words.names(_DAY_TABLE, "'day' or weekdays (monday or mon, …)")
    months: list[int] = []
    if words.peek() == "of":
        words.take()
        if words.peek() == "month":
            words.take()
        else:
            months = words.names(_MONTH_TABLE, "'month' or months (january or jan, …)")
    minute = _time(words)
    return Schedule(text=words.text, minute_of_day=minute, weekdays=frozenset(weekdays),
                    ordinals=frozenset(ordinals), months=frozenset(months))


def _monthdays(words: _Words) -> Schedule:
    days = words.names(_MONTHDAY_TABLE, "a day of the month from 1 to 31")
    at = words.position()
    word = words.take()
    if word != "of":
        raise words.fail(word, "'of' and 'month' or months (1 of month, 15 of jan,jul)", at=at)
    months: list[int] = []
    at = words.position()
    if words.peek() == "month":
        words.take()
    else:
        months = words.names(_MONTH_TABLE, "'month' or months (january or jan, …)")
    longest = max(MONTH_LENGTHS[m - 1] for m in months or range(1, 13))
    if min(days) > longest:
        names = ",".join(MONTHS[m - 1] for m in months)
        raise ScheduleError(f"schedule {words.text!r}: {names} (word {at}) never has a day {min(days)}, so the job "
                            f"would never run")
    minute = _time(words)
    return Schedule(text=words.text, minute_of_day=minute, months=frozenset(months), monthdays=frozenset(days))
