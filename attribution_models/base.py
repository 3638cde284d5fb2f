"""The interface every model offers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Self

from attribution_models.errors import ModelError
from attribution_models.types import Journey, ModelResult, PathStats, aggregate_journeys, totals


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


def share(weights: dict[str, float], total: float) -> dict[str, float]:
    """Split ``total`` in proportion to non-negative weights (all zero: nothing to split)."""
    s = sum(weights.values())
    if s <= 0 or total <= 0:
        return dict.fromkeys(weights, 0.0)
    return {ch: w / s * total for ch, w in weights.items()}


def weighted_credits(journey: Journey, weights: dict[str, float]) -> list[float]:
    """Share one conversion among the journey's touches in proportion to channel weights.

    Each touch gets its channel's weight, so a repeated channel weighs more;
    when no touch has weight (channels unseen in fitting) the split is linear.
    """
    if not journey.touches:
        return []
    raw = [weights.get(t.channel, 0.0) for t in journey.touches]
    total = sum(raw)
    if total <= 0:
        return [1.0 / len(raw)] * len(raw)
    return [r / total for r in raw]


class DataDrivenModel(AttributionModel):
    """A model that learns channel weights in ``fit`` and credits by them.

    Subclasses fit and say what they learned (``channel_weights``, ``details``);
    totals are shared in proportion to the weights, and each journey's touches
    by their channels' weights.
    """

    data_driven = True
    _fitted = False

    @abstractmethod
    def channel_weights(self) -> tuple[dict[str, float], dict[str, float]]:
        """Weights for crediting conversions, and for crediting value."""

    def details(self) -> dict[str, object]:
        return {}

    def attribute(self, paths: Sequence[PathStats]) -> ModelResult:
        self.fit(paths)
        total_conv, total_value = totals(paths)
        conv_weights, value_weights = self.channel_weights()
        return ModelResult(
            self.name, share(conv_weights, total_conv), share(value_weights, total_value), self.details()
        )

    def touch_credits(self, journey: Journey) -> list[float]:
        if not self._fitted:
            raise ModelError(f"{self.name}: call fit() on path aggregates before touch_credits()")
        return weighted_credits(journey, self.channel_weights()[0])
