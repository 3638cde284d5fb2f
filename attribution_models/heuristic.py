"""Rule-based models: first, last, linear, position-based, time decay.

Conventions follow ChannelAttribution's ``heuristic_models``: every touch of a
path counts, repeats included (``a > a > b`` gives ``a`` two thirds under
linear), and an empty path credits nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from attribution_models.base import AttributionModel
from attribution_models.errors import ModelError
from attribution_models.types import Journey, ModelResult, PathStats


class PositionalModel(AttributionModel):
    """A model whose touch weights depend only on the positions in the path."""

    def weights(self, n: int) -> list[float]:
        raise NotImplementedError

    def touch_credits(self, journey: Journey) -> list[float]:
        return self.weights(len(journey.touches)) if journey.touches else []

    def attribute(self, paths: Sequence[PathStats]) -> ModelResult:
        conv: dict[str, float] = {}
        val: dict[str, float] = {}
        for p in paths:
            for ch in p.path:
                conv.setdefault(ch, 0.0)
                val.setdefault(ch, 0.0)
            if not p.path:
                continue
            for ch, w in zip(p.path, self.weights(len(p.path)), strict=True):
                conv[ch] += w * p.conversions
                val[ch] += w * p.value
        return ModelResult(self.name, conv, val)


class FirstTouch(PositionalModel):
    name = "first_touch"

    def weights(self, n: int) -> list[float]:
        return [1.0] + [0.0] * (n - 1)


class LastTouch(PositionalModel):
    name = "last_touch"

    def weights(self, n: int) -> list[float]:
        return [0.0] * (n - 1) + [1.0]


class Linear(PositionalModel):
    name = "linear"

    def weights(self, n: int) -> list[float]:
        return [1.0 / n] * n


class PositionBased(PositionalModel):
    """U-shaped: ``first`` and ``last`` shares to the ends, the rest split over the middle.

    With one touch it takes everything; with two, the middle share is split
    between them in proportion to ``first`` and ``last``.
    """

    name = "position_based"

    def __init__(self, first: float = 0.4, last: float = 0.4) -> None:
        if first < 0 or last < 0 or first + last > 1 or not math.isfinite(first + last):
            raise ModelError(f"first = {first}, last = {last}: need first, last >= 0 and first + last <= 1")
        self.first, self.last = first, last

    def weights(self, n: int) -> list[float]:
        if n == 1:
            return [1.0]
        if n == 2:
            ends = self.first + self.last
            if ends == 0:
                return [0.5, 0.5]
            return [self.first / ends, self.last / ends]
        middle = (1.0 - self.first - self.last) / (n - 2)
        return [self.first] + [middle] * (n - 2) + [self.last]


class TimeDecay(AttributionModel):
    """Weight ``2 ** (-(conversion time - touch time) / half_life)``, normalised per journey.

    Decay runs in real elapsed time, not position: two touches a minute apart
    weigh nearly the same however many touches lie between them. Path
    aggregates carry no times, so this model works on journeys only.
    """

    name = "time_decay"

    def __init__(self, half_life_ms: int = 7 * 86_400_000) -> None:
        if half_life_ms <= 0:
            raise ModelError(f"half_life_ms = {half_life_ms}: must be > 0")
        self.half_life_ms = half_life_ms

    def touch_credits(self, journey: Journey) -> list[float]:
        if not journey.touches:
            return []
        end = journey.conversion_time_ms
        if end is None:
            end = max(t.time_ms for t in journey.touches)
        # Work in log space relative to the newest touch so nothing underflows to 0/0.
        ages = [max(end - t.time_ms, 0) for t in journey.touches]
        youngest = min(ages)
        raw = [2.0 ** (-(a - youngest) / self.half_life_ms) for a in ages]
        total = sum(raw)
        return [r / total for r in raw]

    def attribute(self, paths: Sequence[PathStats]) -> ModelResult:
        raise ModelError("time_decay needs touch times: use attribute_journeys, not path aggregates")
