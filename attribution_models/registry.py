"""Models by name: ``get_model("markov", order=2)``; the names are the contract's ``MODEL_NAMES``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from attribution_models.base import AttributionModel
from attribution_models.errors import ModelError
from attribution_models.heuristic import FirstTouch, LastTouch, Linear, PositionBased, TimeDecay
from attribution_models.markov import Markov
from attribution_models.shapley import Shapley
from shared_logic.contract import MODEL_NAMES

_FACTORIES: Final[dict[str, Callable[..., AttributionModel]]] = {
    "first_touch": FirstTouch,
    "last_touch": LastTouch,
    "linear": Linear,
    "position_based": PositionBased,
    "time_decay": TimeDecay,
    "markov": Markov,
    "shapley": Shapley,
}

# The lake's ``model`` column names the models; the registry serves exactly those.
if set(_FACTORIES) != set(MODEL_NAMES):  # pragma: no cover - a broken release, caught by any test
    raise ImportError(f"models {sorted(_FACTORIES)} differ from the contract's {sorted(MODEL_NAMES)}")


def get_model(name: str, **params: Any) -> AttributionModel:
    """A fresh model instance; raises ``ModelError`` naming a bad name or parameter."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ModelError(f"model = {name!r}: must be one of {', '.join(MODEL_NAMES)}")
    try:
        return factory(**params)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: bad parameters {params!r}: {exc}") from None
