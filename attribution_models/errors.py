"""Errors of the models package: one class, in the engine's one tree."""

from __future__ import annotations

from shared_logic.errors import AttributionError


class ModelError(AttributionError, ValueError):
    """A model was asked for something it does not define, or given bad input."""
