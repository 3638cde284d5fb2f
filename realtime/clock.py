"""Event time per input partition, and a worker's watermark.

Each assigned topic-partition has a watermark: the greatest event time the worker has
processed from it. The worker's watermark is the minimum over its assigned partitions
(Flink's rule: the minimum over inputs). A partition is idle only when the worker has
processed it up to its end offset; then, and only then, the wall clock may advance it. So a
partition with lag (a backlog after a restart, a slow or paused partition) holds the
watermark back, and a backlog is decided exactly as a replay of the same events.

Every event is stamped with its partition's watermark just before it (its arrival
watermark): a pure function of the partition's sequence, whatever the batching, the pace of
other partitions or the number of workers. ``realtime.engine`` builds its release rule on it.
The state of a partition (its next offset and watermark) is checkpointed in Redis after each
batch's effects, so a worker that takes a partition over resumes exactly where it stood.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TP = tuple[str, int]  # (topic, partition)


def tp_name(tp: TP) -> str:
    return f"{tp[0]}/{tp[1]}"


@dataclass(slots=True)
class PartitionClock:
    watermark: int = 0
    next_offset: int = 0
    end_offset: int | None = None  # the log end as the consumer last saw it; None: not known yet

    @property
    def idle(self) -> bool:
        return self.end_offset is not None and self.next_offset >= self.end_offset

    @property
    def lag(self) -> int | None:
        return None if self.end_offset is None else max(self.end_offset - self.next_offset, 0)


class Clocks:
    """The partitions a worker holds, their watermarks and offsets."""

    def __init__(self) -> None:
        self.parts: dict[TP, PartitionClock] = {}

    def assign(self, tp: TP, next_offset: int = 0, watermark: int = 0) -> PartitionClock:
        clock = self.parts[tp] = PartitionClock(watermark, next_offset)
        return clock

    def revoke(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.parts.pop(tp, None)

    def set_end(self, tp: TP, end_offset: int) -> None:
        clock = self.parts.get(tp)
        if clock is not None:
            clock.end_offset = end_offset

    def tick(self, now_ms: int) -> None:
        """The wall clock moves every idle partition (never one with lag)."""
        for clock in self.parts.values():
            if clock.idle and now_ms > clock.watermark:
                clock.watermark = now_ms

    def watermark(self) -> int | None:
        """The minimum over the assigned partitions; None when none is assigned."""
        return min((c.watermark for c in self.parts.values()), default=None)
