"""Spark column forms of ``shared_logic`` rules the job applies to whole columns.

Each mirrors one pure function, for speed (a column expression runs in the JVM, a Python
call per row would not); a test feeds the same rows to both and demands equal answers.
"""

from __future__ import annotations

from typing import Any

from shared_logic.timeutil import MS_PER_DAY


def in_future(max_future_ms: int) -> Any:
    """``shared_logic.policy.in_future(event_time, ingested_at_ms, max_future_ms)`` over raw rows:
    an event dated further after the time it landed than ``max_future_ms``."""
    from pyspark.sql import functions as F  # noqa: N812

    return F.col("event_time") > F.col("ingested_at_ms") + F.lit(max_future_ms)


def cancel_counts(order_time: str, cancel_time: str, lookback_days: int, horizon_days: int) -> Any:
    """``shared_logic.settlement.cancel_counts`` over two columns of epoch milliseconds."""
    from pyspark.sql import functions as F  # noqa: N812

    day_start = F.col(order_time) - F.pmod(F.col(order_time), F.lit(MS_PER_DAY))
    return (F.col(cancel_time) >= day_start - F.lit(lookback_days * MS_PER_DAY)) & (
        F.col(cancel_time) < day_start + F.lit((horizon_days + 1) * MS_PER_DAY)
    )
