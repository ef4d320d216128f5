"""The timetable's pure rules: weeks as schools write them, weekdays, times, a term's weeks and dates, live lesson ids
of occurrences, and clashes (teacher or classroom, overlapping times on a common date; back to back is fine)."""

from __future__ import annotations

from datetime import date

import pytest

from signaling.accounts.timetable import (
    Slot,
    clashes,
    format_weeks,
    lesson_id,
    parse_lesson_id,
    parse_time,
    parse_weekday,
    parse_weeks,
    term_end,
    weekly_dates,
)


@pytest.mark.parametrize(("text", "weeks"), [
    ("1-16", list(range(1, 17))), ("1,3,5-7", [1, 3, 5, 6, 7]), ("第1-4周", [1, 2, 3, 4]), ("1～4", [1, 2, 3, 4]),
    ("1-8(单)", [1, 3, 5, 7]), ("1-8双周", [2, 4, 6, 8]), ("2、4，6", [2, 4, 6]), ("", list(range(1, 19)))])
def test_weeks_as_schools_write_them(text: str, weeks: list[int]) -> None:
    assert parse_weeks(text, 18) == weeks


@pytest.mark.parametrize("text", ["0-3", "1-19", "5-3", "a-b", "1--2", "2-2(单)"])
def test_weeks_outside_the_term_or_malformed_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_weeks(text, 18)


def test_weekdays_times_and_the_canonical_weeks() -> None:
    assert [parse_weekday(w) for w in ("一", "周二", "星期三", "礼拜四", "5", "Sat", "周日", "星期天")] == [
        1, 2, 3, 4, 5, 6, 7, 7]
    for bad in ("八", "0", "周", ""):
        with pytest.raises(ValueError):
            parse_weekday(bad)
    assert [parse_time(t) for t in ("8:00", "08:05", "23：59")] == ["08:00", "08:05", "23:59"]
    for bad in ("24:00", "8", "8:60", "08:00:00"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert format_weeks([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"


def test_a_term_beginning_midweek_has_no_lesson_before_its_first_day() -> None:
    start = date(2025, 9, 3)  # a Wednesday: week 1 is 1-7 September
    assert term_end(start, 2) == date(2025, 9, 14)
    assert weekly_dates(start, 2, 1, [1, 2]) == [date(2025, 9, 8)]  # Monday of week 1 is before the term
    assert weekly_dates(start, 2, 5, [1, 2, 3]) == [date(2025, 9, 5), date(2025, 9, 12)]


def test_an_occurrences_live_lesson_id_round_trips() -> None:
    assert lesson_id("k3x9m2pq", date(2025, 9, 8)) == "k3x9m2pq-20250908"
    assert parse_lesson_id("k3x9m2pq-20250908") == ("k3x9m2pq", date(2025, 9, 8))
    for other in ("math-7a", "x-20251340", "-20250908", "abc"):
        assert parse_lesson_id(other) is None


def slot(entry: str, teacher: str, rooms: set[str], start: str, end: str, days: set[date]) -> Slot:
    return Slot(entry, entry, teacher, frozenset(rooms), frozenset(days), start, end)


def test_clashes_need_a_shared_person_a_common_date_and_overlapping_times() -> None:
    monday, tuesday = date(2025, 9, 1), date(2025, 9, 2)
    new = slot("new", "li", {"r3"}, "08:00", "08:45", {monday, tuesday})
    others = [slot("same-teacher", "li", {"r9"}, "08:30", "09:00", {tuesday}),
              slot("same-room", "wang", {"r3"}, "07:30", "08:01", {monday}),
              slot("back-to-back", "li", {"r3"}, "08:45", "09:30", {monday}),
              slot("other-day", "li", {"r3"}, "08:00", "08:45", {date(2025, 9, 3)}),
              slot("others", "zhao", {"r5"}, "08:00", "08:45", {monday}),
              slot("new", "li", {"r3"}, "08:00", "08:45", {monday})]  # itself (an edit)
    found = clashes(new, others)
    assert [(c.entry_id, c.day, c.teacher, c.classroom_ids) for c in found] == [
        ("same-teacher", tuesday, True, ()), ("same-room", monday, False, ("r3",))]
