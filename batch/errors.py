"""Errors of the batch layer."""

from __future__ import annotations

from datetime import date

from shared_logic.errors import AttributionError, Conflict, NotFound


class NoRawData(NotFound):
    """The lake holds no raw events for the day asked for."""


class NothingToReconcile(NotFound):
    """Neither ledger has the day."""


class DataQualityError(AttributionError):
    """A data-quality check of a day failed."""


class StaleCheckpoints(Conflict):
    """A rerun would leave later settlement checkpoints built on state it replaces."""

    def __init__(self, message: str, days: list[date]) -> None:
        self.days = days
        super().__init__(message)
