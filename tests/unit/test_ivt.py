"""The invalid-traffic rules (``shared_logic.ivt`` and ``rules.judge_order``) against an oracle
written here from the README's definitions, with Hypothesis.

The oracle shares nothing with the code under test but the types: a click is flooded when some
window ``[b, b + W)`` starting at one of the user's clicks on its campaign (within the click
window before the order) holds more than N of them, found by brute force; the decision under
``enforce`` is the greatest candidate by rank whose first matching rule is not enforced.

Mutants these tests kill (each tried once): ``crowded`` comparing ``<=`` instead of ``<`` at the
window's end (``test_crowded_equals_brute_force``); ``judge_order`` taking evidence from clicks
after the order (``test_clicks_after_the_order_change_nothing``); the injection rule using ``<=``
(``test_each_rule_in_turn_and_the_first_match_wins``); report mode dropping the flagged touch
(``test_report_mode_never_changes_a_decision``).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import asdict, replace
from pathlib import Path
from types import MappingProxyType

import crawleruseragents
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_logic import AttributionPolicy, Catalog, Order, Touch, TouchKind, Windows
from shared_logic.admission import traffic_flag
from shared_logic.contract import IvtRow, IvtSummary, ivt_touch_row, summarize_ivt
from shared_logic.errors import InvalidEvent, InvalidSetting
from shared_logic.events import Click, parse_event
from shared_logic.identity import digest, digest_of
from shared_logic.ivt import (
    REASONS,
    Flag,
    GivtLists,
    IvtPolicy,
    IvtRules,
    Mode,
    Outcome,
    Reason,
    crowded,
)
from shared_logic.rules import _rank, eligible_campaigns, judge_order, touch_counts
from shared_logic.settings import Settings
from storage.ivt_lists import load_givt_lists, read_ranges
from tests.factories import HOUR, MIN, T0, campaign, catalog, order

pytestmark = pytest.mark.unit

SEC = 1_000
CAT = catalog(
    campaign("a"), campaign("b", windows={"click_ms": 86_400_000, "view_ms": 86_400_000}), campaign("c")
)


def _rules(mode: Mode, **over: int) -> IvtRules:
    return IvtRules(
        click_injection=mode,
        click_flooding=mode,
        hyper_engagement=mode,
        injection_ms=over.get("injection_ms", 10 * SEC),
        flood_clicks=over.get("flood_clicks", 3),
        flood_window_ms=over.get("flood_window_ms", HOUR),
        engagement_clicks=over.get("engagement_clicks", 6),
        engagement_window_ms=over.get("engagement_window_ms", 10 * MIN),
    )


def _policy(rules: IvtRules, overrides: dict[str, IvtRules] | None = None) -> AttributionPolicy:
    return AttributionPolicy(ivt=IvtPolicy(rules, MappingProxyType(overrides or {})))


OFF = _policy(_rules(Mode.OFF))


# crowded ------------------------------------------------------------------------------------


def _crowded_oracle(times: list[int], window: int, most: int) -> list[bool]:
    return [
        any(b <= x < b + window and sum(b <= y < b + window for y in times) > most for b in times)
        for x in times
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 60), max_size=25),
    st.integers(1, 20),
    st.integers(0, 6),
)
def test_crowded_equals_brute_force(times: list[int], window: int, most: int) -> None:
    times.sort()
    assert crowded(times, window, most) == _crowded_oracle(times, window, most)


def test_crowded_marks_the_whole_burst_and_nothing_else() -> None:
    times = [0, 100, 5_000, 5_001, 5_002, 5_003, 20_000]
    assert crowded(times, 1_000, 3) == [False, False, True, True, True, True, False]


# judge_order against an oracle ---------------------------------------------------------------

touches_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([TouchKind.CLICK, TouchKind.CLICK, TouchKind.VIEW]),
        # seconds before the order: many in the last minute and the last hour, some after it
        st.one_of(st.integers(-30, 60), st.integers(-30, 3_600), st.integers(0, 3 * 86_400)),
    ),
    max_size=30,
)


def _touches(spec: list[tuple[str, TouchKind, int]]) -> list[Touch]:
    return [Touch(f"e{i:02d}", "u1", cid, kind, T0 - s * SEC) for i, (cid, kind, s) in enumerate(spec)]


def _oracle_flag(
    c: Touch, touches: list[Touch], t: int, rules: IvtRules, defaults: IvtRules, span: int
) -> Reason | None:
    """The first rule a click matches, from the README's words."""
    if rules.click_injection is not Mode.OFF and t - c.time_ms < rules.injection_ms:
        return Reason.CLICK_INJECTION
    clicks = [x for x in touches if x.kind is TouchKind.CLICK and t - span <= x.time_ms <= t]
    own = sorted(x.time_ms for x in clicks if x.campaign_id == c.campaign_id)
    if (
        rules.click_flooding is not Mode.OFF
        and _crowded_oracle(own, rules.flood_window_ms, rules.flood_clicks)[own.index(c.time_ms)]
    ):
        return Reason.CLICK_FLOODING
    every = sorted(x.time_ms for x in clicks)
    if (
        rules.hyper_engagement is not Mode.OFF
        and _crowded_oracle(every, defaults.engagement_window_ms, defaults.engagement_clicks)[
            every.index(c.time_ms)
        ]
    ):
        return Reason.HYPER_ENGAGEMENT
    return None


def _oracle(
    o: Order, touches: list[Touch], cat: Catalog, policy: AttributionPolicy
) -> tuple[str | None, Reason | None]:
    """(winning touch id, reason on the would-be winner) under the policy."""
    eligible = eligible_campaigns(o, cat)
    t = o.event_time
    cands = sorted((x for x in touches if touch_counts(x, eligible, policy, t)), key=_rank, reverse=True)
    first: Reason | None = None
    for i, c in enumerate(cands):
        reason = None
        if c.kind is TouchKind.CLICK:
            rules = policy.ivt.rules_for(c.campaign_id)
            span = policy.windows_for(eligible[c.campaign_id]).click_ms
            reason = _oracle_flag(c, touches, t, rules, policy.ivt.defaults, span)
            if i == 0:
                first = reason
            if reason is not None and rules.mode(reason) is Mode.ENFORCE:
                continue
        return c.event_id, first
    return None, first


def _distinct_times(spec: list[tuple[str, TouchKind, int]]) -> bool:
    # The oracle looks clicks up by time: keep click times distinct.
    clicks = [s for _, k, s in spec if k is TouchKind.CLICK]
    return len(clicks) == len(set(clicks))


@settings(max_examples=400, deadline=None)
@given(touches_st, st.sampled_from([Mode.REPORT, Mode.ENFORCE]))
def test_enforced_decisions_equal_the_oracle(spec: list[tuple[str, TouchKind, int]], mode: Mode) -> None:
    if not _distinct_times(spec):
        return
    touches = _touches(spec)
    policy = _policy(_rules(mode), {"c": _rules(Mode.OFF)})
    judged = judge_order(order(), touches, CAT, policy)
    winner, reason = _oracle(order(), touches, CAT, policy)
    assert (judged.decision.touch_event_id if judged.decision else None) == winner
    assert (judged.verdict.reason if judged.verdict else None) == reason


@settings(max_examples=300, deadline=None)
@given(touches_st)
def test_report_mode_never_changes_a_decision(spec: list[tuple[str, TouchKind, int]]) -> None:
    touches = _touches(spec)
    reported = judge_order(order(), touches, CAT, _policy(_rules(Mode.REPORT)))
    off = judge_order(order(), touches, CAT, OFF)
    assert reported.decision == off.decision
    assert off.verdict is None
    if reported.verdict is not None:
        assert reported.verdict.outcome is Outcome.FLAGGED
        assert reported.verdict.avoided_minor == 0
        assert off.decision is not None
        assert reported.verdict.touch_event_id == off.decision.touch_event_id


@settings(max_examples=300, deadline=None)
@given(touches_st)
def test_an_enforced_verdict_says_what_it_did(spec: list[tuple[str, TouchKind, int]]) -> None:
    touches = _touches(spec)
    judged = judge_order(order(), touches, CAT, _policy(_rules(Mode.ENFORCE)))
    unruled = judge_order(order(), touches, CAT, OFF).decision
    v = judged.verdict
    if v is None:
        assert judged.decision == unruled
        return
    assert unruled is not None
    assert v.touch_event_id == unruled.touch_event_id
    assert v.campaign_id == unruled.campaign_id
    assert v.avoided_minor == unruled.price_minor
    if v.outcome is Outcome.UNATTRIBUTED:
        assert judged.decision is None
    else:
        assert v.outcome is Outcome.CHANGED
        assert judged.decision is not None
        assert judged.decision.touch_event_id != v.touch_event_id


@settings(max_examples=200, deadline=None)
@given(touches_st, st.randoms(use_true_random=False), st.sampled_from([Mode.REPORT, Mode.ENFORCE]))
def test_the_judgement_does_not_depend_on_the_order_of_touches(
    spec: list[tuple[str, TouchKind, int]], rnd: random.Random, mode: Mode
) -> None:
    touches = _touches(spec)
    policy = _policy(_rules(mode))
    shuffled = touches[:]
    rnd.shuffle(shuffled)
    assert judge_order(order(), touches, CAT, policy) == judge_order(order(), shuffled, CAT, policy)


@settings(max_examples=200, deadline=None)
@given(touches_st, st.lists(st.integers(1, 3_600), max_size=15))
def test_clicks_after_the_order_change_nothing(
    spec: list[tuple[str, TouchKind, int]], after: list[int]
) -> None:
    """Evidence is limited to events at or before the order: what both layers hold at its release."""
    touches = [x for x in _touches(spec) if x.time_ms <= T0]
    later = [Touch(f"z{i}", "u1", "a", TouchKind.CLICK, T0 + s * SEC) for i, s in enumerate(after)]
    policy = _policy(_rules(Mode.ENFORCE))
    assert judge_order(order(), touches + later, CAT, policy) == judge_order(order(), touches, CAT, policy)


def test_each_rule_in_turn_and_the_first_match_wins() -> None:
    policy = _policy(_rules(Mode.ENFORCE))
    honest = Touch("h", "u1", "a", TouchKind.CLICK, T0 - 3 * HOUR)
    injected = Touch("i", "u1", "b", TouchKind.CLICK, T0 - 2 * SEC)
    v = judge_order(order(), [honest, injected], CAT, policy)
    assert v.decision is not None
    assert v.decision.touch_event_id == "h"
    assert v.verdict is not None
    assert (v.verdict.reason, v.verdict.outcome) == (
        Reason.CLICK_INJECTION,
        Outcome.CHANGED,
    )
    # exactly injection_ms before the order is not "less than": valid
    edge = Touch("e", "u1", "b", TouchKind.CLICK, T0 - 10 * SEC)
    v = judge_order(order(), [honest, edge], CAT, policy)
    assert v.verdict is None
    assert v.decision is not None
    assert v.decision.touch_event_id == "e"
    # four clicks on one campaign within the hour: flooded (more than 3), even the first
    flood = [Touch(f"f{i}", "u1", "b", TouchKind.CLICK, T0 - 50 * MIN + i * MIN) for i in range(4)]
    v = judge_order(order(), [honest, *flood], CAT, policy)
    assert v.verdict is not None
    assert v.verdict.reason is Reason.CLICK_FLOODING
    assert v.decision is not None
    assert v.decision.touch_event_id == "h"
    # the last flooding click also injected: injection is tried first
    v = judge_order(order(), [*flood, Touch("f9", "u1", "b", TouchKind.CLICK, T0 - SEC)], CAT, policy)
    assert v.verdict is not None
    assert v.verdict.reason is Reason.CLICK_INJECTION
    assert v.decision is None
    assert v.verdict.outcome is Outcome.UNATTRIBUTED
    # seven clicks across campaigns in ten minutes: hyper engagement (more than 6), none flooded
    spread = [Touch(f"s{i}", "u1", "abc"[i % 3], TouchKind.CLICK, T0 - 20 * MIN + i * MIN) for i in range(7)]
    v = judge_order(order(), spread, CAT, policy)
    assert v.verdict is not None
    assert v.verdict.reason is Reason.HYPER_ENGAGEMENT


def test_a_per_campaign_override_applies_to_its_clicks_only() -> None:
    policy = _policy(_rules(Mode.OFF), {"b": replace(_rules(Mode.ENFORCE), injection_ms=MIN)})
    a = Touch("x", "u1", "a", TouchKind.CLICK, T0 - 30 * SEC)
    b = Touch("y", "u1", "b", TouchKind.CLICK, T0 - 20 * SEC)
    judged = judge_order(order(), [a, b], CAT, policy)
    assert judged.decision is not None
    assert judged.decision.touch_event_id == "x"
    assert judged.verdict is not None
    assert judged.verdict.campaign_id == "b"


def test_flooding_evidence_ends_at_the_campaigns_click_window() -> None:
    """Campaign b's click window is one day: its clicks before that are no evidence."""
    policy = _policy(_rules(Mode.ENFORCE, flood_window_ms=3 * 86_400_000))
    old = [Touch(f"o{i}", "u1", "b", TouchKind.CLICK, T0 - 2 * 86_400_000 + i * MIN) for i in range(5)]
    recent = Touch("r", "u1", "b", TouchKind.CLICK, T0 - HOUR)
    judged = judge_order(order(), [*old, recent], CAT, policy)
    assert judged.verdict is None
    assert judged.decision is not None
    assert judged.decision.touch_event_id == "r"


# General invalid traffic ----------------------------------------------------------------------

LISTS = GivtLists(
    tuple(e["pattern"] for e in crawleruseragents.CRAWLER_USER_AGENTS_DATA),
    ("10.0.0.0/8", "192.0.2.0/24", "192.0.3.0/24", "2001:db8::/32"),
)
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


def test_known_crawler_instances_are_bots_and_a_browser_is_not() -> None:
    instances = [i for e in crawleruseragents.CRAWLER_USER_AGENTS_DATA for i in e.get("instances", [])][::7]
    assert len(instances) > 100
    for agent in instances:
        assert LISTS.is_bot(agent) == crawleruseragents.is_crawler(agent), agent
    assert sum(LISTS.is_bot(a) for a in instances) >= 0.95 * len(instances)
    assert not LISTS.is_bot(BROWSER)
    assert not LISTS.is_bot(None)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_datacenter_ranges_equal_ipaddress(n: int) -> None:
    addr = ipaddress.ip_address(n)
    expected = any(addr in ipaddress.ip_network(r) for r in LISTS.datacenter_ranges if ":" not in r)
    assert LISTS.in_datacenter(str(addr)) == expected


def test_datacenter_edges_ipv6_and_nonsense() -> None:
    assert LISTS.in_datacenter("192.0.2.0")
    assert LISTS.in_datacenter("192.0.3.255")
    assert not LISTS.in_datacenter("192.0.4.0")
    assert not LISTS.in_datacenter("192.0.1.255")
    assert LISTS.in_datacenter("2001:db8::1")
    assert not LISTS.in_datacenter("2001:db9::1")
    assert not LISTS.in_datacenter("not an ip")
    assert not LISTS.in_datacenter(None)
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        GivtLists((), ("10.0.0.0/33",))


def _click(**over: str) -> Click:
    event = parse_event(
        {
            "event_id": "c1",
            "event_type": "click",
            "event_time": T0,
            "user_id": "u1",
            "campaign_id": "a",
            **over,
        }
    )
    assert isinstance(event, Click)
    return event


def test_admission_flags_bots_first_then_datacenter_with_its_mode() -> None:
    ivt = IvtPolicy(IvtRules(), MappingProxyType({"b": IvtRules(bot_user_agent=Mode.REPORT)}))
    bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    flag = traffic_flag(_click(user_agent=bot, ip="10.1.2.3"), ivt, LISTS)
    assert flag is not None
    assert (flag.reason, flag.mode) == (Reason.BOT_USER_AGENT, Mode.ENFORCE)
    flag = traffic_flag(_click(user_agent=BROWSER, ip="10.1.2.3"), ivt, LISTS)
    assert flag is not None
    assert flag.reason is Reason.DATACENTER_IP
    flag = traffic_flag(_click(user_agent=bot, campaign_id="b"), ivt, LISTS)
    assert flag is not None
    assert flag.mode is Mode.REPORT
    assert not flag.enforced
    assert traffic_flag(_click(user_agent=BROWSER, ip="8.8.8.8"), ivt, LISTS) is None
    off = IvtPolicy(IvtRules(bot_user_agent=Mode.OFF, datacenter_ip=Mode.OFF))
    assert traffic_flag(_click(user_agent=bot, ip="10.1.2.3"), off, LISTS) is None


def test_traffic_fields_parse_and_keep_old_digests() -> None:
    plain = _click()
    with_fields = _click(ip="203.0.113.9", user_agent=BROWSER, device_id="d1")
    assert (with_fields.ip, with_fields.user_agent, with_fields.device_id) == ("203.0.113.9", BROWSER, "d1")
    assert digest(with_fields) != digest(plain)
    # absent traffic fields leave the digest of the wire form the events had before them
    wire = {
        "event_id": "c1",
        "event_time": T0,
        "user_id": "u1",
        "campaign_id": "a",
        "placement": None,
        "creative_id": None,
        "impression_id": None,
        "event_type": "click",
    }
    assert digest(plain) == digest_of(wire)
    with pytest.raises(InvalidEvent) as err:
        _click(user_agent="x" * 2000)
    assert (err.value.field, err.value.rule) == ("user_agent", "must be at most 1024 characters")


def test_settings_build_the_policy_with_overrides() -> None:
    s = Settings().replace(
        rules_ivt_click_flooding="enforce",
        rules_ivt_overrides={"c1": {"click_injection": "enforce", "injection_ms": 30_000}},
    )
    ivt = s.rules.policy().ivt
    assert ivt.defaults.click_flooding is Mode.ENFORCE
    assert ivt.defaults.click_injection is Mode.REPORT
    c1 = ivt.rules_for("c1")
    assert (c1.click_injection, c1.injection_ms, c1.click_flooding) == (Mode.ENFORCE, 30_000, Mode.ENFORCE)
    assert ivt.rules_for("other") is ivt.defaults
    assert [r.value for r in REASONS] == [
        "bot_user_agent",
        "datacenter_ip",
        "click_injection",
        "click_flooding",
        "hyper_engagement",
    ]


def test_windows_override_is_the_evidence_span() -> None:
    """A per-campaign click-window override in the policy also bounds that campaign's evidence."""
    policy = replace(
        _policy(_rules(Mode.ENFORCE, flood_window_ms=3 * 86_400_000)),
        overrides=MappingProxyType({"a": Windows(click_ms=HOUR, view_ms=HOUR)}),
    )
    old = [Touch(f"o{i}", "u1", "a", TouchKind.CLICK, T0 - 2 * HOUR + i * MIN) for i in range(5)]
    recent = Touch("r", "u1", "a", TouchKind.CLICK, T0 - 30 * MIN)
    judged = judge_order(order(), [*old, recent], CAT, policy)
    assert judged.verdict is None
    assert judged.decision is not None


def test_the_ranges_file_is_read_and_a_bad_line_is_named(tmp_path: Path) -> None:
    good = tmp_path / "dc.txt"
    good.write_text("# cloud ranges\n10.0.0.0/8  # a comment\n\n2001:db8::/32\n")
    assert read_ranges(good) == ("10.0.0.0/8", "2001:db8::/32")
    bad = tmp_path / "bad.txt"
    bad.write_text("10.0.0.0/8\nnot-a-range\n")
    with pytest.raises(InvalidSetting) as err:
        read_ranges(bad)
    assert err.value.field == "rules.ivt_datacenter_ranges"
    assert err.value.value == f"{bad}:2: not-a-range"
    with pytest.raises(InvalidSetting, match="cannot be read"):
        read_ranges(tmp_path / "missing.txt")


def test_the_lists_loaded_follow_the_settings(tmp_path: Path) -> None:
    ranges = tmp_path / "dc.txt"
    ranges.write_text("192.0.2.0/24\n")
    rules = Settings().replace(rules_ivt_datacenter_ranges=str(ranges)).rules
    lists = load_givt_lists(rules)
    assert len(lists.bot_patterns) == len(crawleruseragents.CRAWLER_USER_AGENTS_DATA)
    assert lists.datacenter_ranges == ("192.0.2.0/24",)
    off = Settings().replace(rules_ivt_bot_user_agent="off").rules
    assert load_givt_lists(off).bot_patterns == ()
    assert load_givt_lists(off).datacenter_ranges == ()


def test_a_days_verdicts_sum_per_campaign_and_reason() -> None:
    rows = [
        asdict(ivt_touch_row("a", "u1", "t1", T0, Flag(Reason.BOT_USER_AGENT, Mode.ENFORCE))),
        asdict(ivt_touch_row("a", "u2", "t2", T0, Flag(Reason.BOT_USER_AGENT, Mode.REPORT))),
        asdict(
            IvtRow("order", "b", "click_injection", "enforce", "changed", "u1", "c1", T0, "o1", 150, "USD")
        ),
        asdict(
            IvtRow(
                "order", "b", "click_injection", "enforce", "unattributed", "u3", "c2", T0, "o2", 50, "USD"
            )
        ),
        asdict(IvtRow("order", "b", "click_injection", "report", "flagged", "u4", "c3", T0, "o3", 0, "USD")),
    ]
    got = summarize_ivt("2026-11-01", rows)
    assert got == [
        IvtSummary("2026-11-01", "a", "bot_user_agent", touches=2, touches_refused=1),
        IvtSummary(
            "2026-11-01",
            "b",
            "click_injection",
            touches=3,
            orders_changed=1,
            orders_unattributed=1,
            orders_flagged=1,
            avoided_minor=200,
            currency="USD",
        ),
    ]
