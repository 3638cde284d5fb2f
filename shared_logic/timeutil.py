"""Time inside the engine is UTC epoch milliseconds; time zones live at the edges."""

from __future__ import annotations

from datetime import UTC, date, datetime

# Anything outside these bounds is a unit mistake (seconds sent as milliseconds)
# or garbage, not a real event.
MIN_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z

MS_PER_SECOND = 1_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


def to_epoch_ms(value: object) -> int:
    """Epoch milliseconds from an int (epoch ms) or an RFC 3339 string with an offset.

    Raises ``ValueError`` whose message states the rule broken.
    """
    if isinstance(value, bool):
        raise ValueError("must be epoch milliseconds (int) or an RFC 3339 string, not a boolean")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            raise ValueError("RFC 3339 timestamp needs a UTC offset (e.g. 'Z')")
        ms = int(parsed.timestamp() * 1000)
    else:
        raise ValueError("must be epoch milliseconds (int) or an RFC 3339 string")
    if not MIN_EPOCH_MS <= ms < MAX_EPOCH_MS:
        hint = " (seconds instead of milliseconds?)" if 0 < ms < MIN_EPOCH_MS else ""
        raise ValueError(f"is outside 2000-01-01..2100-01-01{hint}")
    return ms


def utc_day(ms: int) -> str:
    """The UTC calendar day (``YYYY-MM-DD``) of epoch milliseconds: the lake's ``dt``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()


def utc_hour(ms: int) -> tuple[str, str]:
    """The UTC day and hour (``("YYYY-MM-DD", "HH")``) of epoch milliseconds: raw partitions."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return t.date().isoformat(), f"{t.hour:02d}"


def utc_day_bounds_ms(day: date) -> tuple[int, int]:
    """Start (inclusive) and end (exclusive) of a UTC day in epoch milliseconds."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    return start, start + MS_PER_DAY
