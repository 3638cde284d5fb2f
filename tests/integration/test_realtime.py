"""The speed layer against a real redis-server: parity, idempotence, caps, dead letters."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import astuple
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from devtools.synthetic import SyntheticConfig, generate
from realtime.budget import BudgetReader, UnknownCampaign
from realtime.client import connect
from realtime.deadletters import MemoryDeadLetters, RedisDeadLetters
from realtime.engine import SpeedLayer
from realtime.keys import Keys
from realtime.ledger import read_stream
from realtime.replay import replay
from shared_logic import AttributionPolicy, Catalog, parse_event
from shared_logic.settings import KeySettings, RedisSettings, Settings
from shared_logic.settlement import LedgerEntry, settle_events
from tests.factories import HOUR, MIN, T0, campaign, promo
from tests.helpers import redis_snapshot, usable_touches

pytestmark = pytest.mark.integration

TRAFFIC = SyntheticConfig(users=1_500, days=3, duplicate_rate=0.03, malformed_rate=0.005, cancel_rate=0.15)


def _settings(url: str, **over: Any) -> Settings:
    return Settings().replace(redis_url=url, keys_user_buckets=64, **over)


def _ledger_key(e: LedgerEntry) -> tuple[Any, ...]:
    return astuple(e)


async def _engine(
    url: str, catalog: Catalog, source: Any = None, sources: Any = None, **over: Any
) -> SpeedLayer:
    where = {"source": source, "sources": sources} if source is not None else {}
    engine = SpeedLayer(
        connect(RedisSettings(url=url)), catalog, _settings(url, **over), MemoryDeadLetters(), **where
    )
    await engine.start()
    return engine


async def _feed(engine: SpeedLayer, values: list[Any], chunk: int = 700) -> None:
    for i in range(0, len(values), chunk):
        await engine.process(values[i : i + chunk])
    await engine.drain()


async def _snapshot(url: str, end_ms: int) -> dict[str, Any]:
    """Every spend, stats and claim key with its value, the touches an order after ``end_ms`` may
    use, and the ledger without stream ids (not the consumers' positions: a replay of a prefix
    moves those, and only those)."""
    state = usable_touches(await redis_snapshot(url, all_touches=True), end_ms)
    state.pop("attr:clocks", None)
    return state


def test_same_decisions_and_charges_as_the_reference(speed_redis_url: str) -> None:
    """Traffic that arrives within the allowed lateness: the speed layer equals the one-process reference."""
    traffic = generate(TRAFFIC)
    values = [e.payload for e in traffic.events]

    async def run() -> list[LedgerEntry]:
        engine = await _engine(speed_redis_url, traffic.catalog)
        await _feed(engine, values)
        entries = await read_stream(engine.redis, engine.keys)
        await engine.redis.aclose()
        return entries

    ledger = asyncio.run(run())
    events = [parse_event(p) for p in traffic.valid_payloads()]
    book, decisions = settle_events(events, traffic.catalog, AttributionPolicy())
    assert sorted(map(_ledger_key, ledger)) == sorted(map(_ledger_key, book.ledger))
    kinds = Counter(e.kind for e in ledger)
    assert kinds["charge"] > 100
    assert kinds["refund"] > 5
    assert any(e.capped for e in ledger)
    assert sum(d is None for d in decisions.values()) > 10  # organic orders exist and are not charged


def test_replaying_everything_or_a_prefix_again_changes_nothing(speed_redis_url: str) -> None:
    traffic = generate(SyntheticConfig(users=600, days=2, cancel_rate=0.2))
    values = [e.payload for e in traffic.events]

    async def run() -> None:
        engine = await _engine(speed_redis_url, traffic.catalog)
        await _feed(engine, values)
        # One partition (``process``): its watermark, hence the trim bound, may pass the last touch.
        end = max(parse_event(p).event_time for p in traffic.valid_payloads())
        first = await _snapshot(speed_redis_url, end)
        assert any(k.endswith(":ledger") for k in first)
        # A fresh worker (empty memory) sees the whole stream again, then a prefix again.
        for again in (values, values[: len(values) // 3]):
            other = await _engine(speed_redis_url, traffic.catalog)
            await _feed(other, again, chunk=311)
            assert await _snapshot(speed_redis_url, end) == first
            await other.redis.aclose()
        await engine.redis.aclose()

    asyncio.run(run())


def _tight_catalog() -> Catalog:
    return Catalog(
        [
            campaign("ad1", merchant_ids=["m1"], budget={"daily_minor": 250, "lifetime_minor": 400}),
            campaign("ad3", merchant_ids=["m1"], budget={"daily_minor": 150}),
            campaign(
                "ad2",
                merchant_ids=["m1", "m2"],
                pricing={"model": "bps", "bps": 900},
                budget={"daily_minor": 700, "timezone": "America/New_York"},
            ),
            promo("pr1", codes=("SAVE",), merchant_ids=["m2"], budget={"lifetime_minor": 300}),
        ]
    )


def _event_strategy() -> st.SearchStrategy[list[dict[str, Any]]]:
    # Touches come mostly before orders and campaigns share merchants, so caps bind often.
    user = st.sampled_from(["u1", "u2"])
    touch = st.builds(
        lambda kind, cid, u, t: {"event_type": kind, "campaign_id": cid, "user_id": u, "event_time": t},
        st.sampled_from(["impression", "click"]),
        st.sampled_from(["ad1", "ad2", "ad3"]),
        user,
        st.integers(T0, T0 + 4 * HOUR),
    )
    time = st.integers(T0 + HOUR, T0 + 30 * HOUR)
    order = st.builds(
        lambda u, t, m, amount, codes, cancel: {
            "event_type": "order",
            "user_id": u,
            "event_time": t,
            "merchant_id": m,
            "amount_minor": amount,
            "currency": "USD",
            "promo_codes": codes,
            "_cancel": cancel,
        },
        user,
        time,
        st.sampled_from(["m1", "m2"]),
        st.integers(0, 5_000),
        st.sampled_from([[], [], ["SAVE"]]),
        # Cancels soon after, a day or two after (outside a zero-day horizon) or days before their
        # order (before its look-back: they count for nothing either).
        st.one_of(
            st.none(),
            st.integers(0, 3 * HOUR),
            st.integers(20 * HOUR, 50 * HOUR),
            st.integers(-12 * 24 * HOUR, -7 * 24 * HOUR),
        ),
    )
    return st.lists(st.one_of(touch, order), min_size=1, max_size=50)


def _materialise(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give events ids, turn ``_cancel`` offsets into cancel events; sort by event time (arrival)."""
    out = []
    for i, e in enumerate(raw):
        e = dict(e)
        cancel = e.pop("_cancel", None)
        e["event_id"] = f"e{i}"
        if e["event_type"] == "order":
            e["order_id"] = f"o{i}"
            if cancel is not None:
                out.append(
                    {
                        "event_type": "order_cancel",
                        "event_id": f"x{i}",
                        "user_id": e["user_id"],
                        "order_id": f"o{i}",
                        "event_time": e["event_time"] + cancel,
                    }
                )
        out.append(e)
    return sorted(out, key=lambda e: (e["event_time"], e["event_id"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_event_strategy(), split=st.randoms(use_true_random=False), chunk=st.integers(1, 9))
def test_two_workers_on_interleaved_events_never_pass_a_cap_or_charge_twice(
    redis_url: str, raw: list[dict[str, Any]], split: random.Random, chunk: int
) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    catalog = _tight_catalog()
    values = _materialise(raw)
    a_vals = [v for v in values if split.random() < 0.5]
    b_vals = [v for v in values if v not in a_vals]

    # Both workers see every event eventually (a redelivery after a rebalance), in their own chunks.
    async def run() -> list[LedgerEntry]:
        sources = [("a", 0), ("b", 0)]
        a = await _engine(redis_url, catalog, source=sources[0], sources=sources)
        b = await _engine(redis_url, catalog, source=sources[1], sources=sources)
        for i in range(0, max(len(a_vals), len(b_vals)), chunk):
            await asyncio.gather(a.process(a_vals[i : i + chunk]), b.process(b_vals[i : i + chunk]))
        await asyncio.gather(a.process(b_vals), b.process(a_vals))
        await asyncio.gather(a.drain(), b.drain())
        await a.drain()  # both at the end of time now: whatever one left below the other's bound settles
        entries = await read_stream(a.redis, a.keys)
        await a.redis.aclose()
        await b.redis.aclose()
        return entries

    ledger = asyncio.run(run())
    charges = Counter(e.order_id for e in ledger if e.kind in ("charge", "cancelled"))
    assert all(n == 1 for n in charges.values()), charges
    refunds = Counter(e.order_id for e in ledger if e.kind == "refund")
    assert all(n == 1 for n in refunds.values())
    day_spend: Counter[tuple[str, str]] = Counter()
    life_spend: Counter[str] = Counter()
    for e in ledger:
        day_spend[(e.campaign_id, e.budget_day)] += e.charge_minor
        life_spend[e.campaign_id] += e.charge_minor
    for (cid, _), spent in day_spend.items():
        cap = catalog.get(cid).budget.daily_minor  # type: ignore[union-attr]
        assert cap is None or 0 <= spent <= cap
    for cid, spent in life_spend.items():
        cap = catalog.get(cid).budget.lifetime_minor  # type: ignore[union-attr]
        assert cap is None or 0 <= spent <= cap


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=_event_strategy(), chunk=st.integers(1, 12))
def test_lua_settlement_equals_the_python_specification(
    redis_url: str, raw: list[dict[str, Any]], chunk: int
) -> None:
    """Random orders, cancels and tight caps, any batching: Redis ledger == ChargeBook ledger."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    catalog = _tight_catalog()
    values = _materialise(raw)

    async def run() -> list[LedgerEntry]:
        engine = await _engine(redis_url, catalog, rules_cancel_horizon_days=0)
        await _feed(engine, values, chunk=chunk)
        entries = await read_stream(engine.redis, engine.keys)
        await engine.redis.aclose()
        return entries

    ledger = asyncio.run(run())
    policy = AttributionPolicy(cancel_horizon_days=0)
    book, _ = settle_events([parse_event(v) for v in values], catalog, policy)
    # Each budget shard's stream is in settlement order; a campaign's entries all sit in one shard
    # (caps bind in that order), and campaigns of different shards have no order between them.
    assert _by_campaign(ledger) == _by_campaign(book.ledger)


def _by_campaign(entries: list[LedgerEntry]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for e in entries:
        out.setdefault(e.campaign_id, []).append(_ledger_key(e))
    return out


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hostile=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.text(max_size=200),
            st.dictionaries(
                st.sampled_from(
                    [
                        "event_id",
                        "event_type",
                        "event_time",
                        "user_id",
                        "campaign_id",
                        "amount_minor",
                        "currency",
                        "order_id",
                        "merchant_id",
                    ]
                ),
                json_scalars,
                max_size=9,
            ),
        ),
        max_size=60,
    )
)
def test_hostile_events_are_dead_lettered_and_none_is_lost(redis_url: str, hostile: list[Any]) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    traffic = generate(SyntheticConfig(users=40, days=1, malformed_rate=0.05))
    values: list[Any] = [e.payload for e in traffic.events] + hostile
    random.Random(len(hostile)).shuffle(values)

    async def run() -> tuple[int, int, int]:
        redis = Redis.from_url(redis_url)
        sink = RedisDeadLetters(redis, "attr:dead-letters")
        engine = SpeedLayer(redis, traffic.catalog, _settings(redis_url), sink)
        await engine.start()
        await _feed(engine, values, chunk=50)
        m = engine.metrics
        accepted = sum(
            m.value("attribution_events_total", type=t)
            for t in ("impression", "click", "promo_view", "order", "order_cancel")
        )
        dead = len(await sink.read(count=100_000))
        counted = sum(
            s.value
            for f in m.registry.collect()
            for s in f.samples
            if s.name == "attribution_dead_letters_total"
        )
        await redis.aclose()
        assert dead == counted
        return int(accepted), dead, len(values)

    accepted, dead, sent = asyncio.run(run())
    assert accepted + dead == sent
    assert dead >= sum(e.malformed for e in traffic.events)


def test_dead_letters_carry_payload_and_reason(redis_url: str) -> None:
    catalog = _tight_catalog()
    bad = [
        b'{"event_type":"click"}',
        {"event_id": "e1", "event_type": "click", "event_time": T0, "user_id": "u", "campaign_id": "nope"},
        {
            "event_id": "e2",
            "event_type": "promo_view",
            "event_time": T0,
            "user_id": "u",
            "campaign_id": "ad1",
        },
        "not json at all",
    ]

    async def run() -> list[dict[str, str]]:
        redis = Redis.from_url(redis_url)
        sink = RedisDeadLetters(redis, "attr:dead-letters")
        engine = SpeedLayer(redis, catalog, _settings(redis_url), sink)
        await engine.start()
        await engine.process(bad)
        letters = await sink.read()
        await redis.aclose()
        return letters

    letters = asyncio.run(run())
    assert [(x["field"], x["rule"]) for x in letters] == [
        ("event_id", "is required"),
        ("campaign_id", "is not a campaign of the catalog"),
        ("campaign_id", "is an ad campaign, which a promo_view cannot touch"),
        ("<payload>", "is not valid JSON"),
    ]
    assert letters[1]["raw"].startswith("{")
    assert "nope" in letters[1]["raw"]


def test_every_script_call_keeps_its_keys_in_one_cluster_slot(redis_url: str, monkeypatch) -> None:
    """Declared keys, and the keys a settlement names in its payload, all hash to the call's slot."""
    import orjson

    from realtime.scripts import Scripts

    seen: list[list[str]] = []
    original = Scripts._queue

    def spy(self, pipe, call):  # type: ignore[no-untyped-def]
        name, keys, args = call
        named = [k if isinstance(k, str) else k.decode() for k in keys]
        if name == "settle":
            for _, _, payload in orjson.loads(args[4]):
                p = orjson.loads(payload)
                named += [p["ch"], p["sd"], p["sl"], p["st"]]
        seen.append(named)
        return original(self, pipe, call)

    monkeypatch.setattr(Scripts, "_queue", spy)
    traffic = generate(SyntheticConfig(users=300, days=2, cancel_rate=0.3))

    async def run() -> None:
        engine = await _engine(redis_url, traffic.catalog, keys_budget_shards=4)
        await _feed(engine, [e.payload for e in traffic.events])
        await engine.redis.aclose()

    asyncio.run(run())
    assert len(seen) > 100
    assert max(len(k) for k in seen) > 4  # settlements named their charge, spend and stats keys
    for keys in seen:
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) == 1, keys
    prefixes = {k.split(":")[1] for keys in seen for k in keys}
    assert any(p.startswith("{b") for p in prefixes)
    assert any(p.startswith("{u") for p in prefixes)


def test_budget_reader_reports_spend_caps_remaining_and_pacing(speed_redis_url: str) -> None:
    catalog = _tight_catalog()
    orders = [
        {
            "event_id": f"c{i}",
            "event_type": "click",
            "user_id": "u1",
            "campaign_id": "ad1",
            "event_time": T0 + i,
        }
        for i in range(3)
    ] + [
        {
            "event_id": f"o{i}",
            "event_type": "order",
            "user_id": "u1",
            "order_id": f"o{i}",
            "merchant_id": "m1",
            "amount_minor": 1000,
            "currency": "USD",
            "event_time": T0 + MIN + i,
        }
        for i in range(3)
    ]

    async def run() -> list[Any]:
        engine = await _engine(speed_redis_url, catalog)
        await _feed(engine, orders)
        reader = BudgetReader(engine.redis, catalog, engine.keys)
        states = await reader.states(["ad1", "ad2", "pr1"], T0 + HOUR)
        with pytest.raises(UnknownCampaign, match="nope"):
            await reader.states(["nope"], T0)
        await engine.redis.aclose()
        return states

    ad1, ad2, pr1 = asyncio.run(run())
    # Three orders at 100 each against a daily cap of 250: 100 + 100 + 50 (capped).
    assert (ad1.spend_day_minor, ad1.spend_lifetime_minor, ad1.remaining_minor, ad1.exhausted) == (
        250,
        250,
        0,
        True,
    )
    assert ad1.pacing is not None
    assert ad1.pacing == pytest.approx(1.0 / ad1.day_elapsed, rel=1e-3)
    assert (ad2.spend_day_minor, ad2.remaining_minor, ad2.exhausted) == (0, 700, False)
    assert ad2.budget_day == "2026-10-31"  # New York is still on the previous day at 02:06 UTC
    assert (pr1.daily_cap_minor, pr1.pacing, pr1.remaining_minor) == (None, None, 300)


def test_budget_events_stream_tells_the_ad_server_of_exhaustion(speed_redis_url: str) -> None:
    catalog = _tight_catalog()
    events = [
        {"event_id": "c", "event_type": "click", "user_id": "u1", "campaign_id": "ad1", "event_time": T0}
    ]
    events += [
        {
            "event_id": f"o{i}",
            "event_type": "order",
            "user_id": "u1",
            "order_id": f"o{i}",
            "merchant_id": "m1",
            "amount_minor": 10,
            "currency": "USD",
            "event_time": T0 + i,
        }
        for i in range(5)
    ]
    events += [
        {
            "event_id": "x",
            "event_type": "order_cancel",
            "user_id": "u1",
            "order_id": "o0",
            "event_time": T0 + HOUR,
        }
    ]

    async def run() -> list[dict[bytes, bytes]]:
        engine = await _engine(speed_redis_url, catalog)
        await _feed(engine, events)
        rows = await engine.redis.xrange(engine.keys.budget_events(engine.keys.shard("ad1")))
        await engine.redis.aclose()
        return [f for _, f in rows]

    rows = asyncio.run(run())
    assert [(r[b"type"], r[b"scope"], r[b"campaign_id"]) for r in rows] == [
        (b"exhausted", b"daily", b"ad1"),
        (b"resumed", b"refund", b"ad1"),
    ]


def test_agent_on_a_channel(redis_url: str) -> None:
    """The Faust agent on its in-memory channel (the Kafka worker is tested on a broker: test_kafka)."""
    traffic = generate(SyntheticConfig(users=200, days=1))
    values = [e.payload for e in traffic.events]
    result = asyncio.run(replay(values, traffic.catalog, _settings(redis_url), show_progress=False))
    assert result.sent == len(values)
    assert result.accepted + result.dead_lettered == len(values)
    assert result.decided > 0


def test_settings_refuse_unknown_keys_and_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="allowed_lateness_ms"):
        Settings().replace(rules_allowed_lateness_ms=-1)
    with pytest.raises(ValidationError, match="extra"):
        KeySettings(nonsense=1)  # type: ignore[call-arg]


def test_keys_hash_tags() -> None:
    keys = Keys("attr", 16, 2)
    assert keys.touches("u1").startswith(f"attr:{{u{keys.bucket('u1')}}}:")
    assert key_slot(keys.touches("u1").encode()) == key_slot(keys.pending(keys.bucket("u1")).encode())
    assert key_slot(keys.charge("ad1", "o1").encode()) == key_slot(keys.ledger(keys.shard("ad1")).encode())


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hostile=st.lists(
        st.one_of(
            st.binary(max_size=120),
            st.text(max_size=120).map(lambda t: t + "\ud800"),
            st.integers(1, 6_000).map(lambda d: "[" * d + "]" * d),
            st.integers(1, 6_000).map(
                lambda d: (
                    '{"event_id":"h","event_type":"click","event_time":1793527200000,"user_id":"u",'
                    '"campaign_id":"no-such-campaign","x":' + "[" * d + "]" * d + "}"
                )
            ),
            st.dictionaries(st.text(max_size=5), json_scalars, max_size=5),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_a_live_agent_keeps_consuming_whatever_the_bytes(redis_url: str, hostile: list[Any]) -> None:
    """Hostile values before, between and after real traffic, through the Faust agent itself."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    traffic = generate(SyntheticConfig(users=60, days=1, malformed_rate=0.0, duplicate_rate=0.0))
    valid = [e.payload for e in traffic.events]
    values: list[Any] = hostile + valid[: len(valid) // 2] + hostile + valid[len(valid) // 2 :] + hostile
    result = asyncio.run(replay(values, traffic.catalog, _settings(redis_url), show_progress=False))
    assert result.sent == len(values)
    assert result.accepted == len(valid)
    assert result.dead_lettered == 3 * len(hostile)
    expected = settle_events([parse_event(p) for p in valid], traffic.catalog, AttributionPolicy())[1]
    assert result.decided == sum(d is not None for d in expected.values())


def test_a_cancel_pending_under_an_earlier_workers_field_is_moved_and_still_applies(redis_url: str) -> None:
    """An earlier worker kept one pending cancel per order under ``x:<order_id>``; this one keeps each
    cancel under ``x:<order_id>|<digest>`` and removes that field when it releases it. Recovering the
    partition moves the old field to the new one, so the cancel is applied once (it stops its order)
    and leaves nothing pending behind.

    Mutant killed: recovery without the move (the old field survives its release: pending forever,
    recovered and released again at every restart)."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushall()
    catalog = _tight_catalog()
    cancel = {
        "event_id": "x1",
        "event_type": "order_cancel",
        "event_time": T0,
        "user_id": "u1",
        "order_id": "o1",
    }
    click = {
        "event_id": "k1",
        "event_type": "click",
        "event_time": T0 - HOUR,
        "user_id": "u1",
        "campaign_id": "ad1",
    }
    order = {"event_id": "e1", "event_type": "order", "event_time": T0 + MIN, "user_id": "u1",
             "order_id": "o1", "merchant_id": "m1", "amount_minor": 5_000, "currency": "USD"}  # fmt: skip
    settings = _settings(redis_url)
    keys = Keys.of(settings.keys)

    async def pending(redis: Any) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for b in range(keys.user_buckets):
            out.update(await redis.hgetall(keys.pending(b)))
        return out

    async def run() -> tuple[list[bytes], list[bytes], list[bytes], dict[bytes, bytes]]:
        redis = Redis.from_url(redis_url)
        first = SpeedLayer(redis, catalog, settings, MemoryDeadLetters())
        await first.start()
        await first.process([click, cancel])
        (name, record), *more = (await pending(redis)).items()
        assert not more
        assert name.startswith(b"x:o1|")
        bucket = keys.bucket("o1")  # a cancel waits in its order id's bucket
        await redis.hdel(keys.pending(bucket), name)
        await redis.hset(keys.pending(bucket), "x:o1", record)  # as an earlier worker left it
        second = SpeedLayer(redis, catalog, settings, MemoryDeadLetters())
        await second.start()
        await second.assign([second.source])
        moved = list(await pending(redis))
        await second.process([order])
        await second.drain()
        ledger = [e.kind for e in await read_stream(redis, keys)]
        left = await pending(redis)
        await redis.aclose()
        return [name], moved, ledger, left

    (name,), moved, ledger, left = asyncio.run(run())
    assert moved == [name]
    assert ledger == ["cancelled"]
    assert left == {}
