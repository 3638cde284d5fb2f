"""Multi-touch attribution models: pure code (numpy) over journeys and path aggregates.

Heuristic: ``first_touch``, ``last_touch``, ``linear``, ``position_based``,
``time_decay``. Data-driven: ``markov`` (order k, exact removal effects),
``shapley`` (exact, over channel coalitions). Each is callable on one journey
(``touch_credits``, for Spark's per-group functions) and on path aggregates
(``attribute``).
"""

from attribution_models.base import AttributionModel
from attribution_models.errors import ModelError
from attribution_models.registry import get_model
from attribution_models.types import (
    Journey,
    ModelResult,
    PathStats,
    TouchPoint,
    aggregate_journeys,
    paths_from_columns,
    paths_from_records,
    split_path,
)
from shared_logic.contract import MODEL_NAMES

__all__ = [
    "MODEL_NAMES",
    "AttributionModel",
    "Journey",
    "ModelError",
    "ModelResult",
    "PathStats",
    "TouchPoint",
    "aggregate_journeys",
    "get_model",
    "paths_from_columns",
    "paths_from_records",
    "split_path",
]
