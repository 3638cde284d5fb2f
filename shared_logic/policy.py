"""Attribution policy: windows, per-campaign overrides, lateness, precedence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shared_logic.campaigns import Campaign, Windows
from shared_logic.ivt import IvtPolicy
from shared_logic.timeutil import MS_PER_DAY

DEFAULT_ALLOWED_LATENESS_MS = 60_000
DEFAULT_MAX_FUTURE_MS = 5 * 60_000
DEFAULT_CANCEL_HORIZON_DAYS = 7
FUTURE_RULE = "is in the future"


def in_future(event_time_ms: int, clock_ms: int, max_future_ms: int) -> bool:
    """Whether an event is dated more than ``max_future_ms`` after the clock that received it.

    Both layers drop such an event (a dead letter with ``FUTURE_RULE``): a click dated 2099
    would otherwise carry a watermark to 2099 and decide every later order at once. The speed
    layer and landing use the processing clock; the batch layer the time the event landed.
    """
    return event_time_ms > clock_ms + max_future_ms


@dataclass(frozen=True, slots=True)
class AttributionPolicy:
    """How the billing rule weighs touches.

    Precedence is fixed by the contract: redemption > click > view, then the
    later touch, then the greater event id. Windows come from, in order, a
    per-campaign override here, the campaign record, then ``default_windows``.
    """

    default_windows: Windows = field(default_factory=Windows)
    overrides: Mapping[str, Windows] = field(default_factory=lambda: MappingProxyType({}))
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    cancel_horizon_days: int = DEFAULT_CANCEL_HORIZON_DAYS
    #: The invalid-traffic rules (``shared_logic.ivt``) both layers judge touches by.
    ivt: IvtPolicy = field(default_factory=IvtPolicy)

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms = {self.allowed_lateness_ms}: must not be negative")
        if self.cancel_horizon_days < 0:
            raise ValueError(f"cancel_horizon_days = {self.cancel_horizon_days}: must not be negative")

    def lookback_days(self, campaigns: Iterable[Campaign] = ()) -> int:
        """How many days before an order its touches (and an early cancel) may be dated: the
        longest window plus the allowed lateness, rounded up."""
        return -(-(self.longest_window_ms(campaigns) + self.allowed_lateness_ms) // MS_PER_DAY)

    def windows_for(self, campaign: Campaign) -> Windows:
        override = self.overrides.get(campaign.campaign_id)
        if override is not None:
            return override
        return campaign.windows or self.default_windows

    def longest_window_of_ms(self, kind: str, campaigns: Iterable[Campaign] = ()) -> int:
        """The longest ``kind`` window (``"click"`` or ``"view"``) over the defaults, the overrides
        and the given campaigns: how long before an order a touch of that kind may count."""
        if kind not in ("click", "view"):
            raise ValueError(f"kind = {kind!r}: must be 'click' or 'view'")

        def of(w: Windows) -> int:
            return w.click_ms if kind == "click" else w.view_ms

        longest = of(self.default_windows)
        for w in self.overrides.values():
            longest = max(longest, of(w))
        for campaign in campaigns:
            longest = max(longest, of(self.windows_for(campaign)))
        return longest

    def longest_window_ms(self, campaigns: Iterable[Campaign] = ()) -> int:
        """The longest window over the defaults, the overrides and the given campaigns."""
        longest = self.default_windows.longest_ms
        for w in self.overrides.values():
            longest = max(longest, w.longest_ms)
        for campaign in campaigns:
            longest = max(longest, self.windows_for(campaign).longest_ms)
        return longest
