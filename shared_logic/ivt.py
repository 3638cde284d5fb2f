"""Invalid traffic: the rules that keep fake touches from earning orders, one set for both layers.

Each rule gives a verdict with a reason code; the first rule that matches a touch wins, in this
order (``REASONS``):

1. ``bot_user_agent`` (general invalid traffic, MRC): the touch's ``user_agent`` matches a known
   crawler pattern (the list ships with the ``crawler-user-agents`` package; the edge loads it and
   hands the patterns here);
2. ``datacenter_ip`` (general invalid traffic, MRC): the touch's ``ip`` is in a data-centre range
   (a list file the operator replaces, ``ATTRIBUTION_RULES_IVT_DATACENTER_RANGES``);
3. ``click_injection`` (AppsFlyer, Adjust): a click less than ``injection_ms`` before the order
   it would win. AppsFlyer sees injection as a spike of click-to-install times in the first
   3-10 s; a shopper needs longer than that to land, choose and pay;
4. ``click_flooding`` (AppsFlyer's flat click-to-install spread, Adjust's hyper engagement per
   campaign): the click lies in a rolling window of ``flood_window_ms`` holding more than
   ``flood_clicks`` of the user's clicks on its campaign;
5. ``hyper_engagement``: the click lies in a rolling window of ``engagement_window_ms`` holding
   more than ``engagement_clicks`` of the user's clicks on any campaign.

Rules 1-2 are properties of one event: admission applies them (``shared_logic.admission``), so a
touch they enforce on is never stored by the speed layer nor a candidate in the nightly job.
Rules 3-5 look at a click against the order it would win, over the user's clicks the billing
rule is handed (``rules.judge_order``): evidence is the user's clicks at or before the order and
within the click window of the judged click's campaign, what both layers hold for every order
(they keep a user's touches for the longest window plus the allowed lateness), so both reach
the same verdict. A rule is ``off``, ``report`` (the verdict is recorded and counted, the touch
still earns the order) or ``enforce`` (the touch cannot earn the order).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from shared_logic.timeutil import MS_PER_DAY

MS_PER_HOUR: Final = 3_600_000


class Reason(StrEnum):
    """Why a touch is invalid traffic (the reason code every verdict carries)."""

    BOT_USER_AGENT = "bot_user_agent"
    DATACENTER_IP = "datacenter_ip"
    CLICK_INJECTION = "click_injection"
    CLICK_FLOODING = "click_flooding"
    HYPER_ENGAGEMENT = "hyper_engagement"


#: The rules in the order they are tried: the first that matches gives the verdict.
REASONS: Final = tuple(Reason)


class Mode(StrEnum):
    """What a rule does with a touch it matches."""

    OFF = "off"
    REPORT = "report"  # record and count the verdict; the touch still earns
    ENFORCE = "enforce"  # the touch cannot earn


class Outcome(StrEnum):
    """What a verdict did to an order (or, for the admission rules, to a touch)."""

    FLAGGED = "flagged"  # report mode: recorded, nothing changed
    CHANGED = "changed"  # the order went to another touch
    UNATTRIBUTED = "unattributed"  # no touch was left: the order is organic
    REFUSED = "refused"  # admission: the touch was not kept


DEFAULT_INJECTION_MS: Final = 10_000
DEFAULT_FLOOD_CLICKS: Final = 10
DEFAULT_FLOOD_WINDOW_MS: Final = MS_PER_DAY
DEFAULT_ENGAGEMENT_CLICKS: Final = 20
DEFAULT_ENGAGEMENT_WINDOW_MS: Final = MS_PER_HOUR


@dataclass(frozen=True, slots=True)
class IvtRules:
    """One campaign's rules: each rule's mode and thresholds (``IvtPolicy.rules_for``)."""

    bot_user_agent: Mode = Mode.ENFORCE
    datacenter_ip: Mode = Mode.ENFORCE
    click_injection: Mode = Mode.REPORT
    injection_ms: int = DEFAULT_INJECTION_MS
    click_flooding: Mode = Mode.REPORT
    flood_clicks: int = DEFAULT_FLOOD_CLICKS
    flood_window_ms: int = DEFAULT_FLOOD_WINDOW_MS
    hyper_engagement: Mode = Mode.REPORT
    engagement_clicks: int = DEFAULT_ENGAGEMENT_CLICKS
    engagement_window_ms: int = DEFAULT_ENGAGEMENT_WINDOW_MS

    def __post_init__(self) -> None:
        for name in ("injection_ms", "flood_clicks", "engagement_clicks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} = {value!r}: must be a whole number, not negative")
        for name in ("flood_window_ms", "engagement_window_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} = {value!r}: must be a whole number of ms above 0")

    def mode(self, reason: Reason) -> Mode:
        mode: Mode = getattr(self, reason.value)
        return mode

    @property
    def per_order(self) -> bool:
        """Whether a rule judged against an order (injection, flooding, engagement) is on."""
        return any(self.mode(r) is not Mode.OFF for r in PER_ORDER)

    @property
    def per_touch(self) -> bool:
        return any(self.mode(r) is not Mode.OFF for r in PER_TOUCH)


PER_TOUCH: Final = (Reason.BOT_USER_AGENT, Reason.DATACENTER_IP)
PER_ORDER: Final = (Reason.CLICK_INJECTION, Reason.CLICK_FLOODING, Reason.HYPER_ENGAGEMENT)


@dataclass(frozen=True, slots=True)
class IvtPolicy:
    """The invalid-traffic rules: ``defaults`` for every campaign, ``overrides`` per campaign id."""

    defaults: IvtRules = field(default_factory=IvtRules)
    overrides: Mapping[str, IvtRules] = field(default_factory=lambda: MappingProxyType({}))

    def rules_for(self, campaign_id: str) -> IvtRules:
        return self.overrides.get(campaign_id, self.defaults)

    @property
    def per_order(self) -> bool:
        """Whether any campaign has a rule judged against an order on (else the billing rule
        skips judging altogether)."""
        return self.defaults.per_order or any(r.per_order for r in self.overrides.values())


@dataclass(frozen=True, slots=True)
class Flag:
    """A verdict: the rule that matched and what its mode makes of it."""

    reason: Reason
    mode: Mode

    @property
    def enforced(self) -> bool:
        return self.mode is Mode.ENFORCE


# General invalid traffic: lists --------------------------------------------------------------

_CHUNK = 50  # patterns per compiled alternation (Python's re slows on huge alternations)


@dataclass(frozen=True)
class GivtLists:
    """The lists general invalid traffic is judged by, loaded at the edge
    (``storage.ivt_lists.load_givt_lists``): crawler user-agent patterns (regular expressions,
    searched case-sensitively as the list's maintainers test them) and data-centre IP ranges
    (CIDR). Pure: it holds data and matches against it."""

    bot_patterns: tuple[str, ...] = ()
    datacenter_ranges: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        chunks = [
            re.compile("|".join(self.bot_patterns[i : i + _CHUNK]))
            for i in range(0, len(self.bot_patterns), _CHUNK)
        ]
        object.__setattr__(self, "_chunks", chunks)
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for text in self.datacenter_ranges:
            try:
                net = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(f"datacenter range {text!r}: is not an IP network (CIDR)") from None
            spans[net.version].append((int(net.network_address), int(net.broadcast_address)))
        merged = {v: _merge(s) for v, s in spans.items()}
        object.__setattr__(self, "_starts", {v: [a for a, _ in s] for v, s in merged.items()})
        object.__setattr__(self, "_spans", merged)
        object.__setattr__(self, "_bot_cache", {})

    def __reduce__(self) -> tuple[type[GivtLists], tuple[tuple[str, ...], tuple[str, ...]]]:
        # Spark ships the lists to its executors: send the data, compile there.
        return (GivtLists, (self.bot_patterns, self.datacenter_ranges))

    def is_bot(self, user_agent: str | None) -> bool:
        """Whether a user agent matches a crawler pattern (None, no agent: no)."""
        if not user_agent or not self.bot_patterns:
            return False
        cache: dict[str, bool] = self._bot_cache  # type: ignore[attr-defined]  # set in __post_init__
        found = cache.get(user_agent)
        if found is None:
            chunks: list[re.Pattern[str]] = self._chunks  # type: ignore[attr-defined]  # as above
            found = any(p.search(user_agent) for p in chunks)
            if len(cache) > 100_000:  # agents repeat; a flood of unique ones must not grow it forever
                cache.clear()
            cache[user_agent] = found
        return found

    def in_datacenter(self, ip: str | None) -> bool:
        """Whether an address lies in a data-centre range (None or not an address: no)."""
        if not ip or not self.datacenter_ranges:
            return False
        found = _address(ip)
        if found is None:
            return False
        version, n = found
        starts: list[int] = self._starts[version]  # type: ignore[attr-defined]  # set in __post_init__
        spans: list[tuple[int, int]] = self._spans[version]  # type: ignore[attr-defined]  # as above
        i = bisect.bisect_right(starts, n) - 1
        return i >= 0 and spans[i][0] <= n <= spans[i][1]


def _address(ip: str) -> tuple[int, int] | None:
    """(IP version, the address as an integer), or None: ``inet_pton`` is strict and about ten
    times faster than ``ipaddress.ip_address``, which matters once per touch."""
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, ValueError):
        pass
    try:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
    except (OSError, ValueError):
        return None


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def touch_flag(
    campaign_id: str, user_agent: str | None, ip: str | None, policy: IvtPolicy, lists: GivtLists
) -> Flag | None:
    """The verdict of the general (list-based) rules on one touch, or None: a property of the
    event alone, applied by admission in both layers."""
    rules = policy.rules_for(campaign_id)
    if rules.bot_user_agent is not Mode.OFF and lists.is_bot(user_agent):
        return Flag(Reason.BOT_USER_AGENT, rules.bot_user_agent)
    if rules.datacenter_ip is not Mode.OFF and lists.in_datacenter(ip):
        return Flag(Reason.DATACENTER_IP, rules.datacenter_ip)
    return None


# Rules judged against an order ---------------------------------------------------------------


def crowded(times: Sequence[int], window_ms: int, most: int) -> list[bool]:
    """For sorted ``times``: whether each lies in some window ``[a, a + window_ms)`` that holds
    more than ``most`` of the times. A window holding the most times can always start at one of
    them, so two pointers find them all in one pass."""
    n = len(times)
    out = [False] * n
    if n <= most:
        return out
    j = 0
    marked = 0  # every index below it is already marked, or judged unmarked for good
    for i in range(n):
        j = max(j, i)
        while j < n and times[j] < times[i] + window_ms:
            j += 1
        if j - i > most:
            for k in range(max(i, marked), j):
                out[k] = True
            marked = max(marked, j)
    return out


@dataclass(slots=True)
class ClickEvidence:
    """The user's clicks at or before one order (times and campaigns), judged lazily: the billing
    rule asks only about the clicks that would win, best first."""

    order_time_ms: int
    clicks: list[tuple[int, str, str]]  # (time, event id, campaign id), sorted
    policy: IvtPolicy
    _flooded: dict[tuple[str, int], dict[str, bool]] = field(default_factory=dict)
    _engaged: dict[int, dict[tuple[str, str], bool]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, order_time_ms: int, clicks: Iterable[tuple[int, str, str]], policy: IvtPolicy
    ) -> ClickEvidence:
        return cls(order_time_ms, sorted(c for c in clicks if c[0] <= order_time_ms), policy)

    def flag(self, time_ms: int, event_id: str, campaign_id: str, span_ms: int) -> Flag | None:
        """The first per-order rule a click matches, or None. ``span_ms``: the click window of the
        click's campaign, which bounds the evidence (clicks at ``[order - span, order]``)."""
        rules = self.policy.rules_for(campaign_id)
        t = self.order_time_ms
        if rules.click_injection is not Mode.OFF and t - time_ms < rules.injection_ms:
            return Flag(Reason.CLICK_INJECTION, rules.click_injection)
        if rules.click_flooding is not Mode.OFF:
            key = (campaign_id, span_ms)
            flooded = self._flooded.get(key)
            if flooded is None:
                own = [c for c in self.clicks if c[2] == campaign_id and c[0] >= t - span_ms]
                marks = crowded([c[0] for c in own], rules.flood_window_ms, rules.flood_clicks)
                flooded = self._flooded[key] = {c[1]: m for c, m in zip(own, marks, strict=True)}
            if flooded.get(event_id):
                return Flag(Reason.CLICK_FLOODING, rules.click_flooding)
        if rules.hyper_engagement is not Mode.OFF:
            engaged = self._engaged.get(span_ms)
            if engaged is None:
                d = self.policy.defaults
                every = [c for c in self.clicks if c[0] >= t - span_ms]
                marks = crowded([c[0] for c in every], d.engagement_window_ms, d.engagement_clicks)
                engaged = self._engaged[span_ms] = {
                    (c[1], c[2]): m for c, m in zip(every, marks, strict=True)
                }
            if engaged.get((event_id, campaign_id)):
                return Flag(Reason.HYPER_ENGAGEMENT, rules.hyper_engagement)
        return None


# The whole day's shape of a campaign's click-to-order delays (a report, never a charge) ----------

#: Where the delay buckets of ``DelayShape`` end (ms), from AppsFlyer's click-to-install anchors:
#: injection is a spike in the first 3-10 s, legitimate traffic converts mostly within an hour,
#: flooding spreads flat over 2-24 h. The last bucket holds everything from 24 h on.
SHAPE_BOUNDS_MS: Final = (10_000, MS_PER_HOUR, 2 * MS_PER_HOUR, 24 * MS_PER_HOUR)
SHAPE_BUCKETS: Final = ("under_10s", "s10_to_1h", "h1_to_2h", "h2_to_24h", "over_24h")

DEFAULT_SHAPE_MIN_ORDERS: Final = 30
DEFAULT_SPIKE_SHARE: Final = 0.05
DEFAULT_FLAT_SHARE: Final = 0.6
DEFAULT_FLAT_HOUR_SHARE: Final = 0.25


class Shape(StrEnum):
    """What a campaign's day of click-to-order delays looks like, when it looks like fraud."""

    INJECTION_SPIKE = "injection_spike"  # many orders within 10 s of their click
    FLAT_SPREAD = "flat_spread"  # few within an hour, most spread over 2-24 h


@dataclass(frozen=True, slots=True)
class ShapeRules:
    """When the nightly job's delay report flags a campaign (``ATTRIBUTION_RULES_IVT_SHAPE_*``):
    at least ``min_orders`` orders won by a click; ``spike_share`` or more of them under 10 s
    (legitimate shoppers need longer to land, choose and pay); or under ``flat_hour_share``
    within an hour and ``flat_share`` or more in 2-24 h (AppsFlyer: legitimate traffic converts
    about 75% within an hour)."""

    min_orders: int = DEFAULT_SHAPE_MIN_ORDERS
    spike_share: float = DEFAULT_SPIKE_SHARE
    flat_share: float = DEFAULT_FLAT_SHARE
    flat_hour_share: float = DEFAULT_FLAT_HOUR_SHARE

    def __post_init__(self) -> None:
        if not isinstance(self.min_orders, int) or self.min_orders < 1:
            raise ValueError(f"min_orders = {self.min_orders!r}: must be a whole number above 0")
        for name in ("spike_share", "flat_share", "flat_hour_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} = {value!r}: must be a share between 0 and 1")


def delay_bucket(delay_ms: int) -> int:
    """The index in ``SHAPE_BUCKETS`` of a click-to-order delay (ms, not negative)."""
    return bisect.bisect_right(SHAPE_BOUNDS_MS, delay_ms)


def shape_flag(counts: Sequence[int], rules: ShapeRules) -> Shape | None:
    """The flag of a campaign's day from its orders per ``SHAPE_BUCKETS``, or None (too few
    orders, or nothing odd). A spike is tried first: injected clicks also thin the first hour."""
    if len(counts) != len(SHAPE_BUCKETS):
        raise ValueError(f"counts = {list(counts)!r}: one per bucket of {SHAPE_BUCKETS}")
    n = sum(counts)
    if n < rules.min_orders:
        return None
    if counts[0] / n >= rules.spike_share:  # shares as divided (3 / 30 >= 0.1; 0.1 * 30 > 3)
        return Shape.INJECTION_SPIKE
    if (counts[0] + counts[1]) / n < rules.flat_hour_share and counts[3] / n >= rules.flat_share:
        return Shape.FLAT_SPREAD
    return None
