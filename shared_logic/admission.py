"""Which events may take part in attribution: one rule, applied by landing, the speed layer and
the nightly job, and by every count (metrics, the speed view, the lake view).

An event that meets the wire contract (``shared_logic.events.parse_event``) is admitted when:

1. **wire** (every event): it is dated at most ``max_future_ms`` after its arrival
   (``policy.in_future``); a click dated 2099 can never be settled;
2. **catalog** (touches only: impressions, clicks, promo views): its campaign is in the catalog,
   the campaign's lever fits the event type (a promo view touches a promo campaign, an
   impression or a click an ad campaign), and the campaign runs at the touch's time
   (``Campaign.active_at``: start inclusive, end exclusive).

3. **traffic** (touches only, the general invalid-traffic rules of ``shared_logic.ivt``): a
   touch whose ``user_agent`` is a known crawler or whose ``ip`` is in a data-centre range is
   flagged with its reason (``traffic_flag``); under ``enforce`` it takes no part in attribution
   (neither layer keeps it as a candidate, and no count of touches includes it), under ``report``
   it does. Either way both layers record it (``ivt/``, the speed layer's verdicts): it is valid
   traffic data, not a dead letter.

Orders and cancels have wire rules only: an order in a currency no campaign uses, or with promo
codes of unknown or ended campaigns, is a valid order that no campaign may earn (organic).

Where each stage applies. Landing applies the wire stage only and keeps a touch the catalog
refuses: the catalog changes (a campaign is added a day late, a lever corrected), a rerun of the
nightly job must see the event, and the lake's dead letters are never read again. Both layers
apply both stages when they decide: the speed layer dead-letters a refused touch as it ingests it
(``attribution_dead_letters_total{field}``), the nightly job records it in ``refused/dt=D/``
(the same ``DEAD_LETTER_ROW``, the same field, value and rule) and counts it in the day's
manifest. No count includes a refused event.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from shared_logic.campaigns import Catalog, Lever
from shared_logic.errors import InvalidEvent
from shared_logic.events import Event
from shared_logic.ivt import Flag, GivtLists, IvtPolicy, touch_flag
from shared_logic.policy import FUTURE_RULE, in_future

#: The lever each touch type may touch.
TOUCH_LEVERS: Final = {"impression": Lever.AD, "click": Lever.AD, "promo_view": Lever.PROMO}

UNKNOWN_CAMPAIGN_RULE: Final = "is not a campaign of the catalog"


class Stage(StrEnum):
    """Where a rule applies: ``wire`` everywhere (landing too), ``catalog`` when deciding."""

    WIRE = "wire"
    CATALOG = "catalog"


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def wire_refusal(event: Event, arrival_ms: int, max_future_ms: int) -> InvalidEvent | None:
    """The wire rule an event breaks, or None (the schema was checked by ``parse_event``)."""
    if in_future(event.event_time, arrival_ms, max_future_ms):
        return InvalidEvent("event_time", event.event_time, FUTURE_RULE)
    return None


def touch_refusal(
    event_type: str, campaign_id: str, event_time: int, catalog: Catalog
) -> InvalidEvent | None:
    """The catalog rule a touch breaks, or None; any other event type breaks none.

    Takes plain values so the nightly job applies it to rows as the speed layer applies it to
    events (``catalog_refusal``)."""
    lever = TOUCH_LEVERS.get(event_type)
    if lever is None:
        return None
    campaign = catalog.get(campaign_id)
    if campaign is None:
        return InvalidEvent("campaign_id", campaign_id, UNKNOWN_CAMPAIGN_RULE)
    if campaign.lever is not lever:
        return InvalidEvent(
            "campaign_id",
            campaign_id,
            f"is {_a(campaign.lever)} campaign, which {_a(event_type)} cannot touch",
        )
    if not campaign.active_at(event_time):
        start = "" if campaign.start_ms is None else str(campaign.start_ms)
        end = "" if campaign.end_ms is None else str(campaign.end_ms)
        return InvalidEvent(
            "campaign_id", campaign_id, f"does not run at the touch's time (runs [{start}, {end}))"
        )
    return None


def catalog_refusal(event: Event, catalog: Catalog) -> InvalidEvent | None:
    """The catalog rule an event breaks, or None."""
    campaign_id = getattr(event, "campaign_id", None)
    if campaign_id is None:
        return None
    return touch_refusal(event.event_type, campaign_id, event.event_time, catalog)


def refusal(
    event: Event, arrival_ms: int, max_future_ms: int, catalog: Catalog | None
) -> InvalidEvent | None:
    """The first rule an event breaks, or None when it may take part in attribution.

    ``catalog`` None applies the wire stage only (landing); the layers that decide pass theirs."""
    broken = wire_refusal(event, arrival_ms, max_future_ms)
    if broken is None and catalog is not None:
        broken = catalog_refusal(event, catalog)
    return broken


def traffic_flag(event: Event, policy: IvtPolicy, lists: GivtLists) -> Flag | None:
    """The general invalid-traffic verdict on a touch (bot user agent, data-centre address), or
    None; orders and cancels are never flagged."""
    campaign_id = getattr(event, "campaign_id", None)
    if campaign_id is None or event.event_type not in TOUCH_LEVERS:
        return None
    return touch_flag(
        campaign_id, getattr(event, "user_agent", None), getattr(event, "ip", None), policy, lists
    )
