"""Seeded, reproducible synthetic traffic: a catalog and a stream of events.

Shared by the demo, ``make live``, the tests and the benchmarks. It models the funnel
impression -> click -> order, promo views and redemptions, users who touch an ad
and a promo before one order, cancellations, and the faults of a real pipe:
duplicates, out-of-order and late arrival, malformed payloads. Everything comes
from one ``random.Random(seed)``, so the same config gives the same events.
With ``awkward_rate`` above 0 it adds awkward but valid traffic (``devtools.awkward``),
each delivery tagged with its kind, beside the regular traffic, which stays the same.
Pure: it returns objects and strings; writing them is the caller's business.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from devtools.awkward import AWKWARD_KINDS, BOUNDED_CAMPAIGNS, awkward_deliveries, bounded_campaign_records
from devtools.fraud import FRAUD_KINDS, dress, fraud_deliveries
from shared_logic.campaigns import Campaign, Catalog
from shared_logic.policy import DEFAULT_ALLOWED_LATENESS_MS
from shared_logic.timeutil import MS_PER_DAY, MS_PER_HOUR

_TIMEZONES = ("UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo")
_MIN = 60_000


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """Knobs of the generator; rates are per user per day unless named otherwise."""

    seed: int = 7
    users: int = 2_000
    merchants: int = 20
    eur_merchants: int = 4
    advertisers: int = 8
    ad_campaigns: int = 24
    promo_campaigns: int = 8
    start: date = date(2026, 11, 1)
    days: int = 7
    impressions_per_user_day: float = 3.0
    click_through_rate: float = 0.05
    click_conversion_rate: float = 0.08
    view_conversion_rate: float = 0.01
    promo_views_per_user_day: float = 0.3
    promo_redemption_rate: float = 0.15
    ad_and_promo_rate: float = 0.3
    organic_orders_per_user_day: float = 0.02
    cancel_rate: float = 0.05
    duplicate_rate: float = 0.01
    late_rate: float = 0.0
    late_max_ms: int = 3 * MS_PER_HOUR
    max_transport_delay_ms: int = 2_000
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    malformed_rate: float = 0.001
    user_prefix: str = "u"
    catalog_seed: int | None = None  # blocks of one large data set share a catalog
    # Awkward scenes per regular delivery (at least one of each kind when above 0), and which
    # kinds (None: all of AWKWARD_KINDS). Above 0 the catalog gains four bounded campaigns.
    awkward_rate: float = 0.0
    awkward_kinds: tuple[str, ...] | None = None
    # Labelled invalid traffic (``devtools.fraud``): the share of users each scene of
    # ``fraud_kinds`` (None: all of FRAUD_KINDS) takes. Above 0, regular touches carry a
    # browser's user agent, a residential address and a device id.
    fraud_rate: float = 0.0
    fraud_kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("users", "merchants", "advertisers", "ad_campaigns", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be at least 1")
        if not 0 <= self.eur_merchants < self.merchants:
            raise ValueError(f"eur_merchants = {self.eur_merchants}: must be in [0, merchants)")
        if not 0 <= self.fraud_rate <= 1:
            raise ValueError(f"fraud_rate = {self.fraud_rate}: must be in [0, 1]")
        bad = sorted(set(self.fraud_kinds or ()) - set(FRAUD_KINDS))
        if bad or self.fraud_kinds == ():
            raise ValueError(f"fraud_kinds = {self.fraud_kinds}: kinds are {', '.join(FRAUD_KINDS)}")
        if not 0 <= self.awkward_rate <= 1:
            raise ValueError(f"awkward_rate = {self.awkward_rate}: must be in [0, 1]")
        unknown = sorted(set(self.awkward_kinds or ()) - set(AWKWARD_KINDS))
        if unknown or self.awkward_kinds == ():
            raise ValueError(f"awkward_kinds = {self.awkward_kinds}: kinds are {', '.join(AWKWARD_KINDS)}")

    @property
    def start_ms(self) -> int:
        return int(datetime(self.start.year, self.start.month, self.start.day, tzinfo=UTC).timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * MS_PER_DAY


@dataclass(frozen=True, slots=True)
class SyntheticEvent:
    """One delivery: when it reaches the pipe and what it carries.

    ``payload`` is a dict for a well-formed event, or a str or dict that breaks
    the contract when ``malformed`` is set. A duplicate repeats an earlier
    payload exactly (same event id). ``awkward`` names the kind of awkward scene
    the delivery belongs to (``devtools.awkward.AWKWARD_KINDS``); it is not in the payload.
    """

    arrival_ms: int
    payload: dict[str, Any] | str
    malformed: bool = False
    duplicate: bool = False
    awkward: str | None = None
    fraud: str | None = None  # the fraud scene of a fraudulent touch (``devtools.fraud``)

    def to_json(self) -> str:
        return (
            self.payload if isinstance(self.payload, str) else json.dumps(self.payload, separators=(",", ":"))
        )


@dataclass(slots=True)
class Traffic:
    """Generated catalog plus events in arrival order."""

    config: SyntheticConfig
    catalog: Catalog
    events: list[SyntheticEvent] = field(default_factory=list)

    def jsonl(self) -> Iterator[str]:
        """JSON lines in arrival order (malformed payloads as they are)."""
        for ev in self.events:
            yield ev.to_json()

    def valid_payloads(self) -> Iterator[dict[str, Any]]:
        """Well-formed payloads in arrival order, duplicates included."""
        for ev in self.events:
            if not ev.malformed and isinstance(ev.payload, dict):
                yield ev.payload

    @property
    def fraud(self) -> dict[str, str]:
        """The truth of the fraud scenes: each fraudulent touch's event id and its scene."""
        return {
            str(ev.payload["event_id"]): ev.fraud
            for ev in self.events
            if ev.fraud is not None and isinstance(ev.payload, dict)
        }

    @property
    def awkward(self) -> dict[str, list[str]]:
        """Event ids of each awkward kind's deliveries in arrival order, redeliveries left out.

        An id may also name a regular event (a conflicting copy shares it): to tell the copies
        apart, read ``SyntheticEvent.awkward``."""
        out: dict[str, list[str]] = {}
        for ev in self.events:
            if ev.awkward is not None and not ev.duplicate and isinstance(ev.payload, dict):
                out.setdefault(ev.awkward, []).append(str(ev.payload["event_id"]))
        return out


def make_catalog(config: SyntheticConfig) -> Catalog:
    """Campaigns of the config: ad campaigns on 1-3 merchants, promo campaigns with codes."""
    rng = random.Random((config.seed if config.catalog_seed is None else config.catalog_seed) * 7919 + 1)
    eur = {f"m{i:03d}" for i in range(config.merchants - config.eur_merchants, config.merchants)}
    merchants = [f"m{i:03d}" for i in range(config.merchants)]
    records: list[dict[str, Any]] = []
    total = config.ad_campaigns + config.promo_campaigns
    for n in range(total):
        promo = n >= config.ad_campaigns
        first = rng.choice(merchants)
        pool = [m for m in merchants if (m in eur) == (first in eur)]
        chosen = sorted({first, *rng.sample(pool, k=min(len(pool), rng.randint(0, 2)))})
        currency = "EUR" if first in eur else "USD"
        if rng.random() < 0.5:
            pricing: dict[str, Any] = {"model": "fixed", "fee_minor": rng.choice([50, 100, 150, 200, 300])}
            unit = pricing["fee_minor"]
        else:
            pricing = {"model": "bps", "bps": rng.choice([300, 500, 800, 1000])}
            unit = 5_000 * pricing["bps"] // 10_000
        # A third of the campaigns run on a tight daily cap so the demo shows capping.
        daily = unit * (rng.randint(3, 8) if n % 3 == 0 else rng.randint(40, 120))
        record: dict[str, Any] = {
            "campaign_id": f"{'pr' if promo else 'ad'}{n:03d}",
            "advertiser_id": f"adv{n % config.advertisers:02d}",
            "lever": "promo" if promo else "ad",
            "merchant_ids": chosen,
            "currency": currency,
            "pricing": pricing,
            "budget": {
                "daily_minor": daily,
                "lifetime_minor": daily * max(2, config.days - rng.randint(0, 3)),
                "timezone": rng.choice(_TIMEZONES),
            },
            "name": f"{'Promo' if promo else 'Ad'} campaign {n}",
        }
        if promo:
            record["promo_codes"] = [f"SAVE{n:03d}", f"WELCOME{n:03d}"][: rng.randint(1, 2)]
        if n % 5 == 4:
            record["windows"] = {"click_ms": 3 * MS_PER_DAY, "view_ms": 12 * MS_PER_HOUR}
        records.append(record)
    if config.awkward_rate > 0:
        records.extend(bounded_campaign_records(config))
    return Catalog.from_records(records)


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method is fine for the small rates used here.
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


_BREAKERS: tuple[tuple[str, Any], ...] = (
    ("amount_minor", 12.5),
    ("amount_minor", -100),
    ("currency", "XXQ"),
    ("event_time", "not a time"),
    ("event_time", 1_700_000_000),
    ("user_id", ""),
    ("event_type", "purchase"),
)


def _malform(rng: random.Random, payload: dict[str, Any]) -> dict[str, Any] | str:
    choice = rng.randrange(len(_BREAKERS) + 3)
    if choice == len(_BREAKERS):
        return json.dumps(payload)[:-7]  # truncated JSON
    if choice == len(_BREAKERS) + 1:
        broken = dict(payload)
        broken.pop("user_id", None)
        return broken
    if choice == len(_BREAKERS) + 2:
        return "[" + json.dumps(payload) + "]"
    key, value = _BREAKERS[choice]
    broken = dict(payload)
    if key in ("amount_minor", "currency") and payload["event_type"] != "order":
        key, value = "event_time", None
    broken[key] = value
    return broken


def generate(config: SyntheticConfig | None = None) -> Traffic:
    """Generate the catalog and every event of ``config``, in arrival order."""
    cfg = config or SyntheticConfig()
    catalog = make_catalog(cfg)
    rng = random.Random(cfg.seed)
    # The regular traffic leaves the bounded campaigns to the awkward scenes.
    regular = [c for c in catalog if c.campaign_id not in BOUNDED_CAMPAIGNS]
    ads = [c for c in regular if c.lever == "ad"]
    promos = [c for c in regular if c.lever == "promo"]
    promo_by_merchant: dict[str, list[Campaign]] = {}
    for pc in promos:
        for m in pc.merchant_ids:
            promo_by_merchant.setdefault(m, []).append(pc)
    all_merchants = [f"m{i:03d}" for i in range(cfg.merchants)]
    eur = set(all_merchants[cfg.merchants - cfg.eur_merchants :])
    start, end = cfg.start_ms, cfg.end_ms
    payloads: list[tuple[int, dict[str, Any]]] = []
    counter = 0
    order_counter = 0

    def new_id(prefix: str) -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}{cfg.seed}-{counter:09d}"

    def add_order(user: str, t: int, merchant: str, codes: list[str]) -> None:
        nonlocal order_counter
        if t >= end:
            return
        order_counter += 1
        order_id = f"o{cfg.seed}-{order_counter:08d}"
        amount = max(100, int(rng.lognormvariate(8.3, 0.7)))  # median about 40.00
        payloads.append(
            (
                t,
                {
                    "event_id": new_id("e"),
                    "event_type": "order",
                    "event_time": t,
                    "user_id": user,
                    "order_id": order_id,
                    "merchant_id": merchant,
                    "amount_minor": amount,
                    "currency": "EUR" if merchant in eur else "USD",
                    "promo_codes": codes,
                },
            )
        )
        if rng.random() < cfg.cancel_rate:
            ct = t + rng.randint(MS_PER_HOUR, 2 * MS_PER_DAY)
            if ct < end:
                payloads.append(
                    (
                        ct,
                        {
                            "event_id": new_id("x"),
                            "event_type": "order_cancel",
                            "event_time": ct,
                            "user_id": user,
                            "order_id": order_id,
                        },
                    )
                )

    def maybe_codes(merchant: str, p: float) -> list[str]:
        offers = promo_by_merchant.get(merchant)
        if offers and rng.random() < p:
            return [rng.choice(sorted(rng.choice(offers).promo_codes))]
        return []

    for u in range(cfg.users):
        user = f"{cfg.user_prefix}{u:07d}"
        for d in range(cfg.days):
            day0 = start + d * MS_PER_DAY
            for _ in range(_poisson(rng, cfg.impressions_per_user_day)):
                camp = rng.choice(ads)
                t = day0 + rng.randrange(MS_PER_DAY)
                imp_id = new_id("i")
                placement = rng.choice(("search", "feed", "banner", "video"))
                payloads.append(
                    (
                        t,
                        {
                            "event_id": imp_id,
                            "event_type": "impression",
                            "event_time": t,
                            "user_id": user,
                            "campaign_id": camp.campaign_id,
                            "placement": placement,
                            "creative_id": f"cr{rng.randint(1, 5)}",
                        },
                    )
                )
                merchant = rng.choice(sorted(camp.merchant_ids))
                if rng.random() < cfg.click_through_rate:
                    ct = t + rng.randint(1_000, 10 * _MIN)
                    payloads.append(
                        (
                            ct,
                            {
                                "event_id": new_id("c"),
                                "event_type": "click",
                                "event_time": ct,
                                "user_id": user,
                                "campaign_id": camp.campaign_id,
                                "placement": placement,
                                "impression_id": imp_id,
                            },
                        )
                    )
                    if rng.random() < cfg.click_conversion_rate:
                        ot = ct + rng.randint(_MIN, 2 * MS_PER_DAY)
                        add_order(user, ot, merchant, maybe_codes(merchant, cfg.ad_and_promo_rate))
                elif rng.random() < cfg.view_conversion_rate:
                    add_order(user, t + rng.randint(_MIN, 20 * MS_PER_HOUR), merchant, [])
            for _ in range(_poisson(rng, cfg.promo_views_per_user_day) if promos else 0):
                pc = rng.choice(promos)
                t = day0 + rng.randrange(MS_PER_DAY)
                code = rng.choice(sorted(pc.promo_codes))
                payloads.append(
                    (
                        t,
                        {
                            "event_id": new_id("p"),
                            "event_type": "promo_view",
                            "event_time": t,
                            "user_id": user,
                            "campaign_id": pc.campaign_id,
                            "promo_code": code,
                        },
                    )
                )
                merchant = rng.choice(sorted(pc.merchant_ids))
                if rng.random() < cfg.promo_redemption_rate:
                    add_order(user, t + rng.randint(_MIN, MS_PER_DAY), merchant, [code])
                elif rng.random() < cfg.view_conversion_rate:
                    add_order(user, t + rng.randint(_MIN, 20 * MS_PER_HOUR), merchant, [])
            for _ in range(_poisson(rng, cfg.organic_orders_per_user_day)):
                add_order(user, day0 + rng.randrange(MS_PER_DAY), rng.choice(all_merchants), [])

    events: list[SyntheticEvent] = []
    dressing = random.Random(cfg.seed * 31 + 5) if cfg.fraud_rate > 0 else None
    for t, payload in payloads:
        if dressing is not None:
            payload = dress(payload, dressing)
        if rng.random() < cfg.late_rate:
            arrival = t + rng.randint(cfg.allowed_lateness_ms + 1_000, cfg.late_max_ms)
        else:
            arrival = t + rng.randint(0, cfg.max_transport_delay_ms)
        if rng.random() < cfg.malformed_rate:
            events.append(SyntheticEvent(arrival, _malform(rng, payload), malformed=True))
            continue
        events.append(SyntheticEvent(arrival, payload))
        if rng.random() < cfg.duplicate_rate:
            events.append(SyntheticEvent(arrival + rng.randint(0, 30_000), payload, duplicate=True))
    if cfg.awkward_rate > 0:
        regular_deliveries = [
            (e.arrival_ms, e.payload)
            for e in events
            if not e.malformed and not e.duplicate and isinstance(e.payload, dict)
        ]
        events.extend(
            SyntheticEvent(d.arrival_ms, d.payload, duplicate=d.duplicate, awkward=d.kind)
            for d in awkward_deliveries(cfg, catalog, regular_deliveries)
        )
    if cfg.fraud_rate > 0:
        users = [f"{cfg.user_prefix}{u:07d}" for u in range(cfg.users)]
        events.extend(
            SyntheticEvent(d.arrival_ms, d.payload, fraud=d.kind if d.fraudulent else None)
            for d in fraud_deliveries(cfg, catalog, users, cfg.fraud_kinds or FRAUD_KINDS)
        )
    # Stable: the regular deliveries keep their order among themselves whatever is added.
    events.sort(key=lambda e: e.arrival_ms)
    return Traffic(cfg, catalog, events)


def random_path_records(
    n_paths: int, channels: int = 8, max_length: int = 6, seed: int = 0, distinct: bool = False
) -> list[dict[str, Any]]:
    """ChannelAttribution-style path aggregates for model tests and benchmarks.

    Channels are ``c0..c{channels-1}``; later channels convert more often and some
    paths repeat a channel, so models have something to tell apart. With
    ``distinct`` the paths are deduplicated (counts summed), as an aggregate is.
    """
    rng = random.Random(seed)
    names = [f"c{i}" for i in range(channels)]
    weights = [1.0 + i for i in range(channels)]
    acc: dict[str, list[float]] = {}
    out: list[dict[str, Any]] = []
    for _ in range(n_paths):
        length = rng.randint(1, max_length)
        path = rng.choices(names, weights=weights, k=length)
        if length > 1 and rng.random() < 0.2:
            path.insert(rng.randrange(length), path[rng.randrange(length)])
        strength = sum(int(ch[1:]) + 1 for ch in set(path)) / (channels * 2.0)
        trials = rng.randint(1, 20)
        conv = sum(rng.random() < strength * 0.3 for _ in range(trials))
        value = round(sum(rng.uniform(5, 50) for _ in range(conv)), 2)
        key = " > ".join(path)
        if distinct:
            slot = acc.setdefault(key, [0.0, 0.0, 0.0])
            slot[0] += conv
            slot[1] += value
            slot[2] += trials - conv
        else:
            out.append(
                {
                    "path": key,
                    "total_conversions": conv,
                    "total_conversion_value": value,
                    "total_null": trials - conv,
                }
            )
    if distinct:
        out = [
            {"path": k, "total_conversions": c, "total_conversion_value": v, "total_null": n}
            for k, (c, v, n) in acc.items()
        ]
    return out
