"""The wire contract of events: frozen, slotted types and ``parse_event``.

The types are plain dataclasses, so building one from trusted data (a Parquet
row in Spark, a Redis record) costs nothing. Untrusted input goes through
``parse_event``, which validates with one pydantic ``TypeAdapter`` (JSON is
parsed and checked in pydantic-core, not in Python) and turns the first problem
into an ``InvalidEvent`` naming the field, the value and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from shared_logic.errors import InvalidEvent
from shared_logic.money import MAX_AMOUNT_MINOR, currency_exponent
from shared_logic.timeutil import to_epoch_ms

MAX_PAYLOAD_BYTES: Final = 16 * 1024
MAX_ID_LENGTH: Final = 128
MAX_PROMO_CODES: Final = 16

EVENT_TYPES: Final = ("impression", "click", "promo_view", "order", "order_cancel")


def _check_currency(code: str) -> str:
    currency_exponent(code)
    return code


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, strict=True)]
EpochMs = Annotated[int, BeforeValidator(to_epoch_ms)]
AmountMinor = Annotated[int, Field(ge=0, lt=MAX_AMOUNT_MINOR, strict=True)]
CurrencyCode = Annotated[str, Field(strict=True), AfterValidator(_check_currency)]
PromoCodes = Annotated[tuple[Id, ...], Field(max_length=MAX_PROMO_CODES)]
MAX_USER_AGENT_LENGTH: Final = 1024
UserAgent = Annotated[str, Field(min_length=1, max_length=MAX_USER_AGENT_LENGTH, strict=True)]

#: Optional fields of a touch that the invalid-traffic rules read (``shared_logic.ivt``): the
#: client's address, its user agent and its device. Left out of an event's digest when absent, so
#: events sent before they existed keep their identity (``shared_logic.identity``).
TRAFFIC_FIELDS: Final = ("ip", "user_agent", "device_id")

# Unknown keys are ignored so producers can add fields without breaking workers.
_CONFIG = ConfigDict(extra="ignore", frozen=True)


@dataclass(frozen=True, slots=True)
class _Base:
    """What every event carries. ``event_type`` is each type's last field: the discriminator."""

    __pydantic_config__ = _CONFIG
    event_id: Id
    event_time: EpochMs
    user_id: Id


@dataclass(frozen=True, slots=True)
class _AdTouch(_Base):
    campaign_id: Id
    placement: Id | None = None
    creative_id: Id | None = None
    ip: Id | None = None
    user_agent: UserAgent | None = None
    device_id: Id | None = None


@dataclass(frozen=True, slots=True)
class Impression(_AdTouch):
    """An ad was shown to a user."""

    event_type: Literal["impression"] = "impression"


@dataclass(frozen=True, slots=True)
class Click(_AdTouch):
    """A user clicked an ad."""

    impression_id: Id | None = None
    event_type: Literal["click"] = "click"


@dataclass(frozen=True, slots=True)
class PromoView(_Base):
    """A user saw a promo (a promo campaign), possibly with its code."""

    campaign_id: Id
    promo_code: Id | None = None
    ip: Id | None = None
    user_agent: UserAgent | None = None
    device_id: Id | None = None
    event_type: Literal["promo_view"] = "promo_view"


@dataclass(frozen=True, slots=True)
class Order(_Base):
    """A purchase: the conversion that campaigns compete to be credited for."""

    order_id: Id
    merchant_id: Id
    amount_minor: AmountMinor
    currency: CurrencyCode
    promo_codes: PromoCodes = field(default=())
    event_type: Literal["order"] = "order"


@dataclass(frozen=True, slots=True)
class OrderCancel(_Base):
    """An order was cancelled: its charge, if any, is refunded."""

    order_id: Id
    event_type: Literal["order_cancel"] = "order_cancel"


Event = Impression | Click | PromoView | Order | OrderCancel

_ADAPTER: Final[TypeAdapter[Event]] = TypeAdapter(Annotated[Event, Field(discriminator="event_type")])

_RULES = {
    "missing": "is required",
    "union_tag_not_found": "is required",
    "union_tag_invalid": f"must be one of {', '.join(EVENT_TYPES)}",
    "string_type": "must be a string",
    "int_type": "must be an integer (minor units), not a float or string",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "greater_than_equal": "must not be negative",
    "less_than": f"must be below {MAX_AMOUNT_MINOR}",
    "too_long": f"must hold at most {MAX_PROMO_CODES} items",
    "tuple_type": "must be a list",
    "model_type": "payload must be a JSON object",
    "dataclass_type": "payload must be a JSON object",
    "model_attributes_type": "payload must be a JSON object",
}


def _to_invalid_event(exc: ValidationError) -> InvalidEvent:
    err = exc.errors(include_url=False)[0]
    loc = [str(part) for part in err["loc"]]
    if loc and loc[0] in EVENT_TYPES:  # the discriminator branch, not a field
        loc = loc[1:]
    etype = err["type"]
    ctx = err.get("ctx") or {}
    if etype in ("union_tag_not_found", "union_tag_invalid"):
        name, value = "event_type", ctx.get("tag")
    else:
        name = ".".join(loc) or "<payload>"
        value = err.get("input")
    if etype == "value_error":
        rule = str(ctx["error"]) if "error" in ctx else err["msg"]
    elif etype == "json_invalid":
        name, value, rule = "<payload>", None, "is not valid JSON"
    elif not loc and etype.endswith("_type"):
        rule = "payload must be a JSON object"
    else:
        rule = _RULES.get(etype, err["msg"])
        if etype == "string_too_long":
            rule = rule.format(max_length=ctx.get("max_length", MAX_ID_LENGTH))
    if etype == "missing":
        value = None
    return InvalidEvent(name, value, rule)


def parse_event(raw: Any) -> Event:
    """Validate one event from JSON (bytes or str) or a decoded dict.

    Returns the typed event; raises ``InvalidEvent`` and nothing else, whatever it is given
    (bad UTF-8, lone surrogates, JSON nested thousands deep, a dict of odd objects): one bad
    payload is one dead letter, never a stopped worker.
    """
    try:
        if isinstance(raw, dict):
            return _ADAPTER.validate_python(raw)
        if isinstance(raw, (bytes, bytearray, memoryview)):
            if len(raw) > MAX_PAYLOAD_BYTES:
                raise InvalidEvent("<payload>", f"{len(raw)} bytes", f"exceeds {MAX_PAYLOAD_BYTES} bytes")
            return _ADAPTER.validate_json(bytes(raw))
        if isinstance(raw, str):
            size = len(raw.encode("utf-8", errors="surrogatepass"))
            if size > MAX_PAYLOAD_BYTES:
                raise InvalidEvent("<payload>", f"{size} bytes", f"exceeds {MAX_PAYLOAD_BYTES} bytes")
            return _ADAPTER.validate_json(raw)
    except InvalidEvent:
        raise
    except ValidationError as exc:
        raise _to_invalid_event(exc) from None
    except RecursionError:
        raise InvalidEvent("<payload>", "<deeply nested>", "is nested too deeply") from None
    except Exception as exc:  # whatever else the input provokes is still this input's fault
        raise InvalidEvent(
            "<payload>", type(raw).__name__, f"cannot be read ({type(exc).__name__})"
        ) from None
    raise InvalidEvent("<payload>", type(raw).__name__, "must be JSON bytes, a JSON string or a dict")


def event_to_dict(event: Event) -> dict[str, Any]:
    """The wire form of an event (JSON-ready; promo codes as a list)."""
    out: dict[str, Any] = {name: getattr(event, name) for name in event.__dataclass_fields__}
    if isinstance(event, Order):
        out["promo_codes"] = list(event.promo_codes)
    return out
