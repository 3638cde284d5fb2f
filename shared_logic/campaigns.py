"""Campaign records and the catalog that indexes them for the billing rule.

Records are validated with pydantic (frozen, unknown keys refused); a broken
record raises ``InvalidCampaign`` naming the campaign, the field and the value.
Where the records come from (a YAML or JSON file by default, Cassandra or
ScyllaDB in production) is ``storage.catalog``'s business; this module only
validates and indexes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)

from shared_logic.errors import InvalidCampaign
from shared_logic.money import MAX_AMOUNT_MINOR, MAX_COUNTER_MINOR, currency_exponent
from shared_logic.pacing import DeliveryMode
from shared_logic.timeutil import MS_PER_DAY, to_epoch_ms

DEFAULT_CLICK_WINDOW_MS = 7 * MS_PER_DAY
DEFAULT_VIEW_WINDOW_MS = 1 * MS_PER_DAY


class Lever(StrEnum):
    """How a campaign reaches users: a paid ad or a promo (discount code)."""

    AD = "ad"
    PROMO = "promo"


def _check_currency(code: str) -> str:
    currency_exponent(code)
    return code


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not an IANA time zone") from None
    return name


Id = Annotated[str, Field(min_length=1, max_length=128)]
Currency = Annotated[str, AfterValidator(_check_currency)]
TimeZoneName = Annotated[str, AfterValidator(_check_timezone)]
EpochMs = Annotated[int, BeforeValidator(to_epoch_ms)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Windows(_Frozen):
    """Look-back windows: how long before an order a touch of each kind counts."""

    click_ms: PositiveInt = DEFAULT_CLICK_WINDOW_MS
    view_ms: PositiveInt = DEFAULT_VIEW_WINDOW_MS

    @property
    def longest_ms(self) -> int:
        return max(self.click_ms, self.view_ms)


class Pricing(_Frozen):
    """Cost per attributed order: a fixed fee, or basis points of order value."""

    model: Annotated[str, Field(pattern="^(fixed|bps)$")]
    fee_minor: Annotated[int, Field(gt=0, lt=MAX_AMOUNT_MINOR)] | None = None
    bps: Annotated[int, Field(gt=0, le=10_000)] | None = None

    @model_validator(mode="after")
    def _one_price(self) -> Self:
        if self.model == "fixed" and (self.fee_minor is None or self.bps is not None):
            raise ValueError("fixed pricing needs fee_minor and no bps")
        if self.model == "bps" and (self.bps is None or self.fee_minor is not None):
            raise ValueError("bps pricing needs bps and no fee_minor")
        return self


class Budget(_Frozen):
    """Spend caps in the campaign's currency; the daily cap resets at local midnight."""

    daily_minor: Annotated[int, Field(gt=0, le=MAX_COUNTER_MINOR)] | None = None
    lifetime_minor: Annotated[int, Field(gt=0, le=MAX_COUNTER_MINOR)] | None = None
    timezone: TimeZoneName = "UTC"
    delivery: DeliveryMode | None = None

    @model_validator(mode="after")
    def _daily_within_lifetime(self) -> Self:
        if (
            self.daily_minor is not None
            and self.lifetime_minor is not None
            and self.daily_minor > self.lifetime_minor
        ):
            raise ValueError("daily_minor may not exceed lifetime_minor")
        if self.delivery is DeliveryMode.EVEN and self.daily_minor is None:
            raise ValueError("delivery 'even' spreads a daily cap through the day: it needs daily_minor")
        return self

    @property
    def delivery_mode(self) -> DeliveryMode:
        """``delivery``, or its default: ``even`` with a daily cap, ``asap`` without."""
        if self.delivery is not None:
            return self.delivery
        return DeliveryMode.EVEN if self.daily_minor is not None else DeliveryMode.ASAP


MAX_FREQUENCY_WINDOW_MS = 30 * MS_PER_DAY


class FrequencyCap(_Frozen):
    """At most ``impressions`` impressions of the campaign per user in any rolling ``window_ms``."""

    impressions: Annotated[int, Field(gt=0, le=1_000_000)]
    window_ms: Annotated[int, Field(gt=0, le=MAX_FREQUENCY_WINDOW_MS)]


class Campaign(_Frozen):
    """One campaign of one advertiser, on one lever, priced per attributed order."""

    campaign_id: Id
    advertiser_id: Id
    lever: Lever
    merchant_ids: frozenset[Id] = frozenset()
    promo_codes: frozenset[Id] = frozenset()
    currency: Currency
    pricing: Pricing
    budget: Budget = Budget()
    windows: Windows | None = None
    frequency_cap: FrequencyCap | None = None
    start_ms: EpochMs | None = None
    end_ms: EpochMs | None = None
    name: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.merchant_ids and not self.promo_codes:
            raise ValueError("needs merchant_ids or promo_codes, or no order can match it")
        if self.promo_codes and self.lever is not Lever.PROMO:
            raise ValueError("only a promo campaign may own promo_codes")
        if self.start_ms is not None and self.end_ms is not None and self.end_ms <= self.start_ms:
            raise ValueError("end_ms must be after start_ms")
        return self

    def active_at(self, time_ms: int) -> bool:
        """Whether the campaign runs at this instant (start inclusive, end exclusive)."""
        if self.start_ms is not None and time_ms < self.start_ms:
            return False
        return self.end_ms is None or time_ms < self.end_ms

    @classmethod
    def parse(cls, record: Mapping[str, Any]) -> Campaign:
        """Validate one record; raises ``InvalidCampaign`` naming the field and value."""
        try:
            return cls.model_validate(record)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or "<record>"
            cid = record.get("campaign_id", "?") if isinstance(record, Mapping) else "?"
            rule = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
            raise InvalidCampaign(f"{cid}.{where}", err.get("input"), rule) from None


class Catalog:
    """All campaigns, indexed by merchant and promo code for the billing rule."""

    __slots__ = ("_by_code", "_by_id", "_by_merchant")

    def __init__(self, campaigns: Iterable[Campaign]) -> None:
        self._by_id: dict[str, Campaign] = {}
        self._by_merchant: dict[str, list[Campaign]] = {}
        self._by_code: dict[str, Campaign] = {}
        for campaign in campaigns:
            if campaign.campaign_id in self._by_id:
                raise InvalidCampaign("campaign_id", campaign.campaign_id, "is defined twice")
            self._by_id[campaign.campaign_id] = campaign
            for merchant in campaign.merchant_ids:
                self._by_merchant.setdefault(merchant, []).append(campaign)
            for code in campaign.promo_codes:
                other = self._by_code.get(code)
                if other is not None:
                    raise InvalidCampaign(
                        "promo_codes", code, f"belongs to both {other.campaign_id} and {campaign.campaign_id}"
                    )
                self._by_code[code] = campaign

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Campaign]:
        return iter(self._by_id.values())

    def __contains__(self, campaign_id: object) -> bool:
        return campaign_id in self._by_id

    def get(self, campaign_id: str) -> Campaign | None:
        return self._by_id.get(campaign_id)

    def by_merchant(self, merchant_id: str) -> list[Campaign]:
        return self._by_merchant.get(merchant_id, [])

    def by_promo_code(self, code: str) -> Campaign | None:
        return self._by_code.get(code)

    def advertiser_campaigns(self, advertiser_id: str) -> list[Campaign]:
        return [c for c in self._by_id.values() if c.advertiser_id == advertiser_id]

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> Catalog:
        return cls(Campaign.parse(r) for r in records)

    @classmethod
    def from_document(cls, data: Any, source: str) -> Catalog:
        """A catalog from a decoded document holding ``campaigns: [...]`` (a file's, a store's)."""
        if not isinstance(data, dict) or not isinstance(data.get("campaigns"), list):
            raise InvalidCampaign("campaigns", source, "document must hold a top-level 'campaigns' list")
        return cls.from_records(data["campaigns"])

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready records (sets as sorted lists), the form ``from_records`` reads."""
        out = []
        for c in self._by_id.values():
            rec = c.model_dump(mode="json", exclude_none=True)
            rec["merchant_ids"] = sorted(c.merchant_ids)
            rec["promo_codes"] = sorted(c.promo_codes)
            out.append(rec)
        return out
