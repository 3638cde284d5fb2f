"""Awkward but valid traffic: what real producers send besides the happy path.

Every payload here passes ``shared_logic.events.parse_event``. Many are then refused by the
admission or identity rules of ``shared_logic`` (a touch on an unknown or ended campaign, on a
campaign of the other lever, dated past the future bound; a conflicting copy of an event id or an
order id); the others sit on a bound of a rule (a click exactly one click window before its
order, a touch at a campaign's first millisecond, an order one millisecond before a budget day's
local midnight written with a ``+14:00`` offset) or are valid in a way the happy path never is
(unknown fields, explicit nulls, unicode ids, a zero amount, sixteen promo codes).

Each kind is a small scene. Most scenes give a fresh user nothing but the scene's events, so the
right outcome is plain: an admitted touch wins the scene's order, a refused one leaves it organic.
The scenes on identity (duplicate event ids and order ids, odd cancels, reformatted redeliveries)
pick an event of the regular traffic and add the awkward copy beside it.

The scenes come from their own ``random.Random`` and are only added: the regular traffic of a
config is the same whatever its ``awkward_rate`` (``tests/unit/test_synthetic.py`` holds it).
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from shared_logic.budget import day_bounds_ms
from shared_logic.campaigns import Campaign, Catalog, Lever
from shared_logic.events import MAX_ID_LENGTH, MAX_PAYLOAD_BYTES, MAX_PROMO_CODES
from shared_logic.money import MAX_AMOUNT_MINOR
from shared_logic.policy import DEFAULT_MAX_FUTURE_MS, AttributionPolicy
from shared_logic.timeutil import MS_PER_DAY, MS_PER_HOUR, to_epoch_ms

if TYPE_CHECKING:
    from devtools.synthetic import SyntheticConfig

_MIN = 60_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Campaigns with a start or an end, added to the catalog when awkward traffic is on.
AD_ENDED: Final = "ad-ended"
AD_LATE_START: Final = "ad-late-start"
PROMO_ENDED: Final = "pr-ended"
PROMO_FUTURE: Final = "pr-future"
BOUNDED_CAMPAIGNS: Final = (AD_ENDED, AD_LATE_START, PROMO_ENDED, PROMO_FUTURE)
ENDED_CODE: Final = "ENDED-1"
FUTURE_CODE: Final = "SOON-1"

#: UTC offsets a producer may write times in (minutes), the extremes included.
_OFFSETS: Final = (14 * 60, -12 * 60, 5 * 60 + 45, -(3 * 60 + 30), 0)


def _mid_ms(config: SyntheticConfig) -> int:
    # Noon of the first day, off any second (so a bound is never also a day's bound), whatever the
    # number of days: a catalog made for more days (``make live``'s) has the same bounds.
    return config.start_ms + MS_PER_DAY // 2 + 12_345


def bounded_campaign_records(config: SyntheticConfig) -> list[dict[str, Any]]:
    """Four campaigns that do not run all the time (an ad and a promo campaign that end at noon
    of the first day, an ad campaign that starts an hour later, a promo campaign that starts
    when the traffic ends), on budget days of extreme time zones and tight daily caps."""
    rng = random.Random((config.seed if config.catalog_seed is None else config.catalog_seed) * 7919 + 3)
    usd = [f"m{i:03d}" for i in range(config.merchants - config.eur_merchants)]
    mid = _mid_ms(config)

    def record(cid: str, lever: str, pricing: dict[str, Any], zone: str, **extra: Any) -> dict[str, Any]:
        return {
            "campaign_id": cid,
            "advertiser_id": f"adv{rng.randrange(config.advertisers):02d}",
            "lever": lever,
            "merchant_ids": sorted(rng.sample(usd, k=min(2, len(usd)))),
            "currency": "USD",
            "pricing": pricing,
            "budget": {"daily_minor": 4 * 150, "lifetime_minor": 40 * 150, "timezone": zone},
            "name": f"{cid} (awkward traffic)",
            **extra,
        }

    return [
        record(
            AD_ENDED,
            "ad",
            {"model": "fixed", "fee_minor": 150},
            "Pacific/Kiritimati",  # UTC+14
            windows={"click_ms": 2 * MS_PER_DAY, "view_ms": 6 * MS_PER_HOUR},
            start_ms=config.start_ms - 30 * MS_PER_DAY,
            end_ms=mid,
        ),
        record(AD_LATE_START, "ad", {"model": "bps", "bps": 500}, "Etc/GMT+12", start_ms=mid + MS_PER_HOUR),
        record(
            PROMO_ENDED,
            "promo",
            {"model": "bps", "bps": 800},
            "Asia/Kathmandu",  # UTC+5:45
            promo_codes=[ENDED_CODE],
            end_ms=mid,
        ),
        record(
            PROMO_FUTURE,
            "promo",
            {"model": "fixed", "fee_minor": 150},
            "America/St_Johns",  # UTC-3:30
            promo_codes=[FUTURE_CODE],
            start_ms=config.end_ms,
            end_ms=config.end_ms + 30 * MS_PER_DAY,
        ),
    ]


def rfc3339(ms: int, offset_minutes: int, digits: int = 3, zulu: bool = False) -> str:
    """``ms`` as an RFC 3339 time in the given offset, with 0, 3, 6 or 9 digits of fraction
    (the digits past the millisecond are zeros, so the time is exactly ``ms``)."""
    local = (_EPOCH + timedelta(milliseconds=ms)).astimezone(timezone(timedelta(minutes=offset_minutes)))
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{ms % 1000:03d}".ljust(digits, "0")
    if zulu and offset_minutes == 0:
        return text + "Z"
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One awkward delivery: when it arrives, what it carries, the kind of scene it belongs to."""

    arrival_ms: int
    payload: dict[str, Any]
    kind: str
    duplicate: bool = False


_Scene = Callable[["_Scenes"], None]
_SCENES: dict[str, _Scene] = {}


def _scene(fn: _Scene) -> _Scene:
    _SCENES[fn.__name__] = fn
    return fn


class _Scenes:
    """Builds the scenes of one traffic; each ``@_scene`` method adds one scene of its kind."""

    def __init__(
        self, config: SyntheticConfig, catalog: Catalog, base: Sequence[tuple[int, dict[str, Any]]]
    ) -> None:
        self.cfg = config
        self.catalog = catalog
        self.rng = random.Random(config.seed * 7919 + 2)
        self.policy = AttributionPolicy()
        self.out: list[Delivery] = []
        self.kind = ""
        self._n = 0
        self._unicode_scenes = 0
        regular = [c for c in catalog if c.campaign_id not in BOUNDED_CAMPAIGNS]
        self.ads = [c for c in regular if c.lever is Lever.AD]
        promos = [c for c in regular if c.lever is Lever.PROMO]
        fallback = catalog.get(PROMO_ENDED)
        self.promos = promos or ([fallback] if fallback is not None else [])
        self.base = list(base)
        self.touches = [
            (a, p) for a, p in self.base if p["event_type"] in ("impression", "click", "promo_view")
        ]
        self.orders = [(a, p) for a, p in self.base if p["event_type"] == "order"]
        shared: dict[tuple[str, str], list[Campaign]] = {}
        for c in self.ads:
            for m in sorted(c.merchant_ids):
                shared.setdefault((m, c.currency), []).append(c)
        self.shared = [v for _, v in sorted(shared.items()) if len(v) > 1]
        self.mid = _mid_ms(config)

    # ---- ids, times, payloads -------------------------------------------------------------

    def serial(self) -> int:
        self._n += 1
        return self._n

    def eid(self, letter: str) -> str:
        return f"{letter}{self.cfg.seed}-a{self.serial():08d}"

    def user(self) -> str:
        return f"{self.cfg.user_prefix}{self.cfg.seed}-awk{self.serial():06d}"

    def order_id(self) -> str:
        return f"o{self.cfg.seed}-a{self.serial():07d}"

    def when(self, margin_ms: int = 0) -> int:
        """An instant of the traffic at least ``margin_ms`` after its start."""
        span = self.cfg.days * MS_PER_DAY - margin_ms
        return self.cfg.start_ms + margin_ms + self.rng.randrange(max(1, span))

    def clamp(self, t: int) -> int:
        return min(max(t, self.cfg.start_ms), self.cfg.end_ms - 1)

    def gap(self) -> int:
        """A touch's lead on its order: well inside every window of the catalog."""
        return self.rng.randint(_MIN, 4 * MS_PER_HOUR)

    def emit(self, payload: dict[str, Any], arrival_ms: int | None = None) -> dict[str, Any]:
        if arrival_ms is None:
            arrival_ms = to_epoch_ms(payload["event_time"]) + self.rng.randint(
                0, self.cfg.max_transport_delay_ms
            )
        self.out.append(Delivery(arrival_ms, payload, self.kind))
        return payload

    def touch(
        self, event_type: str, user: str, campaign_id: str, t: int | str, **extra: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "event_id": self.eid(event_type[0]),
            "event_type": event_type,
            "event_time": t,
            "user_id": user,
            "campaign_id": campaign_id,
        }
        if event_type == "promo_view":
            payload["promo_code"] = self.code_of(campaign_id)
        else:
            payload["placement"] = self.rng.choice(("search", "feed", "banner", "video"))
        if event_type == "impression":
            payload["creative_id"] = f"cr{self.rng.randint(1, 5)}"
        payload.update(extra)
        return payload

    def order(
        self, user: str, t: int | str, merchant: str, currency: str, codes: Sequence[str] = (), **extra: Any
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "event_id": self.eid("e"),
            "event_type": "order",
            "event_time": t,
            "user_id": user,
            "order_id": self.order_id(),
            "merchant_id": merchant,
            "amount_minor": self.amount(),
            "currency": currency,
            "promo_codes": list(codes),
        }
        payload.update(extra)
        return payload

    def cancel(self, user: str, order_id: str, t: int | str) -> dict[str, Any]:
        return {
            "event_id": self.eid("x"),
            "event_type": "order_cancel",
            "event_time": t,
            "user_id": user,
            "order_id": order_id,
        }

    def amount(self) -> int:
        return max(100, int(self.rng.lognormvariate(8.3, 0.7)))

    def code_of(self, campaign_id: str) -> str | None:
        campaign = self.catalog.get(campaign_id)
        return min(campaign.promo_codes) if campaign is not None and campaign.promo_codes else None

    def ad(self) -> tuple[Campaign, str]:
        """A regular ad campaign and one of its merchants."""
        c = self.rng.choice(self.ads)
        return c, self.rng.choice(sorted(c.merchant_ids))

    def promo(self) -> tuple[Campaign, str]:
        c = self.rng.choice(self.promos)
        return c, self.rng.choice(sorted(c.merchant_ids))

    def bounded(self, campaign_id: str) -> tuple[Campaign, str]:
        c = self.catalog.get(campaign_id)
        assert c is not None, f"{campaign_id}: the catalog of awkward traffic has it"
        return c, self.rng.choice(sorted(c.merchant_ids))

    def journey(
        self,
        event_type: str,
        campaign_id: str,
        touch_ms: int,
        merchant: str,
        currency: str,
        order_ms: int,
        **kw: Any,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A fresh user's one touch and one order: the touch wins the order iff it is admitted."""
        user = self.user()
        touch = self.emit(self.touch(event_type, user, campaign_id, touch_ms))
        return touch, self.emit(self.order(user, order_ms, merchant, currency, **kw))

    def base_touch(self) -> tuple[int, dict[str, Any]]:
        if self.touches:
            return self.rng.choice(self.touches)
        c, _ = self.ad()
        touch = self.emit(self.touch("click", self.user(), c.campaign_id, self.when()))
        return self.out[-1].arrival_ms, touch

    def base_order(self) -> tuple[int, dict[str, Any]]:
        if self.orders:
            return self.rng.choice(self.orders)
        c, m = self.ad()
        order = self.emit(self.order(self.user(), self.when(), m, c.currency))
        return self.out[-1].arrival_ms, order

    def other_user(self, user: str) -> str:
        """Another user of the regular traffic (a fresh one when there is none)."""
        for _ in range(8):
            if not self.base:
                break
            other = str(self.rng.choice(self.base)[1]["user_id"])
            if other != user:
                return other
        return self.user()

    def time_text(self, ms: int) -> str:
        offset = self.rng.choice(_OFFSETS)
        digits = self.rng.choice((0, 3, 6, 9)) if ms % 1000 == 0 else self.rng.choice((3, 6, 9))
        return rfc3339(ms, offset, digits, zulu=self.rng.random() < 0.5)

    # ---- the catalog rules: known campaign, lever, active at the touch -----------------------

    @_scene
    def unknown_campaign(self) -> None:
        """A touch on a campaign the catalog does not have, often a look-alike of one it has."""
        event_type = self.rng.choice(("impression", "click", "promo_view"))
        c, m = self.promo() if event_type == "promo_view" else self.ad()
        cid = c.campaign_id
        missing = self.rng.choice((cid.upper(), f"{cid} ", f"{cid}\u200b", f"gone-{self.serial()}"))
        t = self.when()
        self.journey(event_type, missing, t - self.gap(), m, c.currency, t)

    @_scene
    def lever_promo_view_on_ad(self) -> None:
        c, m = self.ad()
        t = self.when()
        self.journey("promo_view", c.campaign_id, t - self.gap(), m, c.currency, t)

    @_scene
    def lever_impression_on_promo(self) -> None:
        c, m = self.promo()
        t = self.when()
        self.journey("impression", c.campaign_id, t - self.gap(), m, c.currency, t)

    @_scene
    def lever_click_on_promo(self) -> None:
        c, m = self.promo()
        t = self.when()
        self.journey("click", c.campaign_id, t - self.gap(), m, c.currency, t)

    def _ended_touch(self, touch_ms: Callable[[int], int]) -> None:
        cid = self.rng.choice((AD_ENDED, PROMO_ENDED))
        c, m = self.bounded(cid)
        assert c.end_ms is not None
        event_type = "promo_view" if c.lever is Lever.PROMO else self.rng.choice(("impression", "click"))
        tt = touch_ms(c.end_ms)
        self.journey(event_type, cid, tt, m, c.currency, max(tt, c.end_ms) + self.gap())

    @_scene
    def campaign_ended(self) -> None:
        self._ended_touch(lambda end: end + self.rng.randint(1, 3 * MS_PER_HOUR))

    @_scene
    def campaign_end_bound(self) -> None:
        """A touch at the campaign's end exactly: the end is exclusive, so it is refused."""
        self._ended_touch(lambda end: end)

    @_scene
    def campaign_last_ms(self) -> None:
        """A touch at the campaign's last millisecond: admitted, and it wins an order placed after
        the end (the campaign must run at the touch, not at the order)."""
        self._ended_touch(lambda end: end - 1)

    @_scene
    def campaign_not_started(self) -> None:
        if self.rng.random() < 0.5:
            c, m = self.bounded(AD_LATE_START)
            assert c.start_ms is not None
            tt = c.start_ms - self.rng.randint(1, MS_PER_HOUR)
            event_type = self.rng.choice(("impression", "click"))
            self.journey(
                event_type, c.campaign_id, tt, m, c.currency, c.start_ms + self.rng.randint(1, MS_PER_HOUR)
            )
        else:
            c, m = self.bounded(PROMO_FUTURE)
            t = self.when(margin_ms=5 * MS_PER_HOUR)
            self.journey("promo_view", c.campaign_id, t - self.gap(), m, c.currency, t)

    @_scene
    def campaign_start_bound(self) -> None:
        """A touch at the campaign's start exactly: the start is inclusive, so it is admitted."""
        c, m = self.bounded(AD_LATE_START)
        assert c.start_ms is not None
        event_type = self.rng.choice(("impression", "click"))
        self.journey(event_type, c.campaign_id, c.start_ms, m, c.currency, c.start_ms + self.gap())

    # ---- orders: codes, currency, merchant (wire rules only: valid, perhaps organic) -----------

    def _coded_order(self, campaign_id: str, t: int) -> None:
        c, m = self.bounded(campaign_id)
        self.emit(self.order(self.user(), t, m, c.currency, sorted(c.promo_codes)))

    @_scene
    def promo_code_ended(self) -> None:
        """The code of a campaign that has ended (at its end exactly, or after)."""
        self._coded_order(PROMO_ENDED, self.mid + self.rng.choice((0, self.rng.randint(1, 3 * MS_PER_HOUR))))

    @_scene
    def promo_code_before_end(self) -> None:
        """The code of a campaign in its last hour (its last millisecond, or before): a redemption."""
        self._coded_order(PROMO_ENDED, self.mid - self.rng.choice((1, self.rng.randint(2, MS_PER_HOUR))))

    @_scene
    def promo_code_future(self) -> None:
        self._coded_order(PROMO_FUTURE, self.when())

    @_scene
    def promo_code_unknown(self) -> None:
        c, m = self.promo()
        code = min(c.promo_codes) if c.promo_codes else "CODE"
        unknown = self.rng.choice((code.lower(), f"{code} ", f"NOSUCH-{self.serial()}"))
        self.emit(self.order(self.user(), self.when(), m, c.currency, [unknown]))

    @_scene
    def promo_code_other_merchant(self) -> None:
        """A promo campaign's code at a merchant the campaign does not list (same currency)."""
        c, _ = self.promo()
        merchants = sorted(
            {m for x in self.catalog if x.currency == c.currency for m in x.merchant_ids} - c.merchant_ids
        )
        merchant = self.rng.choice(merchants) if merchants else f"m-other-{self.serial()}"
        self.emit(self.order(self.user(), self.when(), merchant, c.currency, sorted(c.promo_codes)))

    @_scene
    def currency_mismatch(self) -> None:
        """A click, then an order at the campaign's merchant in a currency none of its campaigns use."""
        c, m = self.ad()
        used = {x.currency for x in self.catalog.by_merchant(m)}
        currency = self.rng.choice([x for x in ("USD", "EUR", "GBP", "JPY", "BHD") if x not in used])
        t = self.when()
        self.journey("click", c.campaign_id, t - self.gap(), m, currency, t)

    @_scene
    def unknown_merchant(self) -> None:
        c, m = self.ad()
        merchant = self.rng.choice((m.upper(), f"{m} ", f"m{self.cfg.merchants:03d}"))
        t = self.when()
        self.journey("click", c.campaign_id, t - self.gap(), merchant, c.currency, t)

    # ---- identity: event ids, order ids, cancels, redeliveries --------------------------------

    @_scene
    def event_id_conflict(self) -> None:
        """Another payload under a touch's (user_id, event_id): a conflicting copy."""
        _, p = self.base_touch()
        copy = dict(p)
        t = to_epoch_ms(p["event_time"])
        change = self.rng.randrange(4)
        if change == 1:  # another campaign of the same lever
            pool = self.promos if p["event_type"] == "promo_view" else self.ads
            others = [c for c in pool if c.campaign_id != p["campaign_id"]]
            if others:
                copy["campaign_id"] = self.rng.choice(others).campaign_id
        elif change == 2:  # same time: only the digest of the fields tells the copies apart
            if p["event_type"] == "promo_view":
                copy["promo_code"] = None if p.get("promo_code") else f"NOSUCH-{self.serial()}"
            else:
                copy["placement"] = "conflict"
        elif change == 3 and p["event_type"] != "promo_view":
            copy["event_type"] = "click" if p["event_type"] == "impression" else "impression"
        if copy == p:  # a time shift, earlier or later (the earlier copy stands)
            copy["event_time"] = t + self.rng.choice((-1, 1)) * self.rng.randint(1, MS_PER_HOUR)
        self.emit(copy)

    @_scene
    def event_id_other_user(self) -> None:
        """A touch's event id reused by another user: another event, since a touch is named by
        (user_id, event_id)."""
        _, p = self.base_touch()
        copy = dict(p)
        copy["user_id"] = self.other_user(p["user_id"])
        copy["event_time"] = self.clamp(
            to_epoch_ms(p["event_time"]) + self.rng.randint(-MS_PER_HOUR, MS_PER_HOUR)
        )
        self.emit(copy)

    def _order_copy(self, p: dict[str, Any], user: str) -> dict[str, Any]:
        copy = dict(p)
        copy["user_id"] = user
        copy["amount_minor"] = p["amount_minor"] + self.rng.randint(1, 5_000)
        t = to_epoch_ms(p["event_time"])
        copy["event_time"] = self.clamp(t + self.rng.choice((0, -1, 1)) * self.rng.randint(1, MS_PER_HOUR))
        return copy

    @_scene
    def order_id_reused_same_user(self) -> None:
        """Another order event (another event id, amount, maybe time) under an order id."""
        _, p = self.base_order()
        copy = self._order_copy(p, p["user_id"])
        copy["event_id"] = self.eid("e")
        self.emit(copy)

    @_scene
    def order_id_reused_other_user(self) -> None:
        _, p = self.base_order()
        copy = self._order_copy(p, self.other_user(p["user_id"]))
        copy["event_id"] = self.eid("e")
        self.emit(copy)

    @_scene
    def order_conflict_same_event_id(self) -> None:
        """The same event id and order id with another amount, a third of the time at the very
        same time (then neither the time nor the event id tells the copies apart)."""
        _, p = self.base_order()
        self.emit(self._order_copy(p, p["user_id"]))

    @_scene
    def order_event_id_reused(self) -> None:
        """An order's event id on another order (another order id), of its user or another."""
        _, p = self.base_order()
        user = p["user_id"] if self.rng.random() < 0.6 else self.other_user(p["user_id"])
        copy = self._order_copy(p, user)
        copy["order_id"] = self.order_id()
        self.emit(copy)

    @_scene
    def cancel_before_order(self) -> None:
        _, p = self.base_order()
        self.emit(
            self.cancel(
                p["user_id"], p["order_id"], to_epoch_ms(p["event_time"]) - self.rng.randint(1, MS_PER_HOUR)
            )
        )

    @_scene
    def cancel_at_order_time(self) -> None:
        _, p = self.base_order()
        self.emit(self.cancel(p["user_id"], p["order_id"], to_epoch_ms(p["event_time"])))

    @_scene
    def cancel_unknown_order(self) -> None:
        _, p = self.base_order()
        order_id = self.rng.choice(
            (p["order_id"].upper(), f"{p['order_id']} ", f"o{self.cfg.seed}-gone-{self.serial()}")
        )
        self.emit(self.cancel(p["user_id"], order_id, self.when()))

    @_scene
    def cancel_other_user(self) -> None:
        """A cancel of an order by another user_id than the order's (it still cancels it)."""
        _, p = self.base_order()
        t = self.clamp(to_epoch_ms(p["event_time"]) + self.rng.randint(_MIN, MS_PER_DAY))
        self.emit(self.cancel(self.other_user(p["user_id"]), p["order_id"], t))

    @_scene
    def cancel_twice(self) -> None:
        """Two cancels of one order (two event ids), sometimes at the same time."""
        _, p = self.base_order()
        t = self.clamp(to_epoch_ms(p["event_time"]) + self.rng.randint(_MIN, MS_PER_DAY))
        self.emit(self.cancel(p["user_id"], p["order_id"], t))
        self.emit(
            self.cancel(
                p["user_id"],
                p["order_id"],
                self.clamp(t + self.rng.choice((0, self.rng.randint(1, MS_PER_HOUR)))),
            )
        )

    @_scene
    def redelivery_reformatted(self) -> None:
        """The same event in other JSON: keys reordered, the time in RFC 3339, an unknown field,
        explicit nulls for absent optional fields, an order's empty promo codes left out. Its
        contract fields are the original's, so it is the same event."""
        arrival, p = self.rng.choice(self.base) if self.base else self.base_touch()
        copy = dict(p)
        changes = self.rng.sample(range(5), k=self.rng.randint(1, 3))
        if 0 in changes:
            copy["event_time"] = self.time_text(to_epoch_ms(p["event_time"]))
        if 1 in changes:
            copy["producer"] = {"sdk": "mobile/4.2.0", "retry": 1}
        if 2 in changes:
            optional = {
                "impression": ("placement", "creative_id"),
                "click": ("placement", "creative_id", "impression_id"),
                "promo_view": ("promo_code",),
            }.get(p["event_type"], ())
            for name in optional:
                copy.setdefault(name, None)
        if 3 in changes and p["event_type"] == "order" and not p["promo_codes"]:
            del copy["promo_codes"]
        if 4 in changes or copy == p:
            copy = dict(reversed(copy.items()))
        self.emit(copy, arrival + self.rng.randint(0, 30_000))

    # ---- the windows: order time - window <= touch time <= order time ------------------------

    def _window_scene(self, event_type: str, lead: Callable[[Campaign], int]) -> None:
        c, m = self.promo() if event_type == "promo_view" else self.ad()
        t = self.when()
        self.journey(event_type, c.campaign_id, t - lead(c), m, c.currency, t)

    def _view_type(self) -> str:
        return self.rng.choice(("impression", "promo_view"))

    @_scene
    def click_at_window_start(self) -> None:
        self._window_scene("click", lambda c: self.policy.windows_for(c).click_ms)

    @_scene
    def click_before_window(self) -> None:
        self._window_scene("click", lambda c: self.policy.windows_for(c).click_ms + 1)

    @_scene
    def view_at_window_start(self) -> None:
        self._window_scene(self._view_type(), lambda c: self.policy.windows_for(c).view_ms)

    @_scene
    def view_before_window(self) -> None:
        self._window_scene(self._view_type(), lambda c: self.policy.windows_for(c).view_ms + 1)

    @_scene
    def touch_at_order_time(self) -> None:
        self._window_scene(self.rng.choice(("impression", "click", "promo_view")), lambda c: 0)

    @_scene
    def touch_after_order(self) -> None:
        self._window_scene(self.rng.choice(("impression", "click", "promo_view")), lambda c: -1)

    # ---- time: offsets, budget-day midnights, the future bound --------------------------------

    @_scene
    def rfc3339_near_midnight(self) -> None:
        """A click, then orders one millisecond before and at a local midnight of the campaign's
        budget day (sometimes one after), every time in RFC 3339 with an offset of -12:00 to +14:00."""
        candidates = [
            *self.ads,
            *(c for c in (self.catalog.get(AD_ENDED), self.catalog.get(AD_LATE_START)) if c),
        ]
        first = self.cfg.start
        for _ in range(20):
            c = self.rng.choice(candidates)
            zone = c.budget.timezone
            midnights = [
                day_bounds_ms(first + timedelta(days=d), zone)[0] for d in range(-1, self.cfg.days + 1)
            ]
            fits = [
                mn
                for mn in midnights
                if self.cfg.start_ms + 2 * MS_PER_HOUR <= mn < self.cfg.end_ms - 1
                and c.active_at(mn - 2 * MS_PER_HOUR)
                and c.active_at(mn - _MIN)
            ]
            if fits:
                break
        else:
            return
        midnight = self.rng.choice(fits)
        m = self.rng.choice(sorted(c.merchant_ids))
        user = self.user()
        touch_ms = midnight - self.rng.randint(_MIN, 2 * MS_PER_HOUR)
        self.emit(self.touch("click", user, c.campaign_id, self.time_text(touch_ms)))
        for delta in (-1, 0, 1) if self.rng.random() < 0.3 else (-1, 0):
            self.emit(self.order(user, self.time_text(midnight + delta), m, c.currency))

    def _future_scene(self, past_bound: int) -> None:
        c, m = self.ad()
        t = self.when(margin_ms=MS_PER_HOUR)
        user = self.user()
        touch_ms = t - self.rng.randint(_MIN, MS_PER_HOUR)
        self.emit(
            self.touch("click", user, c.campaign_id, touch_ms), touch_ms - DEFAULT_MAX_FUTURE_MS - past_bound
        )
        self.emit(self.order(user, t, m, c.currency))

    @_scene
    def future_at_bound(self) -> None:
        """A click dated ``DEFAULT_MAX_FUTURE_MS`` after its arrival exactly: admitted."""
        self._future_scene(0)

    @_scene
    def future_past_bound(self) -> None:
        """A click dated one millisecond more in the future: refused on the wire."""
        self._future_scene(1)

    # ---- values the happy path never sends ----------------------------------------------------

    def _click_then(self, **order_kw: Any) -> None:
        c, m = self.ad()
        t = self.when()
        self.journey("click", c.campaign_id, t - self.gap(), m, c.currency, t, **order_kw)

    @_scene
    def zero_amount(self) -> None:
        self._click_then(amount_minor=0)

    @_scene
    def max_amount(self) -> None:
        self._click_then(amount_minor=MAX_AMOUNT_MINOR - 1)

    @_scene
    def max_promo_codes(self) -> None:
        """An order with ``MAX_PROMO_CODES`` codes: live, ended, future, unknown, repeated."""
        c, m = self.promo()
        pool = sorted({code for x in self.catalog for code in x.promo_codes} | {f"NOSUCH-{self.serial()}"})
        codes = self.rng.sample(pool, k=min(len(pool), MAX_PROMO_CODES - 2))
        codes += self.rng.choices(codes, k=MAX_PROMO_CODES - len(codes))
        self.emit(self.order(self.user(), self.when(), m, c.currency, codes))

    @_scene
    def null_optionals(self) -> None:
        """Every optional field null (and an order without its promo codes)."""
        c, m = self.ad()
        p, _ = self.promo()
        t = self.when()
        user = self.user()
        nulls = {"placement": None, "creative_id": None}
        self.emit(self.touch("impression", user, c.campaign_id, t - self.gap(), **nulls))
        self.emit(self.touch("click", user, c.campaign_id, t - self.gap(), **nulls, impression_id=None))
        self.emit(self.touch("promo_view", user, p.campaign_id, t - self.gap(), promo_code=None))
        order = self.order(user, t, m, c.currency)
        del order["promo_codes"]
        self.emit(order)

    @_scene
    def unknown_fields(self) -> None:
        """Fields the contract does not know, some named like another event type's fields (a
        click with a bogus currency, an order with a campaign id), and a payload near 16 KiB."""
        c, m = self.ad()
        other, _ = self.ad()
        t = self.when()
        user = self.user()
        self.emit(
            self.touch(
                "impression",
                user,
                c.campaign_id,
                t - self.gap(),
                schema_version=3,
                context={"ip": "203.0.113.7", "ua": "Mozilla/5.0", "tags": ["a", None, 1.5]},
                amount_minor=1234,
                order_id=f"o-{self.serial()}",
            )
        )
        self.emit(self.touch("click", user, c.campaign_id, t - self.gap(), currency="XXQ", merchant_id=m))
        order = self.emit(
            self.order(
                user,
                t,
                m,
                c.currency,
                campaign_id=other.campaign_id,
                promo_code=f"NOSUCH-{self.serial()}",
                impression_id="none",
                blob="x" * 12_000 if self.rng.random() < 0.5 else None,
            )
        )
        if self.rng.random() < 0.5:
            extra = {"reason": "customer_request", "amount_minor": -1, "merchant_id": m}
            self.emit({**self.cancel(user, order["order_id"], self.clamp(t + self.gap())), **extra})

    @_scene
    def unicode_ids(self) -> None:
        """Ids in other scripts, in decomposed form, with the engine's separators, 128 long."""
        k, style = divmod(self._unicode_scenes, 5)  # each style in turn, k the round
        self._unicode_scenes += 1
        styles = (
            f"{self.cfg.seed}-us\u00e9r-{k}",
            unicodedata.normalize("NFD", f"{self.cfg.seed}-us\u00e9r-{k}"),  # looks the same: another user
            f"{self.cfg.seed}-用户-{k}-🙂",
            f"u|{self.cfg.seed}:o:x:{{tag}}#{k} ",
            f"ü{self.cfg.seed}-{k}-".ljust(MAX_ID_LENGTH, "ü"),
        )
        user = styles[style]
        c, m = self.ad()
        t = self.when()

        def unicode_id(prefix: str) -> str:
            return f"{prefix}-{styles[style]}-{self.serial()}"[-MAX_ID_LENGTH:]

        imp = self.touch("impression", user, c.campaign_id, t - 2 * self.gap(), event_id=unicode_id("ï"))
        self.emit(imp)
        click = self.touch("click", user, c.campaign_id, t - self.gap(), event_id=unicode_id("ç|"))
        click["impression_id"] = imp["event_id"]
        self.emit(click)
        order = self.emit(
            self.order(user, t, m, c.currency, event_id=unicode_id("é#"), order_id=unicode_id("订单"))
        )
        if self.rng.random() < 0.3:
            self.emit(self.cancel(user, order["order_id"], self.clamp(t + self.gap())))

    @_scene
    def same_time_ties(self) -> None:
        """Two clicks at the same millisecond on two campaigns of the order's merchant, and two
        orders at the same millisecond: the event id, then the campaign id, break the tie."""
        if self.shared:
            campaigns = self.rng.choice(self.shared)
            c1, c2 = self.rng.sample(campaigns, k=2)
            m = self.rng.choice(sorted(c1.merchant_ids & c2.merchant_ids))
        else:
            c1, m = self.ad()
            c2 = c1
        t = self.when()
        user = self.user()
        tt = t - self.gap()
        first, second = (
            self.touch("click", user, c1.campaign_id, tt),
            self.touch("click", user, c2.campaign_id, tt),
        )
        self.emit(second, tt)  # the greater event id arrives first
        self.emit(first, tt + self.rng.randint(0, self.cfg.max_transport_delay_ms))
        self.emit(self.order(user, t, m, c1.currency))
        self.emit(self.order(user, t, m, c1.currency))

    @_scene
    def click_orphan(self) -> None:
        """A click naming an impression that does not exist, or another user's."""
        c, m = self.ad()
        t = self.when()
        user = self.user()
        others = [p["event_id"] for _, p in self.touches[:1_000] if p["event_type"] == "impression"]
        imp = self.rng.choice(others) if others and self.rng.random() < 0.5 else f"i-none-{self.serial()}"
        self.emit(self.touch("click", user, c.campaign_id, t - self.gap(), impression_id=imp))
        self.emit(self.order(user, t, m, c.currency))

    @_scene
    def promo_view_foreign_code(self) -> None:
        """A promo view carrying another campaign's code, or no campaign's."""
        c, m = self.promo()
        codes = sorted({code for x in self.catalog for code in x.promo_codes} - set(c.promo_codes))
        code = self.rng.choice(codes) if codes and self.rng.random() < 0.5 else f"NOSUCH-{self.serial()}"
        t = self.when()
        user = self.user()
        self.emit(self.touch("promo_view", user, c.campaign_id, t - self.gap(), promo_code=code))
        self.emit(self.order(user, t, m, c.currency))


#: Every kind of awkward scene, in the order they are dealt.
AWKWARD_KINDS: Final[tuple[str, ...]] = tuple(_SCENES)


def awkward_deliveries(
    config: SyntheticConfig, catalog: Catalog, base: Sequence[tuple[int, dict[str, Any]]]
) -> list[Delivery]:
    """The awkward deliveries of a traffic whose regular deliveries are ``base`` (arrival, payload).

    ``round(config.awkward_rate * len(base))`` scenes, dealt over the kinds in turn (every kind at
    least once), then redelivered at ``config.duplicate_rate`` like the regular traffic.
    """
    kinds = config.awkward_kinds or AWKWARD_KINDS
    scenes = _Scenes(config, catalog, base)
    for i in range(max(len(kinds), round(config.awkward_rate * len(base)))):
        scenes.kind = kinds[i % len(kinds)]
        _SCENES[scenes.kind](scenes)
    out = scenes.out
    for d in list(out):
        if scenes.rng.random() < config.duplicate_rate:
            out.append(
                Delivery(d.arrival_ms + scenes.rng.randint(0, 30_000), d.payload, d.kind, duplicate=True)
            )
    for d in out:
        size = len(json_bytes(d.payload))
        assert size <= MAX_PAYLOAD_BYTES, f"{d.kind}: a payload of {size} bytes"
    return out


def json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


#: The rate ``make demo`` and ``make live`` add awkward traffic at (issue 16: on by default).
DEFAULT_RATE: Final = 0.02
#: The kinds ``make live`` sends: all but the future-bound scenes. An event dated up to the bound
#: ahead of the clock moves its partition's watermark that far, so on-time events behind it are
#: late: real, but not what the live loop checks. (A replay meets each event at its arrival, as
#: landing does, so ``make demo`` and the parity tests send every kind.)
LIVE_KINDS: Final[tuple[str, ...]] = tuple(k for k in AWKWARD_KINDS if not k.startswith("future_"))
