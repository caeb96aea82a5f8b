"""Rate limits (the ``rate_limits`` capability): ``take_slot`` spaces starts per key."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from contract_support import T0, need
from freezegun import freeze_time

THREADS = 8


def _key() -> str:
    return f"limit-{uuid.uuid4().hex[:12]}"


def test_take_slot_spaces_the_starts_of_a_key_by_the_interval(store):
    need(store, "rate_limits")
    key, other = _key(), _key()
    with freeze_time(T0) as frozen:
        assert [store.take_slot(key, 0.5) for _ in range(3)] == [0.0, 0.5, 1.0]
        assert store.take_slot(other, 0.5) == 0.0  # keys are independent
        frozen.tick(timedelta(seconds=0.25))
        assert store.take_slot(key, 0.5) == 1.25  # after the slot reserved at T0 + 1.0
        frozen.tick(timedelta(seconds=10))
        assert store.take_slot(key, 0.5) == 0.0  # the limit was idle: start now
        assert store.take_slot(key, 2.0) == 2.0  # each call spaces by its own interval


def test_concurrent_callers_get_distinct_slots(store):
    """``THREADS`` callers released together by a barrier each reserve a slot of one
    key: the slots are ``interval`` apart (none shared, none skipped)."""
    need(store, "rate_limits")
    key, interval = _key(), 100.0
    barrier = threading.Barrier(THREADS)
    waits: list[float] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            barrier.wait(timeout=30)
            waits.append(store.take_slot(key, interval))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close_thread_connection()

    threads = [threading.Thread(target=caller) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    # Real time passes between the calls (well under the 5 s allowed), not 100 s.
    for slot, wait in enumerate(sorted(waits)):
        assert slot * interval - 5 <= wait <= slot * interval, sorted(waits)
    assert len(waits) == THREADS
