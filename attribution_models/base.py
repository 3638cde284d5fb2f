"""The interface every model offers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Self

from attribution_models.types import Journey, ModelResult, PathStats, aggregate_journeys


class AttributionModel(ABC):
    """A multi-touch model over journeys or path aggregates.

    Heuristic models need no fitting. Data-driven models (Markov, Shapley) learn
    channel weights from path aggregates in ``fit``; their per-journey credits
    then share a conversion among the journey's channels by those weights.
    """

    name: str = "model"
    data_driven: bool = False

    def fit(self, paths: Sequence[PathStats]) -> Self:
        return self

    @abstractmethod
    def attribute(self, paths: Sequence[PathStats]) -> ModelResult:
        """Credited conversions and value per channel over path aggregates."""

    @abstractmethod
    def touch_credits(self, journey: Journey) -> list[float]:
        """Share of the journey's conversion credited to each touch (sums to 1; [] if empty)."""

    def attribute_journeys(self, journeys: Iterable[Journey]) -> ModelResult:
        """Per-channel totals over journeys.

        Heuristic models sum each journey's touch credits. Data-driven models
        are fitted on the journeys' path aggregates and credit by their global
        weights, which is what their definitions (and ChannelAttribution) say.
        """
        if self.data_driven:
            return self.attribute(aggregate_journeys(journeys))
        conv: dict[str, float] = {}
        val: dict[str, float] = {}
        for j in journeys:
            for t in j.touches:
                conv.setdefault(t.channel, 0.0)
                val.setdefault(t.channel, 0.0)
            if not j.converted or not j.touches:
                continue
            for t, credit in zip(j.touches, self.touch_credits(j), strict=True):
                conv[t.channel] += credit
                val[t.channel] += credit * j.value
        return ModelResult(self.name, conv, val)
