"""Attribution policy: windows, per-campaign overrides, lateness, precedence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shared_logic.campaigns import Campaign, Windows

DEFAULT_ALLOWED_LATENESS_MS = 60_000


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

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms = {self.allowed_lateness_ms}: must not be negative")

    def windows_for(self, campaign: Campaign) -> Windows:
        override = self.overrides.get(campaign.campaign_id)
        if override is not None:
            return override
        return campaign.windows or self.default_windows

    def longest_window_ms(self, campaigns: Iterable[Campaign] = ()) -> int:
        """The longest window over the defaults, the overrides and the given campaigns."""
        longest = self.default_windows.longest_ms
        for w in self.overrides.values():
            longest = max(longest, w.longest_ms)
        for campaign in campaigns:
            longest = max(longest, self.windows_for(campaign).longest_ms)
        return longest
