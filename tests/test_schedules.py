"""Tests for taskpipe.schedules: anchored due times, DST handling, errors."""

from __future__ import annotations

import itertools
import time as _time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import schedule
from freezegun import freeze_time

from taskpipe.errors import TaskpipeError
from taskpipe.schedules import (
    CronSchedule,
    EverySchedule,
    Schedule,
    ScheduleError,
    parse_schedule,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def as_utc(values: list[datetime]) -> list[datetime]:
    return [v.astimezone(UTC) for v in values]


@pytest.fixture(autouse=True)
def no_global_jobs():
    """Building schedules from jobs must never register them in schedule's default scheduler."""
    before = list(schedule.default_scheduler.jobs)
    yield
    assert schedule.default_scheduler.jobs == before


# --- weekly ----------------------------------------------------------------------------------


def test_weekly_cron_and_weekly_job_agree():
    cron = parse_schedule("30 9 * * 1")
    job = parse_schedule(schedule.every().monday.at("09:30"))
    assert isinstance(cron, CronSchedule) and isinstance(job, EverySchedule)
    assert cron.name == "30 9 * * 1"
    assert job.name == "every monday at 09:30"

    wednesday = utc(2024, 5, 1, 12)
    assert cron.next_after(wednesday) == job.next_after(wednesday) == utc(2024, 5, 6, 9, 30)
    # strictly after: at the due time itself, the next one is a week later
    assert job.next_after(utc(2024, 5, 6, 9, 30)) == utc(2024, 5, 13, 9, 30)
    assert cron.next_after(utc(2024, 5, 6, 9, 30)) == utc(2024, 5, 13, 9, 30)
    weeks_cron = list(itertools.islice(cron.iter_after(wednesday), 10))
    weeks_job = list(itertools.islice(job.iter_after(wednesday), 10))
    assert weeks_cron == weeks_job
    assert all(d.weekday() == 0 and (d.hour, d.minute) == (9, 30) for d in weeks_job)


def test_every_two_weeks_anchored_on_monday_1970_01_05():
    sched = parse_schedule(schedule.every(2).weeks)
    assert sched.name == "every 2 weeks"
    dues = list(itertools.islice(sched.iter_after(utc(2024, 5, 1)), 5))
    for d in dues:
        assert d.weekday() == 0 and d.time() == datetime.min.time()
        assert (d.date() - date(1970, 1, 5)).days % 14 == 0
    assert [b - a for a, b in itertools.pairwise(dues)] == [timedelta(weeks=2)] * 4


# --- daily and DST ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source", [schedule.every().day.at("07:00"), "0 7 * * *"], ids=["job", "cron"]
)
def test_daily_0700_paris_across_both_dst_changes(source):
    sched = parse_schedule(source, tz="Europe/Paris")
    spring = sched.due_between(utc(2024, 3, 29), utc(2024, 4, 2))
    assert as_utc(spring) == [
        utc(2024, 3, 29, 6),  # CET, UTC+1
        utc(2024, 3, 30, 6),
        utc(2024, 3, 31, 5),  # CEST, UTC+2 from 31 March 01:00 UTC
        utc(2024, 4, 1, 5),
    ]
    autumn = sched.due_between(utc(2024, 10, 25), utc(2024, 10, 29))
    assert as_utc(autumn) == [
        utc(2024, 10, 25, 5),
        utc(2024, 10, 26, 5),
        utc(2024, 10, 27, 6),  # back to CET on 27 October 01:00 UTC
        utc(2024, 10, 28, 6),
    ]
    for d in spring + autumn:
        assert d.tzinfo == PARIS and (d.hour, d.minute) == (7, 0)


@pytest.mark.parametrize(
    "source", [schedule.every().day.at("02:30"), "30 2 * * *"], ids=["job", "cron"]
)
def test_daily_spring_forward_gap_fires_once_at_gap_end(source):
    sched = parse_schedule(source, tz="Europe/Paris")
    dues = sched.due_between(utc(2024, 3, 29), utc(2024, 4, 2))
    assert as_utc(dues) == [
        utc(2024, 3, 29, 1, 30),
        utc(2024, 3, 30, 1, 30),
        utc(2024, 3, 31, 1),  # 02:30 does not exist: 03:00 CEST, the first valid instant
        utc(2024, 4, 1, 0, 30),
    ]
    assert dues[2].replace(tzinfo=None) == datetime(2024, 3, 31, 3, 0)


@pytest.mark.parametrize(
    "source", [schedule.every().day.at("02:30"), "30 2 * * *"], ids=["job", "cron"]
)
def test_daily_fall_back_overlap_fires_once_first_occurrence(source):
    sched = parse_schedule(source, tz="Europe/Paris")
    dues = sched.due_between(utc(2024, 10, 26, 12), utc(2024, 10, 28, 12))
    assert as_utc(dues) == [utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30)]
    assert dues[0].fold == 0
    # between the two 02:30s, and during the second one, the next due time is the next day
    assert sched.next_after(utc(2024, 10, 27, 0, 45)) == utc(2024, 10, 28, 1, 30)
    second_0245 = datetime(2024, 10, 27, 2, 45, fold=1, tzinfo=PARIS)
    assert sched.next_after(second_0245) == utc(2024, 10, 28, 1, 30)


def test_every_two_days_anchored_on_local_1970_01_01():
    sched = parse_schedule(schedule.every(2).days.at("07:00"), tz="Europe/Paris")
    assert sched.name == "every 2 days at 07:00"
    assert (date(2024, 5, 1) - date(1970, 1, 1)).days % 2 == 0  # 1 May 2024 is on the grid
    assert sched.next_after(utc(2024, 5, 1)) == datetime(2024, 5, 1, 7, tzinfo=PARIS)
    assert sched.next_after(utc(2024, 5, 1, 5)) == datetime(2024, 5, 3, 7, tzinfo=PARIS)
    assert sched.next_after(utc(2024, 5, 2, 23)) == datetime(2024, 5, 3, 7, tzinfo=PARIS)
    midnight = parse_schedule(schedule.every(2).days)
    assert midnight.next_after(utc(2024, 5, 1)) == utc(2024, 5, 3)


def test_job_time_zone_wins_and_seconds_in_at():
    sched = parse_schedule(schedule.every().day.at("07:00:30", "Europe/Paris"), tz="Asia/Tokyo")
    assert sched.tz == PARIS
    assert sched.name == "every day at 07:00:30"
    assert sched.next_after(utc(2024, 7, 1)) == utc(2024, 7, 1, 5, 0, 30)


# --- interval units --------------------------------------------------------------------------


def test_every_ten_minutes_is_anchored_without_drift():
    sched = parse_schedule(schedule.every(10).minutes)
    assert sched.name == "every 10 minutes"
    assert sched.next_after(utc(2024, 5, 1, 12, 3, 7)) == utc(2024, 5, 1, 12, 10)
    assert sched.next_after(utc(2024, 5, 1, 12, 10)) == utc(2024, 5, 1, 12, 20)
    # a late caller (almost a whole period late) gets the grid, not "late + 10 minutes"
    late = datetime(2024, 5, 1, 12, 19, 59, 999_999, tzinfo=UTC)
    dues = list(itertools.islice(sched.iter_after(late), 3))
    assert dues == [utc(2024, 5, 1, 12, 20), utc(2024, 5, 1, 12, 30), utc(2024, 5, 1, 12, 40)]


def test_every_two_seconds_and_interval_hours_are_absolute_across_dst():
    two = parse_schedule(schedule.every(2).seconds)
    assert two.name == "every 2 seconds"
    assert two.next_after(utc(2024, 1, 1, 0, 0, 1)) == utc(2024, 1, 1, 0, 0, 2)
    hourly = parse_schedule(schedule.every().hour, tz="Europe/Paris")
    day = hourly.due_between(
        datetime(2024, 10, 27, tzinfo=PARIS), datetime(2024, 10, 28, tzinfo=PARIS)
    )
    assert len(day) == 25  # the repeated hour is a real hour
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(as_utc(day)))


def test_input_in_other_zone_output_in_schedule_zone():
    sched = parse_schedule(schedule.every(10).minutes, tz="Europe/Paris")
    due = sched.next_after(datetime(2024, 5, 1, 8, 3, tzinfo=NEW_YORK))
    assert due.tzinfo == PARIS
    assert due == utc(2024, 5, 1, 12, 10)


def test_hour_at_and_minute_at():
    hourly = parse_schedule(schedule.every().hour.at(":15"))
    assert hourly.name == "every hour at :15"
    assert hourly.next_after(utc(2024, 5, 1, 12, 15)) == utc(2024, 5, 1, 13, 15)
    assert hourly.next_after(utc(2024, 5, 1, 12, 14, 59)) == utc(2024, 5, 1, 12, 15)
    # local minute 15, also in a zone whose offset is not whole hours
    kolkata = parse_schedule(schedule.every().hour.at(":15"), tz="Asia/Kolkata")
    assert kolkata.next_after(utc(2024, 5, 1)).minute == 15
    minutely = parse_schedule(schedule.every().minute.at(":30"))
    assert minutely.name == "every minute at :30"
    assert minutely.next_after(utc(2024, 5, 1, 12, 0, 30)) == utc(2024, 5, 1, 12, 1, 30)


def test_hour_at_follows_local_minute_across_half_hour_dst():
    lord_howe = ZoneInfo("Australia/Lord_Howe")  # DST moves clocks by 30 minutes
    sched = parse_schedule(schedule.every().hour.at(":15"), tz=lord_howe)
    spring = sched.due_between(
        datetime(2011, 10, 2, 0, 30, tzinfo=lord_howe), datetime(2011, 10, 2, 4, tzinfo=lord_howe)
    )
    assert [str(d) for d in spring] == ["2011-10-02 01:15:00+10:30", "2011-10-02 03:15:00+11:00"]
    autumn = sched.due_between(
        datetime(2011, 4, 3, 0, 30, tzinfo=lord_howe), datetime(2011, 4, 3, 4, tzinfo=lord_howe)
    )
    assert [d.minute for d in autumn] == [15, 15, 15]


# --- cron ------------------------------------------------------------------------------------


def test_hourly_alias_across_dst():
    sched = parse_schedule("@hourly", tz="Europe/Paris")
    assert sched.name == "@hourly"
    assert sched.next_after(utc(2024, 5, 1, 12, 0, 1)) == utc(2024, 5, 1, 13)
    autumn = sched.due_between(
        datetime(2024, 10, 27, tzinfo=PARIS), datetime(2024, 10, 28, tzinfo=PARIS)
    )
    spring = sched.due_between(
        datetime(2024, 3, 31, tzinfo=PARIS), datetime(2024, 4, 1, tzinfo=PARIS)
    )
    assert (len(autumn), len(spring)) == (25, 23)
    assert [d.fold for d in autumn[1:3]] == [0, 1]  # 02:00 CEST then 02:00 CET


def test_aliases_and_explain():
    assert parse_schedule("@daily").next_after(utc(2024, 5, 1, 1)) == utc(2024, 5, 2)
    assert parse_schedule("@weekly").next_after(utc(2024, 5, 1)).weekday() == 6  # Sunday
    assert parse_schedule("@yearly").next_after(utc(2024, 5, 1)) == utc(2025, 1, 1)
    assert "07:00" in parse_schedule("0 7 * * 1-5", tz="Europe/Paris").explain()
    assert "Europe/Paris" in parse_schedule("0 7 * * 1-5", tz="Europe/Paris").explain()
    assert "every 10 minutes" in parse_schedule(schedule.every(10).minutes).explain()


# --- due_between -----------------------------------------------------------------------------


def test_due_between_bounds_and_limit():
    sched = parse_schedule(schedule.every(10).minutes)
    start, end = utc(2024, 5, 1, 12), utc(2024, 5, 1, 13)
    expected = [utc(2024, 5, 1, 12, m) for m in (10, 20, 30, 40, 50)] + [end]
    assert sched.due_between(start, end) == expected  # start excluded, end included
    assert sched.due_between(start, end, limit=2) == expected[-2:]
    assert sched.due_between(start, end, limit=100) == expected
    assert sched.due_between(start, end, limit=0) == []
    assert sched.due_between(end, start) == []
    with pytest.raises(ScheduleError):
        sched.due_between(start, end, limit=-1)


@pytest.mark.parametrize(
    "source", [schedule.every().second, "* * * * * *", "0 0 1 1 *"], ids=["job", "cron", "yearly"]
)
def test_due_between_huge_range_with_limit_is_fast(source):
    sched = parse_schedule(source)
    began = _time.perf_counter()
    dues = sched.due_between(utc(2000, 1, 1), utc(2024, 1, 1, 0, 0, 0), limit=3)
    assert _time.perf_counter() - began < 2  # a full walk would take minutes
    if source == "0 0 1 1 *":
        assert dues == [utc(2022, 1, 1), utc(2023, 1, 1), utc(2024, 1, 1)]
    else:
        assert dues == [
            utc(2023, 12, 31, 23, 59, 58),
            utc(2023, 12, 31, 23, 59, 59),
            utc(2024, 1, 1),
        ]


def test_results_do_not_depend_on_the_clock():
    sched = parse_schedule(schedule.every().day.at("07:00"), tz="Europe/Paris")
    with freeze_time("2001-01-01"):
        first = sched.next_after(utc(2024, 5, 1))
    with freeze_time("2030-06-15 12:00"):
        assert sched.next_after(utc(2024, 5, 1)) == first


# --- errors ----------------------------------------------------------------------------------


def test_naive_input_is_rejected():
    for sched in (parse_schedule("@hourly"), parse_schedule(schedule.every(10).minutes)):
        with pytest.raises(ScheduleError, match=r"datetime\.now\(timezone\.utc\)"):
            sched.next_after(datetime(2024, 5, 1))
        with pytest.raises(ScheduleError, match="aware"):
            sched.iter_after(datetime(2024, 5, 1))
        with pytest.raises(ScheduleError, match="aware"):
            sched.due_between(utc(2024, 5, 1), datetime(2024, 5, 2))


def test_unsupported_source_type():
    with pytest.raises(ScheduleError, match="int") as info:
        parse_schedule(42)  # type: ignore[arg-type]
    assert "cron expression" in str(info.value) and "schedule.Job" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TaskpipeError)


def test_random_interval_is_rejected():
    with pytest.raises(ScheduleError, match=r"random intervals \(\.to\(10\)\)"):
        parse_schedule(schedule.every(5).to(10).minutes)


def test_bad_cron_expression_message():
    with pytest.raises(ScheduleError) as info:
        parse_schedule("61 * * * *")
    message = str(info.value)
    assert "'61 * * * *'" in message and "Bad minute" in message and "5 fields" in message
    with pytest.raises(ScheduleError, match="Wrong number of fields"):
        parse_schedule("@every5m")


def test_other_errors():
    with pytest.raises(ScheduleError, match="unknown time zone"):
        parse_schedule("@daily", tz="Mars/Olympus")
    with pytest.raises(ScheduleError, match="no usable unit"):
        parse_schedule(schedule.every(3))


def test_existing_schedule_is_returned_as_is():
    sched = CronSchedule("0 7 * * 1-5", tz=PARIS)
    assert parse_schedule(sched, tz="UTC") is sched
    assert isinstance(sched, Schedule)
    assert sched.next_after(utc(2024, 5, 4)) == datetime(2024, 5, 6, 7, tzinfo=PARIS)  # Sat -> Mon
