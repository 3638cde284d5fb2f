"""The root of the engine's one error tree.

``AttributionError`` is the one base. Every package root has one ``errors``
module whose classes derive from the categories below, and the two
boundaries map categories, never single classes: the CLI to an exit status
(``cli.errors``), the HTTP API to a status and an RFC 9457 problem
(``reporting.errors``).

- ``InvalidInput``: a record or a parameter broke a rule; it names the field,
  the value and the rule, so a dead letter or a 422 explains itself.
- ``NotFound``: something the caller named does not exist.
- ``Unavailable``: a server or service the engine needs did not answer.
- ``MissingExtra``: an optional dependency group is not installed.
- ``Conflict``: the request is valid but the current state forbids it.
"""

from __future__ import annotations

import sys
from typing import Any

# Clients' own "could not reach the server" errors, recognised without importing their packages
# (each is an optional extra): (module, class, the dependency's name in an answer). The CLI maps
# them to its "unavailable" exit status, the API to a 503 problem.
FOREIGN_UNAVAILABLE: tuple[tuple[str, str, str], ...] = (
    ("redis.exceptions", "ConnectionError", "the speed layer's Redis"),
    ("redis.exceptions", "TimeoutError", "the speed layer's Redis"),
    ("redis.exceptions", "ClusterDownError", "the speed layer's Redis"),
    ("redis.exceptions", "ClusterError", "the speed layer's Redis"),
    ("redis.exceptions", "ReadOnlyError", "the speed layer's Redis"),
    ("aiokafka.errors", "KafkaConnectionError", "the broker"),
    ("psycopg", "OperationalError", "the analytics store"),
    ("duckdb", "IOException", "the analytics store"),
    ("duckdb", "ConnectionException", "the analytics store"),
    ("httpx", "TransportError", "the analytics store"),
)


def _foreign_classes() -> list[tuple[type[BaseException], str]]:
    out = []
    for module_name, name, what in FOREIGN_UNAVAILABLE:
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            out.append((cls, what))
    return out


def foreign_unavailable(exc: BaseException) -> str | None:
    """The dependency a client library's connection error is about (of the clients imported so
    far), or None for any other error."""
    return next((what for cls, what in _foreign_classes() if isinstance(exc, cls)), None)


def foreign_unavailable_classes() -> tuple[type[BaseException], ...]:
    """The connection-error classes of the clients imported so far."""
    return tuple(cls for cls, _ in _foreign_classes())


MAX_VALUE_REPR = 80


def short_repr(value: Any, limit: int = MAX_VALUE_REPR) -> str:
    """``repr`` cut to ``limit`` characters: errors echo values, never whole payloads."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not turn one bad value into a crash
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AttributionError(Exception):
    """Base of every error raised by the engine's own code."""


class InvalidInput(AttributionError, ValueError):
    """A record or parameter broke a rule of its contract: which field, which value, which rule."""

    kind = "input"

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {self.kind}: field {field!r} = {short_repr(value)}: {rule}")

    def as_dict(self) -> dict[str, str]:
        """A JSON-friendly form, used as the reason of a dead letter."""
        return {"field": self.field, "value": short_repr(self.value), "rule": self.rule}


class InvalidEvent(InvalidInput):
    """An event failed validation against the wire contract."""

    kind = "event"


class InvalidCampaign(InvalidInput):
    """A campaign record (or the catalog holding it) failed validation."""

    kind = "campaign"


class InvalidSetting(InvalidInput):
    """A setting (environment variable, option) has a value the engine cannot use."""

    kind = "setting"


class NotFound(AttributionError, LookupError):
    """Something the caller named (a campaign, a day of data) does not exist."""


class Unavailable(AttributionError, ConnectionError):
    """A server the engine depends on (Redis, a broker, a store, a catalog) did not answer."""


class MissingExtra(AttributionError, ImportError):
    """An optional dependency group is not installed."""

    def __init__(self, what: str, extra: str) -> None:
        self.extra = extra
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'attribution-engine[{extra}]'")


class Conflict(AttributionError):
    """The request is valid but the state of the data forbids it (a rerun that would leave stale days)."""
