"""App Engine's cron ``schedule`` grammar, and when a schedule fires — as Google's own parser (groc) has them.

Two forms, case-insensitive (words need no spaces between them where groc needs none):

- **Intervals**: ``every N minutes|mins|hours`` (N: 1 to 5 digits), optionally ``synchronized`` (aligned to
  00:00 each day; N must divide 24 hours) or ``from HH:MM to HH:MM`` (only inside that daily window, from its
  start; the window may cross midnight), then optionally ``on mon,tue`` (only on those weekdays; N at most 24
  hours). A plain interval runs N after the previous run (the first N after it is planned, to the minute).
- **Specific times**: ``[every|ORDINALS] DAYS [of MONTHS] HH:MM`` — ``every day 09:00``, ``every mon,wed 18:30``,
  ``1st,3rd tuesday of month 10:00``, ``2nd wednesday of march,june 12:00``, ``first sunday of quarter 00:00``,
  ``1st monday of 2nd month of quarter 09:00``; ordinals ``1st``–``5th`` (or ``first``–``fifth``): the N-th such
  weekday of the month (a month without a 5th one is skipped); ``1st,3rd day of month``: those days of the month;
  days and months by full or three-letter name.
- **Days of the month**: ``DAYS of month|MONTHS|quarter HH:MM`` — ``1 of jan,april,july,oct 00:00``, ``1,15 of
  month 09:00``; a month without that day is skipped, and a schedule no month can satisfy is refused.

Wall-clock times are in the job's time zone, across DST changes as groc computes them (App Engine's documentation
is silent there): a specific time skipped by a spring-forward jump does not fire that day; one repeated when clocks
fall back fires at both occurrences. A window (and ``synchronized``, the window 00:00 to 23:59) starts at its
start time's first occurrence (a start skipped by the jump: the first minute after it) and steps by N in absolute
time from there, up to the end's first occurrence. Errors name the offending word and its position.
"""

from __future__ import annotations

import bisect
import calendar
import dataclasses
import datetime
import re
import zoneinfo
from collections.abc import Callable

UTC = datetime.timezone.utc
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
SEARCH_MONTHS = 400 * 12 + 1  # the Gregorian calendar repeats every 400 years
MONTH_LENGTHS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # the longest each month gets
DAY_MINUTES = 24 * 60
ALL_WEEKDAYS = frozenset(range(7))
ALL_ORDINALS = frozenset(range(1, 6))
ALL_MONTHS = frozenset(range(1, 13))
MINUTE = datetime.timedelta(minutes=1)


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
    weekdays: frozenset[int] = frozenset()  # 0 = Monday; empty: every day (intervals too: `on mon,tue`)
    ordinals: frozenset[int] = frozenset()  # 1..5; empty: every occurrence
    months: frozenset[int] = frozenset()  # 1..12; empty: every month
    monthdays: frozenset[int] = frozenset()  # 1..31; non-empty: these days of the month (not weekdays)

    def next_after(self, after: datetime.datetime, tz: zoneinfo.ZoneInfo,
                   previous: datetime.datetime | None = None) -> datetime.datetime:
        """The first firing strictly after ``after`` (aware), in UTC. ``previous`` (the last scheduled firing)
        matters only for plain intervals, which run N after it; without it the first is N after ``after``."""
        after = after.astimezone(UTC)
        if not self.interval_minutes:
            return self._next_specific(after, tz)
        step = datetime.timedelta(minutes=self.interval_minutes)
        if self.synchronized or self.window is not None:
            return self._restricted(after, step, tz, self._next_in_window)
        if previous is not None:
            previous = previous.astimezone(UTC)
            # The grid previous + k*step from its first point after `after` (missed points are skipped).
            origin = previous + (max(after - previous, datetime.timedelta()) // step) * step
            return self._restricted(origin, step, tz, lambda t, _: t + step)
        # groc: N after the start, to the minute.
        return self._restricted(after, step, tz, lambda t, _: _floor_minute(t + step))

    # --- intervals --------------------------------------------------------------------------------------------

    def _restricted(self, start: datetime.datetime, step: datetime.timedelta, tz: zoneinfo.ZoneInfo,
                    candidate: Callable[[datetime.datetime, zoneinfo.ZoneInfo], datetime.datetime]
                    ) -> datetime.datetime:
        """groc's weekday restriction: the candidates from start, start + N, start + 2N, … until one falls on an
        allowed weekday. Candidates never decrease as the start grows, so the ones of a wrong day are passed by a
        search for the first at or after that day's end instead of one by one."""
        if not self.weekdays:
            return candidate(start, tz)
        j = 0
        for _ in range(SEARCH_MONTHS):
            found = candidate(start + j * step, tz)
            local = found.astimezone(tz)
            if local.weekday() in self.weekdays:
                return found
            day_end = _combine(local.date() + datetime.timedelta(days=1), 0, tz)
            low, high = j, j + 1
            while candidate(start + high * step, tz) < day_end:
                low, high = high, high + 2 * (high - j)
            while high - low > 1:
                middle = (low + high) // 2
                if candidate(start + middle * step, tz) < day_end:
                    low = middle
                else:
                    high = middle
            j = high
        raise ScheduleError(f"schedule {self.text!r}: never fires in {tz.key}")  # unreachable: weekdays recur

    def _bounds(self) -> tuple[int, int]:
        return (0, DAY_MINUTES - 1) if self.window is None else self.window

    def _next_in_window(self, t: datetime.datetime, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
        """The window's next firing after ``t``: its grid steps by N in absolute time from the latest start of the
        window; a grid point past the window's end, or the next start, gives way to the next start."""
        begin, _ = self._bounds()
        seconds = self.interval_minutes * 60
        anchor = _previous_at(t, begin, tz)
        elapsed = int((t - anchor).total_seconds())
        point = anchor + datetime.timedelta(seconds=(elapsed + seconds) // seconds * seconds)
        next_start = _next_at(t, begin, tz)
        if self._in_window(t, tz) and self._in_window(point, tz) and point < next_start:
            return point
        return next_start

    def _in_window(self, t: datetime.datetime, tz: zoneinfo.ZoneInfo) -> bool:
        """Whether ``t`` is after the latest start of the window and before its end (or exactly at the end)."""
        begin, end = self._bounds()
        last_end = _previous_at(t, end, tz)
        return _previous_at(t, begin, tz) > last_end or t == last_end

    # --- specific times ---------------------------------------------------------------------------------------

    def _next_specific(self, after: datetime.datetime, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
        local = after.astimezone(tz)
        year, month = local.year, local.month
        for _ in range(SEARCH_MONTHS):
            if not self.months or month in self.months:
                for day in self._days_of(year, month):
                    if (year, month) == (local.year, local.month) and day.day < local.day:
                        continue
                    fire = _occurrence(day, self.minute_of_day, tz, after)
                    if fire is not None and fire > after:
                        return fire
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        # A time that every occurrence of which a DST jump skips (New York's 2nd Sunday of March at 02:30).
        raise ScheduleError(f"schedule {self.text!r}: never fires in {tz.key} (a clock change skips that time "
                            f"each time it comes)")

    def _days_of(self, year: int, month: int) -> list[datetime.date]:
        """The days of that month the schedule fires on, in order."""
        length = calendar.monthrange(year, month)[1]
        if self.monthdays:
            return [datetime.date(year, month, d) for d in sorted(self.monthdays) if d <= length]
        days = (datetime.date(year, month, d) for d in range(1, length + 1))
        return [day for day in days
                if (not self.weekdays or day.weekday() in self.weekdays)
                and (not self.ordinals or (day.day - 1) // 7 + 1 in self.ordinals)]


# --- wall clock ↔ UTC, as groc resolves DST ---------------------------------------------------------------------

def _floor_minute(t: datetime.datetime) -> datetime.datetime:
    return t.replace(second=0, microsecond=0)


def _instants(naive: datetime.datetime, tz: zoneinfo.ZoneInfo) -> list[datetime.datetime]:
    """The UTC instants showing wall time ``naive`` in ``tz``: none (skipped by a jump), one, or two (repeated
    when clocks fall back), earliest first."""
    out = []
    for fold in (0, 1):
        instant = naive.replace(tzinfo=tz, fold=fold).astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == naive and instant not in out:
            out.append(instant)
    return sorted(out)


def _combine(day: datetime.date, minutes: int, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
    """Wall time ``minutes`` after midnight of ``day``: a repeated time's first occurrence; a skipped time, the
    first minute after the jump."""
    naive = datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(minutes=minutes)
    while True:
        found = _instants(naive, tz)
        if found:
            return found[0]
        naive += MINUTE


def _previous_at(t: datetime.datetime, minutes: int, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
    """The latest instant at or before ``t`` that is wall time ``minutes`` (as :func:`_combine` resolves it)."""
    day = t.astimezone(tz).date()
    while (found := _combine(day, minutes, tz)) > t:
        day -= datetime.timedelta(days=1)
    return found


def _next_at(t: datetime.datetime, minutes: int, tz: zoneinfo.ZoneInfo) -> datetime.datetime:
    """The earliest instant after ``t`` that is wall time ``minutes`` (as :func:`_combine` resolves it)."""
    day = t.astimezone(tz).date()
    while (found := _combine(day, minutes, tz)) <= t:
        day += datetime.timedelta(days=1)
    return found


def _occurrence(day: datetime.date, minutes: int, tz: zoneinfo.ZoneInfo,
                after: datetime.datetime) -> datetime.datetime | None:
    """A specific time on ``day``: None if the jump skips it; of a repeated time, the first occurrence unless
    ``after`` is already at or past it, then the second."""
    found = _instants(datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(minutes=minutes), tz)
    if not found:
        return None
    return found[0] if after < found[0] else found[-1]


def parse_timezone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``America/New_York``)."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r}; use an IANA name such as Europe/London or UTC") from None


# --- grammar ----------------------------------------------------------------------------------------------------

def _names(full: tuple[str, ...], base: int) -> list[tuple[str, str, int]]:
    # groc's words: the three-letter name or the full one (no other abbreviations: no `sept`, `tues`, `thur`).
    return [(f"{name[:3]}(?:{name[3:]})?" if len(name) > 3 else name, "name", base + i)
            for i, name in enumerate(full)]


# (pattern, kind, value); the longest match wins, then the earliest rule.
_RULES: list[tuple[str, str, int]] = [
    (r"(?:[01][0-9]|2[0-3]):[0-5][0-9]|[0-9]:[0-5][0-9]", "time", 0),
    (r"[0-9]{1,5}", "number", 0),
    (r"1st|first", "ordinal", 1), (r"2nd|second", "ordinal", 2), (r"3rd|third", "ordinal", 3),
    (r"4th|fourth", "ordinal", 4), (r"5th|fifth", "ordinal", 5),
    (r"every", "every", 0), (r"synchronized", "synchronized", 0), (r"day", "day", 0),
    (r"month", "month", 0), (r"quarter", "quarter", 0), (r"hours", "hours", 60), (r"mins|minutes", "minutes", 1),
    (r"of", "of", 0), (r"from", "from", 0), (r"to", "to", 0), (r"on", "on", 0), (r",", ",", 0),
]
_WEEKDAY_RULES = [(p, "weekday", v) for p, _, v in _names(DAYS, 0)]
_MONTH_RULES = [(p, "monthname", v) for p, _, v in _names(MONTHS, 1)]
_LEXER = [(re.compile(p), kind, value) for p, kind, value in _RULES + _WEEKDAY_RULES + _MONTH_RULES]
_SPACE = " \t\r\n"


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    value: int
    word: int  # 1-based number of the space- or comma-separated word it is in
    word_text: str


class _Words:
    """The schedule's tokens (groc's: words may touch) with the words they are in, for errors."""

    def __init__(self, text: str) -> None:
        self.text = text
        lowered = text.lower()
        spans = [(m.start(), m.end()) for m in re.finditer(r"[^\s,]+", lowered)]
        starts = [s for s, _ in spans]

        def word_at(pos: int) -> tuple[int, str]:
            """The word containing ``pos`` (a comma between words: the word before it)."""
            i = max(bisect.bisect_right(starts, pos) - 1, 0)
            return i + 1, lowered[spans[i][0]:spans[i][1]]

        self.tokens: list[_Token] = []
        pos = 0
        while pos < len(lowered):
            if lowered[pos] in _SPACE:
                pos += 1
                continue
            best: tuple[int, str, int] | None = None
            for pattern, kind, value in _LEXER:
                m = pattern.match(lowered, pos)
                if m and (best is None or m.end() > best[0]):
                    best = (m.end(), kind, value)
            if best is None:  # no word of the grammar: the parser names it where it fails
                end = re.compile(r"[^\s,]*").match(lowered, pos)
                best = (max(end.end() if end else pos, pos + 1), "unknown", 0)
            word, word_text = word_at(pos)
            if best[1] == ",":
                word = sum(1 for _, e in spans if e <= pos)  # the words before it
            self.tokens.append(_Token(best[1], lowered[pos:best[0]], best[2], word, word_text))
            pos = best[0]
        self.i = 0
        self.words = len(spans)

    def peek(self, ahead: int = 0) -> _Token | None:
        i = self.i + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def kind(self, ahead: int = 0) -> str | None:
        token = self.peek(ahead)
        return token.kind if token else None

    def take(self, *kinds: str, expected: str) -> _Token:
        token = self.peek()
        if token is None or token.kind not in kinds:
            raise self.fail(token, expected)
        self.i += 1
        return token

    def fail(self, token: _Token | None, expected: str) -> ScheduleError:
        if token is None:
            return ScheduleError(f"schedule {self.text!r}: ends too early (after word {self.words}); expected "
                                 f"{expected}")
        if token.kind == ",":
            where = f"after word {token.word}" if token.word else "at the start"
            return ScheduleError(f"schedule {self.text!r}: unexpected ',' ({where}); expected {expected}")
        return ScheduleError(f"schedule {self.text!r}: unexpected word {token.word_text!r} (word {token.word}); "
                             f"expected {expected}")

    def listed(self, kinds: tuple[str, ...], expected: str) -> list[_Token]:
        """A comma-separated list (repeats are allowed, as groc allows them)."""
        out = [self.take(*kinds, expected=expected)]
        while self.kind() == ",":
            self.i += 1
            out.append(self.take(*kinds, expected=expected))
        return out


def _minute_of(token: _Token) -> int:
    hours, minutes = token.text.split(":")
    return int(hours) * 60 + int(minutes)


def parse(text: str) -> Schedule:
    """Parse a schedule.

    Raises:
        ScheduleError: the message names the offending word and its position.
    """
    words = _Words(text)
    if not words.tokens:
        raise ScheduleError("schedule is empty; e.g. 'every 5 minutes' or 'every monday 09:00'")
    if words.kind() == "every" and words.kind(1) == "number":
        schedule = _interval(words)
    else:
        schedule = _times(words)
    if words.peek() is not None:
        raise words.fail(words.peek(), "nothing more")
    return schedule


def _weekdays(words: _Words, expected: str) -> frozenset[int]:
    """``day`` (every day: empty) or a list of weekdays."""
    if words.kind() == "day":
        words.i += 1
        return frozenset()
    days = frozenset(t.value for t in words.listed(("weekday",), expected))
    return frozenset() if days == ALL_WEEKDAYS else days


def _interval(words: _Words) -> Schedule:
    words.i += 1  # every
    number = words.take("number", expected="a number")
    count = int(number.text)
    if count < 1:
        raise words.fail(number, "a number of at least 1")
    unit = words.take("minutes", "hours", expected="minutes, mins or hours")
    minutes = count * unit.value
    synchronized = False
    window: tuple[int, int] | None = None
    if words.kind() == "synchronized":
        words.i += 1
        if minutes > DAY_MINUTES or DAY_MINUTES % minutes:
            raise ScheduleError(f"schedule {words.text!r}: 'synchronized' needs an interval that divides 24 hours "
                                f"evenly, got {minutes} minutes")
        synchronized = True
    elif words.kind() == "from":
        words.i += 1
        start = _minute_of(words.take("time", expected="a time HH:MM (00:00 to 23:59)"))
        words.take("to", expected="'to' and the window's end")
        end = _minute_of(words.take("time", expected="a time HH:MM (00:00 to 23:59)"))
        window = (start, end)
    weekdays: frozenset[int] = frozenset()
    if words.kind() == "on":
        on = words.peek()
        words.i += 1
        weekdays = _weekdays(words, "'day' or weekdays (monday or mon, …)")
        if weekdays and minutes > DAY_MINUTES:
            raise words.fail(on, f"no weekdays: an interval of {minutes} minutes is longer than a day")
    expected = "'on' and weekdays, or nothing" if synchronized or window else \
        "'synchronized', 'from HH:MM to HH:MM', 'on' and weekdays, or nothing"
    if words.peek() is not None:
        raise words.fail(words.peek(), expected)
    return Schedule(text=words.text, interval_minutes=minutes, synchronized=synchronized, window=window,
                    weekdays=weekdays)


def _months(words: _Words) -> frozenset[int]:
    """After ``of``: ``month``, month names, ``quarter`` or ``1st,2nd month of quarter``."""
    expected = "'month', months (january or jan, …), 'quarter' or '1st month of quarter'"
    kind = words.kind()
    if kind == "month":
        words.i += 1
        return frozenset()
    if kind == "quarter":
        words.i += 1
        return frozenset({1, 4, 7, 10})
    if kind == "ordinal":
        offsets = [t.value for t in words.listed(("ordinal",), "1st, 2nd or 3rd (month of the quarter)")]
        for token_offset in offsets:
            if token_offset > 3:
                raise ScheduleError(f"schedule {words.text!r}: a quarter has three months; got month "
                                    f"{token_offset} of quarter")
        words.take("month", expected="'month of quarter'")
        words.take("of", expected="'of quarter'")
        words.take("quarter", expected="'quarter'")
        return frozenset(o + q for o in offsets for q in (0, 3, 6, 9))
    months = frozenset(t.value for t in words.listed(("monthname",), expected))
    return frozenset() if months == ALL_MONTHS else months


def _times(words: _Words) -> Schedule:
    months: frozenset[int] = frozenset()
    weekdays: frozenset[int] = frozenset()
    ordinals: frozenset[int] = frozenset()
    monthdays: frozenset[int] = frozenset()
    if words.kind() == "number":
        numbers = words.listed(("number",), "a day of the month from 1 to 31")
        for number in numbers:
            if not 1 <= int(number.text) <= 31:
                raise words.fail(number, "a day of the month from 1 to 31")
        monthdays = frozenset(int(t.text) for t in numbers)
        words.take("of", expected="'of' and 'month' or months (1 of month, 15 of jan,jul)")
        of = words.peek()
        months = _months(words)
        longest = max(MONTH_LENGTHS[m - 1] for m in months or ALL_MONTHS)
        if min(monthdays) > longest:
            names = ",".join(MONTHS[m - 1] for m in sorted(months))
            raise ScheduleError(f"schedule {words.text!r}: {names} (word {of.word if of else 0}) never has a day "
                                f"{min(monthdays)}, so the job would never run")
    else:
        if words.kind() == "every":
            words.i += 1
        else:
            ordinals = frozenset(t.value for t in words.listed(
                ("ordinal",), "'every', an ordinal (1st, 2nd, 3rd, 4th, 5th, first…) or days of the month (1,15)"))
        if words.kind() == "day" and ordinals:
            words.i += 1
            monthdays, ordinals = ordinals, frozenset()  # `1st,3rd day`: those days of the month
        else:
            weekdays = _weekdays(words, "'day' or weekdays (monday or mon, …)")
        if ordinals == ALL_ORDINALS:
            ordinals = frozenset()
        if words.kind() == "of":
            words.i += 1
            months = _months(words)
    minute = _minute_of(words.take("time", expected="a time HH:MM (00:00 to 23:59)"))
    return Schedule(text=words.text, minute_of_day=minute, weekdays=weekdays, ordinals=ordinals, months=months,
                    monthdays=monthdays)
