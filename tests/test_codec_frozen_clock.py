"""Codecs under a frozen clock: freezegun's stand-in datetime classes must encode,
and annotations resolved while the clock is frozen must still decode."""

from __future__ import annotations

from datetime import UTC, date, datetime

from freezegun import freeze_time

from taskpipe import JsonCodec, MsgPackCodec, WorkerBuilder
from taskpipe.sqlite import SqliteStorage


def test_fake_datetimes_round_trip_through_both_codecs():
    with freeze_time("2024-03-31 01:30:00"):
        now = datetime.now(UTC)
        today = date.today()
        assert type(now).__module__.startswith("freezegun")  # a FakeDatetime
        for codec in (JsonCodec(), MsgPackCodec()):
            value = codec.decode(codec.encode({"when": now}), dict[str, datetime | None])
            assert value["when"] == datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
            assert type(value["when"]).__module__ == "datetime"
            assert codec.decode(codec.encode(today), date) == date(2024, 3, 31)
            assert codec.decode(codec.encode([now]), list[datetime]) == [
                datetime(2024, 3, 31, 1, 30, tzinfo=UTC)
            ]


def test_worker_built_under_a_frozen_clock_decodes_datetime_args(storage: SqliteStorage):
    seen = []

    def handler(when: datetime) -> None:  # resolved at build(), under the frozen clock
        seen.append(when)

    with freeze_time("2024-01-01 12:00:00"):
        storage.push(datetime.now(UTC))
        worker = WorkerBuilder("frozen").backend(storage).build(handler)
        assert worker.run_until_idle() == 1
    assert seen == [datetime(2024, 1, 1, 12, tzinfo=UTC)]
