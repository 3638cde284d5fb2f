"""Labelled invalid traffic mixed into ordinary traffic: the truth kept beside it.

Four scenes, each on its own users drawn from the regular ones (``FRAUD_KINDS``):

- ``flooding``: a publisher fires a click on one ad campaign for the user every 15-60 minutes,
  from 2-48 hours before an order the user was going to place anyway (at one of the campaign's
  merchants) to a few hours after it: a flat spread of click-to-order times (AppsFlyer's sign);
- ``injection``: a click on an ad campaign 1-8 s before an order the user was going to place
  anyway (AppsFlyer's spike of click-to-install times in the first seconds);
- ``bots``: impressions and clicks whose ``user_agent`` is a known crawler's (instances the
  ``crawler-user-agents`` package ships with its patterns), on users who later order at the
  campaign's merchant (cookie stuffing);
- ``datacenter``: the same with a browser's user agent from an address in a data-centre range
  (``DATACENTER_RANGES``, written to a file for ``ATTRIBUTION_RULES_IVT_DATACENTER_RANGES``).

With fraud on, every regular touch carries a browser's ``user_agent``, a residential ``ip`` and a
``device_id``, so the list rules meet ordinary traffic too. Orders the scenes add are legitimate
(the user would have ordered anyway); only the scenes' touches are fraudulent. Everything comes
from its own ``random.Random``: the regular traffic's events and times are the same whatever the
fraud rate (their payloads gain the three fields).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from shared_logic.campaigns import Campaign, Catalog, Lever
from shared_logic.timeutil import MS_PER_HOUR

if TYPE_CHECKING:
    from devtools.synthetic import SyntheticConfig

FRAUD_KINDS: Final = ("flooding", "injection", "bots", "datacenter")

#: Data-centre ranges of the scenes (documentation and benchmarking blocks, RFC 5737 and 2544,
#: so no real network is named); the regular traffic's addresses are never in them.
DATACENTER_RANGES: Final = ("192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24")

#: Browsers' user agents for ordinary traffic (what real shoppers send).
BROWSERS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
)
_MIN: Final = 60_000
_SEC: Final = 1_000
TOUCH_TYPES: Final = ("impression", "click", "promo_view")


@dataclass(frozen=True, slots=True)
class FraudDelivery:
    arrival_ms: int
    payload: dict[str, Any]
    kind: str
    fraudulent: bool  # a fraudulent touch (False: an order the user placed anyway)


def crawler_agents() -> list[str]:
    """User agents of known crawlers, from the ``crawler-user-agents`` package's examples."""
    import crawleruseragents

    return sorted({i for e in crawleruseragents.CRAWLER_USER_AGENTS_DATA for i in e.get("instances", [])})


def residential_ip(rng: random.Random) -> str:
    # 73.0.0.0/8 and 100.64.0.0/10 (consumer and carrier-grade NAT blocks): never a scene's range.
    if rng.random() < 0.5:
        return f"73.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return f"100.{rng.randrange(64, 128)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def datacenter_ip(rng: random.Random) -> str:
    a, b, c = rng.choice([(192, 0, 2), (198, 18, rng.randrange(256)), (198, 51, 100), (203, 0, 113)])
    return f"{a}.{b}.{c}.{rng.randrange(1, 255)}"


def dress(payload: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A regular touch with a shopper's agent, address and device."""
    if payload.get("event_type") not in TOUCH_TYPES:
        return payload
    user = str(payload["user_id"])
    return {
        **payload,
        "user_agent": BROWSERS[hash_index(user, len(BROWSERS))],
        "ip": residential_ip(rng),
        "device_id": f"d-{user}",
    }


def hash_index(text: str, n: int) -> int:
    return sum(text.encode()) % n


def fraud_deliveries(
    config: SyntheticConfig, catalog: Catalog, users: Sequence[str], kinds: Sequence[str]
) -> list[FraudDelivery]:
    """The scenes of ``kinds`` on ``config.fraud_rate`` of ``users`` each (at least one)."""
    rng = random.Random(config.seed * 104_729 + 17)
    ads = [c for c in catalog if c.lever is Lever.AD and c.start_ms is None and c.end_ms is None]
    eur = {f"m{i:03d}" for i in range(config.merchants - config.eur_merchants, config.merchants)}
    start, end = config.start_ms, config.end_ms
    agents = crawler_agents()
    out: list[FraudDelivery] = []
    counter = 0

    def eid(prefix: str) -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}-{config.seed}-{counter:07d}"

    def touch(kind: str, etype: str, user: str, c: Campaign, t: int, agent: str, ip: str) -> None:
        payload = {
            "event_id": eid(f"f{kind[:3]}"),
            "event_type": etype,
            "event_time": t,
            "user_id": user,
            "campaign_id": c.campaign_id,
            "user_agent": agent,
            "ip": ip,
            "device_id": f"d-{user}",
        }
        out.append(FraudDelivery(t + rng.randint(0, 2_000), payload, kind, True))

    def order(kind: str, user: str, c: Campaign, t: int) -> None:
        merchant = sorted(c.merchant_ids)[0]
        payload = {
            "event_id": eid("fo"),
            "event_type": "order",
            "event_time": t,
            "user_id": user,
            "order_id": eid("fo-order"),
            "merchant_id": merchant,
            "amount_minor": max(100, int(rng.lognormvariate(8.3, 0.7))),
            "currency": "EUR" if merchant in eur else "USD",
            "promo_codes": [],
        }
        out.append(FraudDelivery(t + rng.randint(0, 2_000), payload, kind, False))

    n = max(1, int(len(users) * config.fraud_rate))
    pool = list(users)
    rng.shuffle(pool)
    for k, kind in enumerate(kinds):
        chosen = (
            pool[k * n : (k + 1) * n] if len(pool) >= (k + 1) * n else rng.sample(pool, min(n, len(pool)))
        )
        for user in chosen:
            c = rng.choice(ads)
            t_order = rng.randint(start + min(48 * MS_PER_HOUR, (end - start) // 2), end - 6 * MS_PER_HOUR)
            shopper = BROWSERS[hash_index(user, len(BROWSERS))]
            if kind == "flooding":
                t = t_order - rng.randint(2 * MS_PER_HOUR, 48 * MS_PER_HOUR)
                stop = t_order + rng.randint(0, 6 * MS_PER_HOUR)
                while t < stop:
                    if start <= t < end and t != t_order:
                        touch(kind, "click", user, c, t, shopper, residential_ip(rng))
                    t += rng.randint(15 * _MIN, 60 * _MIN)
            elif kind == "injection":
                touch(
                    kind,
                    "click",
                    user,
                    c,
                    t_order - rng.randint(1 * _SEC, 8 * _SEC),
                    shopper,
                    residential_ip(rng),
                )
            else:
                agent = rng.choice(agents) if kind == "bots" else shopper
                ip = residential_ip(rng) if kind == "bots" else datacenter_ip(rng)
                for _ in range(rng.randint(1, 4)):
                    t = t_order - rng.randint(10 * _MIN, 20 * MS_PER_HOUR)
                    if t >= start:
                        touch(kind, rng.choice(("impression", "click")), user, c, t, agent, ip)
            order(kind, user, c, t_order)
    return out
