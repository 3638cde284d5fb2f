"""The API's response models. A ROAS row is derived from the contract's ``MetricRow``: a new
metric column appears in the API (and its OpenAPI schema) without an edit here."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from shared_logic.contract import BILLING_MODEL, METRIC_DIMENSIONS, METRIC_MEASURES, METRIC_ROW, ColumnType

_PY: dict[ColumnType, Any] = {
    ColumnType.STRING: str,
    ColumnType.INT64: int,
    ColumnType.FLOAT64: float,
    ColumnType.BOOL: bool,
}


Source = Literal["batch", "speed"]


class Windows(BaseModel):
    click_ms: int
    view_ms: int


def _fields(names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        c = METRIC_ROW.column(name)
        py = _PY[c.type]
        out[name] = (py | None if c.nullable else py, Field(description=c.doc or None))
    return out


#: Credited quantities: whole under the billing model (one order, its whole value), fractional credit
#: under a multi-touch model, as computed (a 64-bit float: about 15 significant digits, unrounded,
#: so a campaign's credit sums back to its orders).
CREDIT_PRECISION = "a 64-bit float, unrounded (about 15 significant digits)"
CREDITED = ("orders", "revenue_minor")


def whole_unless_split(row: dict[str, Any]) -> dict[str, Any]:
    """A metric row's orders and revenue as the API shows them: integers under the billing model,
    credit as computed under a multi-touch model (changed in place, returned)."""
    whole = row.get("model") == BILLING_MODEL
    for name in CREDITED:
        value = row.get(name)
        if isinstance(value, float) and value == value:  # NaN stays for the caller to null
            row[name] = round(value) if whole else value
    return row


class _RoasRowBase(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _whole_unless_split(cls, data: Any) -> Any:
        return whole_unless_split(dict(data)) if isinstance(data, dict) else data


def _credited(fields: dict[str, Any]) -> dict[str, Any]:
    for name in CREDITED:
        doc = METRIC_ROW.column(name).doc or name
        fields[name] = (
            int | float,
            Field(
                description=f"{doc}: an integer under the billing model (whole orders and amounts); "
                f"fractional credit under a multi-touch model: {CREDIT_PRECISION}"
            ),
        )
    return fields


RoasRow: type[BaseModel] = create_model(
    "RoasRow",
    __base__=_RoasRowBase,
    day=(date, Field(description="UTC day")),
    **_fields(METRIC_DIMENSIONS),
    source=(Source, Field(description="batch view, or the speed layer after it")),
    windows=(Windows, Field(description="the attribution windows applied")),
    **_credited(_fields(METRIC_MEASURES)),
)


class RoasReport(BaseModel):
    rows: list[RoasRow]
    batch_through: date | None = Field(
        description="last day of the batch view; later days are from the speed layer"
    )
    start: date
    end: date


class IvtReportRow(BaseModel):
    """Invalid traffic of one day, campaign and reason (``shared_logic.contract.IvtSummary``)."""

    day: date
    campaign_id: str
    reason: str
    touches: int = Field(description="touches judged invalid (each verdict once)")
    touches_refused: int = Field(description="touches the list rules refused at admission (enforce)")
    orders_changed: int = Field(description="orders whose winner a verdict changed")
    orders_unattributed: int = Field(description="orders a verdict left without a winner")
    orders_flagged: int = Field(description="orders whose winner was only flagged (report mode)")
    avoided_minor: int = Field(description="charges avoided, minor units of the currency")
    currency: str | None
    source: Source = Field(
        description="batch: the nightly job's verdicts (ivt/); speed: the speed layer's, in Redis"
    )


class IvtReport(BaseModel):
    rows: list[IvtReportRow]
    start: date
    end: date


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ProblemDetails(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description="the problem type: a tag: URI, or about:blank for a plain HTTP status")
    title: str = Field(description="short summary of the problem type")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong with this request (values cut short)")
    instance: str = Field(description="the path of the request")
    parameter: str | None = Field(None, description="the request parameter at fault, when there is one")
    retry_after: int | None = Field(None, description="429: seconds to wait, as in the Retry-After header")
    cost: int | None = Field(None, description="cost-limit: days x campaigns the request asked for")
    limit: int | None = Field(None, description="cost-limit: the most one request may ask for")
    checks: dict[str, str] | None = Field(None, description="/ready: the state of each dependency")
