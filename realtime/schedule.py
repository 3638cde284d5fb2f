"""Orders and cancels waiting for their release, in the shared settlement order.

An action's release time is ``max(due, arrival watermark)``: its due time (event time plus
the allowed lateness) or, for an event that reached its partition after the partition's
watermark had passed that, the watermark it arrived at. It is released once the worker's
watermark is strictly past it (see ``realtime.engine`` for why that makes the outcome
independent of batching, consumption order, workers and crashes).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared_logic.settlement import ActionKind, action_key

ActionKey = tuple[int, int, str]


@dataclass(order=True, slots=True)
class Action:
    key: ActionKey
    bucket: int = field(compare=False)
    payload: dict[str, Any] = field(compare=False)

    @property
    def kind(self) -> ActionKind:
        return "decide" if self.key[1] == 0 else "cancel"

    @property
    def release_ms(self) -> int:
        return self.key[0]


def release_ms(data: dict[str, Any], lateness_ms: int) -> int:
    return max(int(data["event_time"]) + lateness_ms, int(data.get("awm", 0)))


def _queued_key(action: Action) -> tuple[ActionKey, str]:
    """What makes a queued action one: its key and its event's digest (two cancels of one order
    released at the same instant are two actions; a redelivered copy is the same one)."""
    return action.key, str(action.payload.get("dg", ""))


class ActionQueue:
    """A heap of pending actions ordered by ``settlement.action_key`` of their release; each queued
    once (``_queued_key``)."""

    def __init__(self, lateness_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self._heap: list[Action] = []
        self._queued: set[tuple[ActionKey, str]] = set()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, bucket: int, kind: ActionKind, data: dict[str, Any]) -> None:
        action = Action(action_key(release_ms(data, self.lateness_ms), kind, data["order_id"]), bucket, data)
        if (queued := _queued_key(action)) not in self._queued:
            self._queued.add(queued)
            heapq.heappush(self._heap, action)

    def replace(self, bucket: int, kind: ActionKind, data: dict[str, Any]) -> None:
        """Queue ``data`` in place of the action of the same kind and order id, if one is queued
        here (the identity rule replaced a pending copy of an order: its release time may differ)."""
        order_id = data["order_id"]
        keep = [a for a in self._heap if not (a.kind == kind and a.payload["order_id"] == order_id)]
        if len(keep) != len(self._heap):
            heapq.heapify(keep)
            self._heap = keep
            self._queued = {_queued_key(a) for a in keep}
        self.push(bucket, kind, data)

    def pop_released(self, watermark_ms: int) -> list[Action]:
        """Every action released strictly before ``watermark_ms``, in settlement order."""
        out = []
        while self._heap and self._heap[0].key[0] < watermark_ms:
            action = heapq.heappop(self._heap)
            self._queued.discard(_queued_key(action))
            out.append(action)
        return out

    def drop(self, tps: Iterable[str]) -> int:
        """Forget the actions of partitions this worker no longer holds (their new owner recovers
        them from Redis); returns how many."""
        lost = set(tps)
        keep = [a for a in self._heap if a.payload.get("tp") not in lost]
        dropped = len(self._heap) - len(keep)
        if dropped:
            heapq.heapify(keep)
            self._heap = keep
            self._queued = {_queued_key(a) for a in keep}
        return dropped

    def first_release_ms(self) -> int | None:
        return self._heap[0].key[0] if self._heap else None
