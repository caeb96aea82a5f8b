"""The one place taskpipe reads the time.

Every run_after, backoff, lease and cron computation goes through these functions,
and they look ``time.time`` up at call time, so ``freezegun`` (which patches the
``time`` module) controls all of them. Durations are plain seconds (floats).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import overload

__all__ = ["now", "timestamp", "from_timestamp", "to_timestamp", "seconds", "real_monotonic"]


def timestamp() -> float:
    """Return the current time as Unix epoch seconds."""
    return time.time()


def now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.fromtimestamp(time.time(), tz=UTC)


@overload
def from_timestamp(value: None) -> None: ...
@overload
def from_timestamp(value: float) -> datetime: ...
def from_timestamp(value: float | None) -> datetime | None:
    """Turn epoch seconds (as stored) into an aware UTC datetime; None stays None."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=UTC)


def to_timestamp(value: datetime) -> float:
    """Turn an aware datetime into epoch seconds; a naive one is an error."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            f"{value!r} is a naive datetime: pass an aware one, e.g. datetime.now(timezone.utc)"
        )
    return value.timestamp()


@overload
def seconds(value: None, *, name: str = ...) -> None: ...
@overload
def seconds(value: timedelta | float, *, name: str = ...) -> float: ...
def seconds(value: timedelta | float | None, *, name: str = "duration") -> float | None:
    """Accept a timedelta or a number of seconds (the API takes both) and return seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = float(value)
    else:
        raise TypeError(
            f"{name} must be a timedelta or a number of seconds, not {type(value).__name__}"
        )
    if result < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    return result


_clock_gettime = getattr(time, "clock_gettime", None)
_CLOCK_MONOTONIC = getattr(time, "CLOCK_MONOTONIC", None)


def real_monotonic() -> float:
    """Seconds on a monotonic clock that freezegun does not freeze.

    Only for how long a *person* waits (shutdown grace, ``wait_for`` timeouts):
    a loop on a frozen deadline would never end.
    """
    if _clock_gettime is not None and _CLOCK_MONOTONIC is not None:
        return _clock_gettime(_CLOCK_MONOTONIC)
    return time.monotonic()  # pragma: no cover - platforms without clock_gettime
