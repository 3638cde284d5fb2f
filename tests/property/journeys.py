"""Generated journeys for the oracle's property tests: catalogs, policies and events that stress
the billing rule and settlement where they are easiest to get wrong.

What the strategies aim at (``test_oracle.py`` checks that a fixed sequence of journeys meets each):

- ties on time and strength (touches copied to the same instant and kind, so the event id
  decides), and with ``reuse_ids`` twin touches under one event id naming two campaigns
  (the campaign id decides: only ``attribute_order`` is fed those, since the identity rule
  refuses such copies before the layers decide);
- touches exactly on a window's bounds (``t - window`` and ``t``) and one millisecond outside,
  on both the click and the view window of the campaign (its own windows or the defaults);
- touches at a campaign's start, just before its end and at its end;
- promo codes on orders (redemptions), unknown codes, codes of a campaign in another currency;
- several campaigns per merchant, in several currencies; orders in a currency a campaign does
  not use;
- small daily and lifetime caps in time zones far from UTC (+14, -11, +5:45, +10:30/+11 with
  DST, New York across its fall-back on 2026-11-01), orders near their local midnights;
- cancels on either side of both bounds of the cancel window (look-back before the order's UTC
  day, and the end of the horizon's last day), just after the order, before it; and sometimes
  two cancels of one order straddling a bound, or dated within the lateness of each other.

Events arrive within the allowed lateness (each at its time plus a delay in ``[0, L]``) and
are listed in arrival order: the traffic for which the README promises the layers agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Final
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from shared_logic.campaigns import Campaign, Catalog, Lever, Windows
from shared_logic.events import Click, Event, Impression, Order, OrderCancel, PromoView, event_to_dict
from shared_logic.policy import AttributionPolicy
from tests.oracle.rule import STRENGTH_OF_EVENT, is_eligible, window_ms
from tests.oracle.settle import MS_PER_DAY, lookback_days, utc_day_start

MIN: Final = 60_000
HOUR: Final = 3_600_000
#: 2026-10-31T00:00Z: three days around New York's fall-back (2026-11-01T06:00Z).
START: Final = 1_793_404_800_000
DAYS: Final = 3
END: Final = START + DAYS * MS_PER_DAY
ZONES: Final = (
    "UTC",
    "America/New_York",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
)
MERCHANTS: Final = ("m1", "m2")
CODES: Final = ("SAVE", "SAVE10", "VIP")
#: Ids whose string order is not their numeric order, in both cases.
CAMPAIGN_IDS: Final = ("c1", "c10", "c2", "C1", "c1a")
EVENT_IDS: Final = tuple(f"{p}{n}" for p in "eEt" for n in range(27))
ORDER_IDS: Final = tuple(f"{p}{n}" for p in "oO" for n in range(20))
USERS: Final = ("u1", "u2")
FILLER_USER: Final = "u-filler"
FILLER_MERCHANT: Final = "m-none"


def _instants() -> tuple[int, ...]:
    """UTC midnights, every zone's local midnights, and New York's fall-back, around the range."""
    out = {START + k * MS_PER_DAY for k in range(-1, DAYS + 2)}
    out.add(1_793_512_800_000)  # 2026-11-01T06:00Z, 02:00 EDT becomes 01:00 EST
    for zone in ZONES:
        tz = ZoneInfo(zone)
        first = datetime.fromtimestamp(START / 1000, UTC).astimezone(tz).date() - timedelta(days=1)
        for k in range(DAYS + 3):
            local = datetime.combine(first + timedelta(days=k), datetime.min.time(), tzinfo=tz)
            out.add(int(local.timestamp()) * 1000)
    return tuple(sorted(t for t in out if START - MS_PER_DAY <= t <= END + MS_PER_DAY))


INSTANTS: Final = _instants()


_LATENESS: Final = st.sampled_from([0, 1, 60_000, HOUR])
_HORIZON: Final = st.integers(0, 2)
_NEAR_DELTA: Final = st.one_of(st.sampled_from([0, -1]), st.integers(-5 * MIN, 5 * MIN))


@cache
def instants(lo: int = START, hi: int = END) -> st.SearchStrategy[int]:
    """A time in ``[lo, hi)``: anywhere, or on a midnight (UTC or local) or a DST change, a
    millisecond before one, or within a few minutes of one."""
    near = [t for t in INSTANTS if lo <= t < hi]
    anywhere = st.integers(lo, hi - 1)
    if not near:
        return anywhere
    close = st.builds(lambda t, d: min(max(t + d, lo), hi - 1), st.sampled_from(near), _NEAR_DELTA)
    return st.one_of(anywhere, close)


# catalogs and policies --------------------------------------------------------------------------


_HOURS: Final = st.sampled_from([1, 2, 6, 24, 30, 48])
#: Campaign or policy windows of whole hours, the click window sometimes a little longer.
WINDOWS: Final = st.builds(
    lambda c, v, extra: Windows(click_ms=c * HOUR + extra, view_ms=v * HOUR),
    _HOURS,
    _HOURS,
    st.sampled_from([0, 1, 7 * MIN]),
)
_MAYBE_WINDOWS: Final = st.one_of(st.none(), WINDOWS)
_DAILY: Final = st.one_of(st.none(), st.integers(1, 400), st.sampled_from([100, 150, 250]))
_PRICING: Final = st.one_of(
    st.builds(lambda f: {"model": "fixed", "fee_minor": f}, st.sampled_from([1, 60, 100, 250])),
    st.builds(lambda f: {"model": "fixed", "fee_minor": f}, st.integers(1, 500)),
    st.builds(lambda b: {"model": "bps", "bps": b}, st.sampled_from([1, 250, 999, 10_000])),
    st.builds(lambda b: {"model": "bps", "bps": b}, st.integers(1, 10_000)),
)
_LIFETIME_SHAPES: Final = st.sampled_from(["none", "any", "tight"])
_STARTS: Final = st.one_of(st.none(), instants(START - MS_PER_DAY, END))
_ENDS: Final = st.one_of(st.none(), instants(START, END + MS_PER_DAY))
_CAMPAIGN_IDS: Final = st.sampled_from(CAMPAIGN_IDS)
_LEVERS: Final = st.sampled_from([Lever.AD, Lever.AD, Lever.PROMO])
_CAMPAIGNS_PER_CATALOG: Final = st.sampled_from([1, 2, 3, 3, 4, 4])
_MERCHANT: Final = st.sampled_from(MERCHANTS)
_CURRENCY: Final = st.sampled_from(["USD", "USD", "EUR", "JPY"])
_ZONE: Final = st.sampled_from(
    [*ZONES, "America/New_York", "America/New_York"]
)  # its fall-back is in the range
_ADVERTISER: Final = st.sampled_from(["adv1", "adv2"])


@st.composite
def catalogs(draw: st.DrawFn) -> Catalog:
    """One to four campaigns sharing merchants, codes spread over the promo ones, small caps."""
    n = draw(_CAMPAIGNS_PER_CATALOG)
    ids = draw(st.lists(_CAMPAIGN_IDS, min_size=n, max_size=n, unique=True))
    levers = [draw(_LEVERS) for _ in ids]
    promos = [i for i, lever in enumerate(levers) if lever is Lever.PROMO]
    codes: dict[int, list[str]] = {i: [] for i in promos}
    for code in CODES:
        owner = _pick(draw, [None, *promos]) if promos else None
        if owner is not None:
            codes[owner].append(code)
    main_currency = draw(_CURRENCY)  # most campaigns share one, so they compete for orders
    campaigns = []
    for i, (cid, lever) in enumerate(zip(ids, levers, strict=True)):
        own_codes = codes.get(i, [])
        merchants = draw(st.lists(_MERCHANT, min_size=0 if own_codes else 1, max_size=2, unique=True))
        daily = draw(_DAILY)
        shape = draw(_LIFETIME_SHAPES)
        lifetime = (
            None
            if shape == "none"
            else max(daily or 0, 300)
            if shape == "tight"
            else draw(st.integers(daily or 1, 1_200))
        )
        start, end = draw(_STARTS), draw(_ENDS)
        if start is not None and end is not None and end <= start:
            start, end = (None, end) if draw(st.booleans()) else (start, None)
        record: dict[str, Any] = {
            "campaign_id": cid,
            "advertiser_id": draw(_ADVERTISER),
            "lever": lever.value,
            "merchant_ids": merchants,
            "promo_codes": own_codes,
            "currency": main_currency if draw(st.integers(0, 3)) else draw(_CURRENCY),
            "pricing": draw(_PRICING),
            "budget": {"daily_minor": daily, "lifetime_minor": lifetime, "timezone": draw(_ZONE)},
            "windows": draw(_MAYBE_WINDOWS),
            "start_ms": start,
            "end_ms": end,
        }
        campaigns.append(Campaign.parse({k: v for k, v in record.items() if v is not None}))
    return Catalog(campaigns)


_DEFAULT_WINDOWS: Final = st.one_of(st.just(Windows()), WINDOWS)


def _policy(draw: st.DrawFn, catalog: Catalog, layers: bool) -> AttributionPolicy:
    """Lateness and horizon; for the rule alone also other default windows and overrides (the
    layers take windows from the catalog and the settings, which hold only these two)."""
    lateness, horizon = draw(_LATENESS), draw(_HORIZON)
    if layers:
        return AttributionPolicy(allowed_lateness_ms=lateness, cancel_horizon_days=horizon)
    ids = [c.campaign_id for c in catalog] + ["c-elsewhere"]
    overrides = {_pick(draw, ids): draw(WINDOWS) for _ in range(draw(st.integers(0, 2)))}
    return AttributionPolicy(draw(_DEFAULT_WINDOWS), overrides, lateness, horizon)


# journeys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Journey:
    """A catalog, a policy, and events in arrival order (``arrivals[i]`` is when event i landed)."""

    catalog: Catalog
    policy: AttributionPolicy
    events: tuple[Event, ...]
    arrivals: tuple[int, ...]

    def payloads(self) -> list[dict[str, Any]]:
        """The events' wire form, in arrival order."""
        return [event_to_dict(e) for e in self.events]

    @property
    def orders(self) -> list[Order]:
        return [e for e in self.events if isinstance(e, Order)]

    def describe(self) -> str:
        """Everything needed to read a failure."""
        lines = [f"policy: {self.policy!r}"]
        lines += [f"campaign: {c.model_dump(exclude_defaults=True)}" for c in self.catalog]
        lines += [f"@{a}: {e!r}" for a, e in zip(self.arrivals, self.events, strict=True)]
        return "\n".join(lines)


_ORDER: Final = st.tuples(
    st.sampled_from(USERS),
    instants(),
    st.sampled_from([*MERCHANTS, "m3"]),
    _CURRENCY,
    st.one_of(st.integers(0, 60_000), st.sampled_from([0, 1, 99, 9_999, 10_000])),
    st.lists(st.sampled_from([*CODES, "NOPE"]), max_size=2, unique=True),
)
_DELAY_SHAPES: Final = st.sampled_from(["none", "all", "some"])


def _delay(draw: st.DrawFn, lateness: int) -> int:
    """How long after its time an event lands: at once, the whole allowed lateness, or between."""
    shape = draw(_DELAY_SHAPES)
    if shape == "none":
        return 0
    return lateness if shape == "all" else draw(st.integers(0, lateness))


_EVENT_ID: Final = st.sampled_from(EVENT_IDS)
_ORDER_ID: Final = st.sampled_from(ORDER_IDS)
_TOUCH_SHAPES: Final = st.sampled_from(["free", "window", "window", "order", "campaign", "tie", "rivals"])
_RIVALS_BEFORE: Final = st.sampled_from([0, 1, MIN, HOUR])
_TOUCH_TIMES: Final = instants(START - 2 * MS_PER_DAY, END)
_MS_AROUND: Final = st.sampled_from([-1, 0, 0, 1])
_USER: Final = st.sampled_from(USERS)


def _pick(draw: st.DrawFn, items: Sequence[Any]) -> Any:
    """One of ``items`` (an index drawn: cheaper than a new ``sampled_from`` per draw)."""
    return items[draw(st.integers(0, len(items) - 1))]


_CANCELS_PER_ORDER: Final = st.sampled_from([0, 0, 1, 1, 2, 2])
_CANCEL_SHAPES: Final = st.sampled_from(["window", "order", "near", "echo"])
_CANCEL_OFFSETS: Final = st.integers(-2 * HOUR, 30 * HOUR)
_TOUCH_TYPES: Final = {Lever.AD: ("impression", "click"), Lever.PROMO: ("promo_view",)}


def _touch(etype: str, eid: str, t: int, user: str, cid: str) -> Event:
    if etype == "impression":
        return Impression(eid, t, user, cid)
    if etype == "click":
        return Click(eid, t, user, cid)
    return PromoView(eid, t, user, cid)


def _is_active(c: Campaign, t: int) -> bool:
    return (c.start_ms is None or c.start_ms <= t) and (c.end_ms is None or t < c.end_ms)


def _landing_key(event: Event, delay: int) -> tuple[int, int, str]:
    return (event.event_time + delay, event.event_time, event.event_id)


@st.composite
def journeys(
    draw: st.DrawFn,
    *,
    layers: bool = True,
    reuse_ids: bool = False,
    max_orders: int = 6,
    max_touches: int = 12,
    policy: AttributionPolicy | None = None,
) -> Journey:
    """A journey set: ``layers`` keeps to what the layers accept (touches on active campaigns of
    their lever, windows from the catalog, unique event ids); ``reuse_ids`` adds twin touches
    naming two campaigns under one event id; ``policy`` fixes the policy instead of
    drawing one."""
    catalog = draw(catalogs())
    policy = policy or _policy(draw, catalog, layers)
    campaigns = list(catalog)
    lateness = policy.allowed_lateness_ms

    # orders: (user, time, merchant, currency, amount, codes)
    orders = draw(st.lists(_ORDER, min_size=1, max_size=max_orders))
    for i, (user, t, merchant, _currency, amount, codes) in enumerate(orders):
        if draw(st.integers(0, 3)):  # mostly at a campaign's merchant, in its currency
            c = _pick(draw, campaigns)
            merchant = _pick(draw, sorted(c.merchant_ids)) if c.merchant_ids else merchant
            orders[i] = (user, t, merchant, c.currency, amount, codes)

    # touches: (event type, time, user, campaign id)
    touches: list[tuple[str, int, str, str]] = []
    for _ in range(draw(st.integers(0, max_touches))):
        c = _pick(draw, campaigns)
        etype = _pick(draw, _TOUCH_TYPES[c.lever])
        strength = STRENGTH_OF_EVENT[etype]
        o_user, o_time, o_merchant, o_currency, *_ = _pick(draw, orders)
        how = draw(_TOUCH_SHAPES)
        user = o_user if draw(st.integers(0, 4)) else draw(_USER)
        if how == "window":  # on the bound t - window(kind), or a millisecond either side
            t = o_time - window_ms(c, strength, policy) + draw(_MS_AROUND)
        elif how == "order":  # at the order's instant, or a millisecond either side
            t = o_time + draw(_MS_AROUND)
        elif how == "campaign" and (c.start_ms is not None or c.end_ms is not None):
            t = _pick(draw, [b for b in (c.start_ms, c.end_ms) if b is not None]) - draw(st.integers(0, 1))
        elif how == "tie" and touches:  # another touch's instant, and often its kind
            other = _pick(draw, touches)
            t, user = other[1], other[2]
            if draw(st.integers(0, 3)):  # its kind too, mostly on another campaign
                same = [x for x in campaigns if other[0] in _TOUCH_TYPES[x.lever]]
                others = [x for x in same if x.campaign_id != other[3]]
                pool = others if others and draw(st.integers(0, 3)) > 0 else same
                etype, c = other[0], _pick(draw, pool)
        elif how == "rivals":  # two touches of one kind, at one instant, for the same order
            rivals = [
                x
                for x in campaigns
                if etype in _TOUCH_TYPES[x.lever]
                and o_merchant in x.merchant_ids
                and x.currency == o_currency
            ]
            t, user = o_time - draw(_RIVALS_BEFORE), o_user
            if len(rivals) >= 2:
                one, c = draw(st.permutations(rivals))[:2]
                touches.append((etype, t, user, one.campaign_id))
        else:
            t = draw(_TOUCH_TIMES)
        touches.append((etype, t, user, c.campaign_id))
    if layers:  # admission: a touch on a campaign not running at its time is refused
        touches = [x for x in touches if _is_active(catalog.get(x[3]), x[1])]  # type: ignore[arg-type]

    # cancels: per order, none, one or two, around the bounds of its cancel window
    lookback = lookback_days(catalog, policy)
    cancels: list[tuple[int, int]] = []  # (order index, time)
    echoes: set[int] = set()  # indices in ``cancels`` of cancels landing late, after the one before
    for i, (_, t, *_rest) in enumerate(orders):
        first = utc_day_start(t) - lookback * MS_PER_DAY
        after_last = utc_day_start(t) + (policy.cancel_horizon_days + 1) * MS_PER_DAY
        for _ in range(draw(_CANCELS_PER_ORDER)):
            shape = draw(_CANCEL_SHAPES)
            if shape == "echo" and cancels and cancels[-1][0] == i and lateness:
                # dated just before the order's other cancel, landing after it (within the lateness)
                bound = cancels[-1][1] - draw(st.integers(1, lateness))
                echoes.add(len(cancels))
            elif shape == "window":  # on a bound of the cancel window, or just outside it
                bound = _pick(draw, [first - 1, first, after_last - 1, after_last])
            elif shape == "order":  # at the order, or a lateness away
                bound = t + _pick(draw, [-1, 0, 1, lateness, lateness + 1, -lateness - 1])
            else:
                bound = t + draw(_CANCEL_OFFSETS)
            cancels.append((i, bound))

    n_events = len(orders) + len(touches) + len(cancels)
    ids = draw(st.lists(_EVENT_ID, min_size=n_events, max_size=n_events, unique=True))
    order_ids = draw(st.lists(_ORDER_ID, min_size=len(orders), max_size=len(orders), unique=True))
    events: list[Event] = []
    for (user, t, merchant, currency, amount, codes), oid in zip(orders, order_ids, strict=True):
        events.append(Order(ids[len(events)], t, user, oid, merchant, amount, currency, tuple(codes)))
    for etype, t, user, cid in touches:
        events.append(_touch(etype, ids[len(events)], t, user, cid))
    for i, t in cancels:
        events.append(OrderCancel(ids[len(events)], t, orders[i][0], order_ids[i]))
    if reuse_ids:
        # Twins: one event id on two touches of the same kind and instant, naming two campaigns
        # that may both earn an order (the campaign id is all that tells them apart).
        contested = [
            (o, lever)
            for o in events
            if isinstance(o, Order)
            for lever in Lever
            if sum(c.lever is lever and is_eligible(c, o) for c in campaigns) >= 2
        ]
        for _ in range(draw(st.integers(0, 2)) if contested else 0):
            o, lever = _pick(draw, contested)
            both = [c for c in campaigns if c.lever is lever and is_eligible(c, o)]
            if len(both) >= 2:
                etype = _pick(draw, _TOUCH_TYPES[lever])
                t = o.event_time - draw(st.integers(0, HOUR))
                eid = _pick(draw, [*EVENT_IDS, *ids])
                named = both[:2] if draw(st.booleans()) else both
                events.extend(_touch(etype, eid, t, o.user_id, c.campaign_id) for c in named)
    # arrival: each event within the allowed lateness after its time, landed in that order
    delays = [_delay(draw, lateness) for _ in events]
    first_cancel = len(orders) + len(touches)
    for k in echoes:
        delays[first_cancel + k - 1], delays[first_cancel + k] = 0, lateness
    landed = sorted(zip(events, delays, strict=True), key=lambda ed: _landing_key(*ed))
    return Journey(
        catalog,
        policy,
        tuple(e for e, _ in landed),
        tuple(e.event_time + d for e, d in landed),
    )


def touch_events(events: Sequence[Event]) -> list[Impression | Click | PromoView]:
    """The touches among events."""
    return [e for e in events if isinstance(e, (Impression, Click, PromoView))]


def prefixed(journey: Journey, p: str) -> Journey:
    """The same journey with every id (campaign, advertiser, merchant, code, user, order, event)
    prefixed: journeys prefixed differently share nothing, and ids keep their relative order."""
    campaigns = []
    for c in journey.catalog:
        record = c.model_dump()
        record.update(
            campaign_id=p + c.campaign_id,
            advertiser_id=p + c.advertiser_id,
            merchant_ids=[p + m for m in c.merchant_ids],
            promo_codes=[p + code for code in c.promo_codes],
        )
        campaigns.append(Campaign.parse({k: v for k, v in record.items() if v is not None}))
    events: list[Event] = []
    for e in journey.events:
        changes: dict[str, Any] = {"event_id": p + e.event_id, "user_id": p + e.user_id}
        if isinstance(e, Order):
            changes.update(
                order_id=p + e.order_id,
                merchant_id=p + e.merchant_id,
                promo_codes=tuple(p + x for x in e.promo_codes),
            )
        elif isinstance(e, OrderCancel):
            changes["order_id"] = p + e.order_id
        else:
            changes["campaign_id"] = p + e.campaign_id
        events.append(replace(e, **changes))
    return Journey(Catalog(campaigns), journey.policy, tuple(events), journey.arrivals)


def merge(parts: Sequence[Journey]) -> Journey:
    """Journeys of one policy (their ids kept apart: ``prefixed``) landed together."""
    landed = sorted(
        ((a, e) for part in parts for a, e in zip(part.arrivals, part.events, strict=True)),
        key=lambda ae: (ae[0], ae[1].event_time, ae[1].event_id),
    )
    catalog = Catalog([c for part in parts for c in part.catalog])
    return Journey(catalog, parts[0].policy, tuple(e for _, e in landed), tuple(a for a, _ in landed))


@st.composite
def lakes(draw: st.DrawFn, journey_sets: int = 8) -> Journey:
    """Several journey sets under one policy, their ids kept apart, landed together, with an
    organic order on every day of the range: what the nightly job is run over (one Spark run
    checks many journeys)."""
    policy = _policy(draw, Catalog([]), layers=True)
    parts = [
        prefixed(draw(journeys(max_orders=6, max_touches=12, policy=policy)), f"p{i}-")
        for i in range(journey_sets)
    ]
    fillers = [
        Order(
            f"filler-e{k}",
            START + k * MS_PER_DAY + 12 * HOUR,
            FILLER_USER,
            f"filler{k}",
            FILLER_MERCHANT,
            1,
            "USD",
        )
        for k in range(DAYS)
    ]
    parts.append(Journey(Catalog([]), policy, tuple(fillers), tuple(f.event_time for f in fillers)))
    return merge(parts)
