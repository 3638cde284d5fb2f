"""The error tree of the rules package.

``AttributionError`` is the one base; the HTTP layer and the CLI map it to a
status code or a one-line message. Every error names the field, the value and
the rule it broke, so a dead letter explains itself.
"""

from __future__ import annotations

from typing import Any

_MAX_VALUE_REPR = 80


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_REPR else text[: _MAX_VALUE_REPR - 3] + "..."


class AttributionError(Exception):
    """Base of every error raised by the engine's own code."""


class InvalidInput(AttributionError, ValueError):
    """A record broke a rule of its contract: which field, which value, which rule."""

    kind = "input"

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {self.kind}: field {field!r} = {_short(value)}: {rule}")

    def as_dict(self) -> dict[str, str]:
        """A JSON-friendly form, used as the reason of a dead letter."""
        return {"field": self.field, "value": _short(self.value), "rule": self.rule}


class InvalidEvent(InvalidInput):
    """An event failed validation against the wire contract."""

    kind = "event"


class InvalidCampaign(InvalidInput):
    """A campaign record (or the catalog holding it) failed validation."""

    kind = "campaign"
