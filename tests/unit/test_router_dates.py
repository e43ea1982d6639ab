"""router.responses.http_date: the HTTP date of now plus an offset, each second's made once per offset."""

import email.utils
import time

import pytest

from router.responses import http_date


@pytest.mark.parametrize("offset", [0, 1, 600, 86_400 * 365])
def test_the_date_is_now_plus_the_offset_in_whole_seconds(offset: int) -> None:
    before = int(time.time())
    made = [http_date(offset) for _ in range(3)]
    after = int(time.time())
    for text in made:
        stamp = int(email.utils.parsedate_to_datetime(text).timestamp())
        assert before + offset <= stamp <= after + offset


def test_dates_for_different_offsets_are_kept_apart() -> None:
    before = int(time.time())
    pairs = [(http_date(0), http_date(600)) for _ in range(3)]
    after = int(time.time())
    for now, later in pairs:
        gap = (email.utils.parsedate_to_datetime(later) - email.utils.parsedate_to_datetime(now)).total_seconds()
        assert 600 - (after - before) <= gap <= 600 + (after - before)


def test_many_offsets_all_give_their_own_date() -> None:
    before = int(time.time())
    made = {offset: http_date(offset) for offset in range(1, 200)}
    after = int(time.time())
    for offset, text in made.items():
        stamp = int(email.utils.parsedate_to_datetime(text).timestamp())
        assert before + offset <= stamp <= after + offset
