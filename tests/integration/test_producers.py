"""What producers put on the broker, and what the consumers do with it (Tansu stores batches as given):

- every codec Kafka defines (none, gzip, snappy, lz4, zstd) is decided by the worker exactly as a
  replay of the same events, and landed by the lake sink;
- a batch no consumer can decode (its codec's library missing here, a flipped byte, a body that
  does not decompress) is one log line, one metric and, by default, one dead letter naming its range,
  and both consumers go on: the outcome equals a replay of the events without the batch's. With
  ``realtime.undecodable = stop`` the worker pauses that partition and consumes the others;
- a tombstone, headers, a key that is not UTF-8 and a record over the payload limit are each a dead
  letter (field, value, rule) or an event as their value says, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.synthetic import SyntheticConfig, Traffic, generate
from devtools.traffic import encode, produce
from realtime.kafka import KafkaWorker
from realtime.lakesink import LakeSink
from realtime.replay import replay
from realtime.routing import place
from shared_logic.contract import DEAD_LETTERS, RAW
from shared_logic.events import EVENT_TYPES, MAX_PAYLOAD_BYTES
from shared_logic.settings import Settings
from storage import Lake, open_lake, partition
from tests.helpers import read_dead_letter_topic
from tests.integration.test_kafka import _db, _outcome, _settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAFFIC = SyntheticConfig(
    users=300, days=2, duplicate_rate=0.02, cancel_rate=0.15, late_rate=0.03, malformed_rate=0.003, seed=29
)
CODECS = [None, "gzip", "snappy", "lz4", "zstd"]
BAD_SIZE = 20  # events in the batch no consumer can decode
TP = tuple[str, int]


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(TRAFFIC)


@pytest.fixture(scope="module")
def values(traffic: Traffic) -> list[Any]:
    return [e.payload for e in traffic.events]


def _replayed(values: list[Any], traffic: Traffic, redis_server: Any) -> dict[str, Any]:
    url = _db(redis_server.url, 14)
    settings = Settings().replace(redis_url=url)
    asyncio.run(replay(values, traffic.catalog, settings, show_progress=False))
    return asyncio.run(_outcome(url))


@pytest.fixture(scope="module")
def replayed(values: list[Any], traffic: Traffic, redis_server: Any) -> dict[str, Any]:
    return _replayed(values, traffic, redis_server)


def _with_lake(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(
        lake_url=f"file://{tmp_path}/lake", sink_roll_age_s=0.3, sink_marker_interval_s=3_600
    )


def _ends(values: list[Any], settings: Settings) -> Counter[TP]:
    ends: Counter[TP] = Counter()
    for v in values:
        topic, _, p = place(v, settings.realtime)
        ends[(topic, p)] += 1
    return ends


def _metric(registry: Any, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def _consume(
    settings: Settings,
    traffic: Traffic,
    ends: Counter[TP],
    stopped: TP | None = None,
    sink: bool = True,
    settled: Any = None,
) -> tuple[KafkaWorker, LakeSink | None]:
    """Run one worker (and one lake sink) over what is in the topics until each is at its end offsets
    (``stopped``: that partition is not) and the worker has settled everything (or ``settled(worker)``)."""
    worker = KafkaWorker(settings, traffic.catalog)
    lake_sink = LakeSink(settings) if sink else None
    await asyncio.gather(
        *(s.start() for s in (worker, lake_sink) if s is not None)
    )  # the groups join at once
    tasks = [asyncio.create_task(s.run()) for s in (worker, lake_sink) if s is not None]
    engine = worker.engine
    assert engine is not None
    wanted = {tp: n for tp, n in ends.items() if tp != stopped}

    async def worker_done() -> bool:
        async with worker.lock:
            parts = engine.clocks.parts
            if len(parts) < len(worker.sources) or any(
                parts[tp].next_offset != n for tp, n in wanted.items()
            ):
                return False
            if settled is not None:
                return bool(settled(worker))
            return engine.pending == 0 and not await engine.redis.exists(engine.keys.queue(0))

    async def sink_done() -> bool:
        if lake_sink is None:
            return True
        async with lake_sink.lock:
            parts = lake_sink.clocks.parts
            return all((c := parts.get(tp)) is not None and c.next_offset == n for tp, n in wanted.items())

    try:
        deadline = time.monotonic() + 120
        while not (await worker_done() and await sink_done()):
            for t in tasks:
                assert not t.done(), t  # a consumer that died shows here, with its exception
            assert time.monotonic() < deadline, "the backlog was not consumed"
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        if lake_sink is not None:
            lake_sink.stop()
        await asyncio.gather(*tasks)
    return worker, lake_sink


def _event_ids(lake: Lake) -> Counter[str]:
    ids: Counter[str] = Counter()
    for etype in EVENT_TYPES:
        for values in lake.partitions(RAW.at(event_type=etype), depth=2):
            ref = partition(RAW, event_type=etype, **values)
            ids.update(lake.read([ref], columns=["event_id"]).column("event_id").to_pylist())
    return ids


def _lake_dead_letters(lake: Lake) -> list[dict[str, Any]]:
    return [
        row
        for v in lake.partitions(DEAD_LETTERS.at())
        for row in lake.read([partition(DEAD_LETTERS, **v)]).to_pylist()
    ]


def _valid_ids(events: list[Any]) -> set[str]:
    return {v["event_id"] for v in events if isinstance(v, dict) and "event_id" in v}


async def _codecs_on_the_broker(settings: Settings, tp: TP) -> set[int]:
    """The compression codec (Kafka's attribute: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd) of every
    record batch the broker holds in ``tp``, from their headers."""
    from aiokafka import AIOKafkaClient, TopicPartition
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record import MemoryRecords

    from realtime.broker import client_options

    client = AIOKafkaClient(**client_options(settings.realtime))
    await client.bootstrap()
    try:
        node = client.cluster.leader_for_partition(TopicPartition(*tp))
        response = await client.send(node, FetchRequest(500, 1, 1 << 20, 0, [(tp[0], [(tp[1], 0, 1 << 20)])]))
        data = [part[-1] for _, parts in response.topics for part in parts]
    finally:
        await client.close()
    records = MemoryRecords(bytes(data[0]))
    codecs = set()
    while records.has_next():
        codecs.add(records.next_batch().compression_type)
    return codecs


# every codec ----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=[c or "none" for c in CODECS])
def test_every_codec_is_attributed_and_landed(
    codec: str | None,
    broker: Any,
    redis_url: str,
    traffic: Traffic,
    values: list[Any],
    replayed: dict[str, Any],
    tmp_path: Path,
) -> None:
    settings = _with_lake(_settings(broker, redis_url), tmp_path)
    asyncio.run(produce(values, settings.realtime, compression_type=codec))
    ends = _ends(values, settings)
    assert asyncio.run(_codecs_on_the_broker(settings, max(ends, key=ends.__getitem__))) == {
        CODECS.index(codec)
    }
    worker, _ = asyncio.run(_consume(settings, traffic, ends))
    assert worker.processed == len(values)
    assert asyncio.run(_outcome(redis_url)) == replayed
    landed = _event_ids(open_lake(settings.lake.url))
    assert set(landed) == {e.payload["event_id"] for e in traffic.events if not e.malformed}  # type: ignore[index]
    assert len(_lake_dead_letters(open_lake(settings.lake.url))) >= sum(e.malformed for e in traffic.events)


# a batch no consumer can decode ------------------------------------------------------------------


def _bad_batch(values: list[Any], settings: Settings) -> tuple[TP, list[int]]:
    """``BAD_SIZE`` impressions of the busiest impression partition, from the middle of its sequence: the
    partition and the events' indices in ``values``."""
    by_tp: dict[TP, list[int]] = {}
    for i, v in enumerate(values):
        if isinstance(v, dict) and v.get("event_type") == "impression":
            topic, _, p = place(v, settings.realtime)
            by_tp.setdefault((topic, p), []).append(i)
    tp, seq = max(by_tp.items(), key=lambda kv: len(kv[1]))
    chosen = seq[len(seq) // 2 :][:BAD_SIZE]
    assert len(chosen) == BAD_SIZE
    return tp, chosen


def _raw_batch(events: list[Any], kind: str) -> bytes:
    """A record batch of ``events`` no consumer can decode: ``corrupt`` (a flipped byte: the CRC fails)
    or ``garbled`` (gzip, its body overwritten and the CRC made right: the body does not inflate)."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.util import calc_crc32c

    codec = {"corrupt": 0, "garbled": 1}[kind]
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    now = int(time.time() * 1000)
    for i, v in enumerate(events):
        builder.append(i, timestamp=now, key=v["user_id"].encode(), value=encode(v), headers=[])
    buf = builder.build()
    body = 61 + (len(buf) - 61) // 2  # the v2 header is 61 bytes
    if kind == "corrupt":
        buf[body] ^= 0xFF
    else:
        buf[body : body + 8] = b"\xde\xad\xbe\xef" * 2
        struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))  # the CRC covers attributes..end
    return bytes(buf)


async def _send_raw(settings: Settings, tp: TP, data: bytes) -> None:
    """One batch as it is, in a plain Produce request (the broker stores it as given)."""
    from aiokafka import AIOKafkaClient, TopicPartition
    from aiokafka.protocol.produce import ProduceRequest

    from realtime.broker import client_options

    client = AIOKafkaClient(**client_options(settings.realtime))
    await client.bootstrap()
    try:
        node = client.cluster.leader_for_partition(TopicPartition(*tp))
        response = await client.send(node, ProduceRequest(None, 1, 10_000, [(tp[0], [(tp[1], data)])]))
        errors = [p[1] for _, parts in response.topics for p in parts]
        assert errors == [0], response
    finally:
        await client.close()


def _produce_with_a_bad_batch(
    values: list[Any], settings: Settings, kind: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[TP, int, int, list[Any]]:
    """Produce ``values`` with ``BAD_SIZE`` impressions of one partition in one batch no consumer here can
    decode, in their place: returns the partition, the batch's first and last offset, and the values a
    consumer can read (in order)."""
    tp, chosen = _bad_batch(values, settings)
    bad = [values[i] for i in chosen]
    before = values[: chosen[0]]
    after = [v for i, v in enumerate(values) if i > chosen[0] and i not in chosen]

    async def go() -> None:
        await produce(before, settings.realtime)
        if kind == "no-codec":
            await produce(bad, settings.realtime, compression_type="snappy")
        else:
            await _send_raw(settings, tp, _raw_batch(bad, kind))
        await produce(after, settings.realtime)

    asyncio.run(go())
    if kind == "no-codec":  # this process has lost the snappy library (aiokafka asks when decoding)
        import aiokafka.codec

        monkeypatch.setattr(aiokafka.codec, "has_snappy", lambda: False)
    first = _ends(before, settings)[tp]
    return tp, first, first + BAD_SIZE - 1, before + after


@pytest.fixture(scope="module")
def replayed_without_the_bad_batch(values: list[Any], traffic: Traffic, redis_server: Any) -> dict[str, Any]:
    _, chosen = _bad_batch(values, Settings())  # the same events whatever the topics' prefix
    return _replayed([v for i, v in enumerate(values) if i not in chosen], traffic, redis_server)


@pytest.mark.parametrize("kind", ["no-codec", "corrupt", "garbled"])
def test_an_undecodable_batch_is_a_dead_letter_and_both_consumers_go_on(
    kind: str,
    broker: Any,
    redis_url: str,
    traffic: Traffic,
    values: list[Any],
    replayed_without_the_bad_batch: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = _with_lake(_settings(broker, redis_url), tmp_path)
    tp, first, last, rest = _produce_with_a_bad_batch(values, settings, kind, monkeypatch)
    ends = _ends(values, settings)
    worker, sink = asyncio.run(_consume(settings, traffic, ends))
    assert sink is not None
    topic = tp[0]

    # One log line per consumer, naming the partition and the range; no traceback.
    where = f"topic {topic} partition {tp[1]} offsets {first}..{last}"
    lines = [r for r in caplog.records if "undecodable record batch" in r.getMessage()]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    assert all(where in r.getMessage() and "dead-lettered" in r.getMessage() for r in lines)
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
    assert _metric(worker.metrics.registry, "attribution_undecodable_batches_total", topic=topic) == 1
    assert _metric(sink.metrics.registry, "lake_sink_undecodable_batches_total", topic=topic) == 1

    # The worker: one dead letter for the range, everything else decided as a replay without it.
    assert worker.processed == len(rest)
    letters = [x for x in asyncio.run(read_dead_letter_topic(settings)) if x["field"] == "<batch>"]
    assert len(letters) == 1
    described = json.loads(letters[0]["raw"])
    assert described == {
        **described,
        "topic": topic,
        "partition": tp[1],
        "first_offset": first,
        "last_offset": last,
    }
    assert letters[0]["value"] == f"{topic}/{tp[1]} offsets {first}..{last}"
    assert letters[0]["rule"].startswith("cannot be decoded (")
    assert asyncio.run(_outcome(redis_url)) == replayed_without_the_bad_batch

    # The sink: the rest landed, and the range in dead_letters/ under its own name.
    lake = open_lake(settings.lake.url)
    valid = {e.payload["event_id"] for e in traffic.events if not e.malformed}  # type: ignore[index]
    assert set(_event_ids(lake)) == valid & _valid_ids(rest)
    batch_rows = [r for r in _lake_dead_letters(lake) if r["field"] == "<batch>"]
    assert [(r["value"], json.loads(r["raw"])["last_offset"]) for r in batch_rows] == [
        (f"{topic}/{tp[1]} offsets {first}..{last}", last)
    ]
    name = f"{topic}-p{tp[1]}-{first:012d}-{last:012d}.parquet"
    assert list(Path(lake.path("dead_letters")).rglob(name))


def test_stop_pauses_the_partition_of_an_undecodable_batch_and_consumes_the_others(
    broker: Any,
    redis_url: str,
    traffic: Traffic,
    values: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _settings(broker, redis_url).replace(realtime_undecodable="stop")
    tp, first, last, _ = _produce_with_a_bad_batch(values, settings, "corrupt", monkeypatch)
    ends = _ends(values, settings)
    seen: dict[str, Any] = {}

    def held_at_the_batch(worker: KafkaWorker) -> bool:
        from aiokafka import TopicPartition

        assert worker.engine is not None
        assert worker.consumer is not None
        seen["next"] = worker.engine.clocks.parts[tp].next_offset
        seen["paused"] = TopicPartition(*tp) in worker.consumer.paused()
        return bool(seen["next"] == first and seen["paused"])

    async def run() -> KafkaWorker:
        worker, _ = await _consume(settings, traffic, ends, stopped=tp, sink=False, settled=held_at_the_batch)
        return worker

    worker = asyncio.run(run())
    assert seen == {"next": first, "paused": True}  # every record before the batch, nothing after it
    lines = [r.getMessage() for r in caplog.records if "undecodable record batch" in r.getMessage()]
    assert len(lines) == 1
    assert f"topic {tp[0]} partition {tp[1]} offsets {first}..{last}" in lines[0]
    assert f"partition stopped at offset {first}" in lines[0]
    assert _metric(worker.metrics.registry, "attribution_undecodable_batches_total", topic=tp[0]) == 1
    assert not [x for x in asyncio.run(read_dead_letter_topic(settings)) if x["field"] == "<batch>"]


# odd records from a real producer ----------------------------------------------------------------


def test_tombstones_headers_binary_keys_and_oversized_records_never_stop_a_consumer(
    broker: Any, redis_url: str, traffic: Traffic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """From aiokafka's producer: a null value (a tombstone), a record over ``MAX_PAYLOAD_BYTES``, and bad
    bytes under headers and a non-UTF-8 key are dead letters with field, value and rule; valid orders
    with headers or a non-UTF-8 key are events (the contract is the value; keys and headers are not
    read). Both consumers go on."""
    from realtime.broker import producer

    settings = _with_lake(_settings(broker, redis_url), tmp_path)
    cfg = settings.realtime
    now = int(time.time() * 1000) - 3_600_000

    def order(n: int) -> bytes:
        return encode(
            {
                "event_id": f"odd-{n}",
                "event_type": "order",
                "event_time": now + n,
                "user_id": f"odd-user-{n}",
                "order_id": f"odd-order-{n}",
                "merchant_id": "m1",
                "amount_minor": 1000,
                "currency": "USD",
                "promo_codes": [],
            }
        )

    oversized = order(9)[:-1] + b',"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    headers = [("trace-id", b"abc"), ("binary", b"\xff\xfe"), ("empty", b"")]
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (b"odd-user-1", None, []),  # a tombstone
        (b"odd-user-2", order(2), headers),  # an event with headers
        (b"\xff\xfe\xfd", order(3), []),  # an event under a key that is not UTF-8
        (b"\xc3\x28", b"\xff not json", headers),  # bad bytes, bad key, headers
        (b"odd-user-9", oversized, []),  # over the payload limit
    ]

    async def send() -> None:
        from realtime.broker import ensure_topics

        await ensure_topics(cfg)
        p = producer(cfg, acks=1)
        await p.start()
        try:
            for key, value, hdrs in records:
                await (await p.send(cfg.topic("order"), value=value, key=key, partition=0, headers=hdrs))
        finally:
            await p.stop()

    asyncio.run(send())
    ends = Counter({(cfg.topic("order"), 0): len(records)})

    def decided(worker: KafkaWorker) -> bool:
        return _metric(worker.metrics.registry, "attribution_decisions_total") == 2

    worker, sink = asyncio.run(_consume(settings, traffic, ends, settled=decided))
    assert sink is not None
    assert _metric(worker.metrics.registry, "attribution_events_total", type="order") == 2
    letters = sorted(
        (x["field"], x["value"], x["rule"], x["raw_bytes"])
        for x in asyncio.run(read_dead_letter_topic(settings))
    )
    size = len(oversized)
    assert letters == sorted(
        [
            ("<payload>", "'NoneType'", "must be JSON bytes, a JSON string or a dict", 4),
            ("<payload>", "None", "is not valid JSON", 10),
            ("<payload>", f"'{size} bytes'", f"exceeds {MAX_PAYLOAD_BYTES} bytes", size),
        ]
    ), letters
    lake = open_lake(settings.lake.url)
    assert set(_event_ids(lake)) == {"odd-2", "odd-3"}
    assert sorted(r["rule"] for r in _lake_dead_letters(lake)) == sorted(x[2] for x in letters)
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)


def test_the_range_comes_from_the_batch_header_and_the_records_before_it_are_kept() -> None:
    """``realtime.fetching.scan`` over a fetch response of three batches (offsets 0..4, 5..9 corrupt,
    10..14) read from offset 2: the records 2..4, and the range 5..9 from the second header."""
    from aiokafka import TopicPartition
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    from realtime.fetching import scan

    def batch(base: int, corrupt: bool = False) -> bytes:
        builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
        for i in range(5):
            builder.append(i, timestamp=1_000, key=None, value=b"v%d" % (base + i), headers=[])
        buf = builder.build()
        struct.pack_into(">q", buf, 0, base)  # the broker's offset (outside the CRC)
        if corrupt:
            buf[-1] ^= 0xFF
        return bytes(buf)

    tp = TopicPartition("t", 3)
    good = batch(0) + batch(5) + batch(10)
    assert scan(tp, good, 2) is None
    found = scan(tp, batch(0) + batch(5, corrupt=True) + batch(10), 2)
    assert found is not None
    rows, bad = found
    assert [(r.offset, r.value) for r in rows] == [(2, b"v2"), (3, b"v3"), (4, b"v4")]
    assert (bad.tp, bad.first, bad.last) == (tp, 5, 9)
    assert bad.reason.startswith("CorruptRecordException: Invalid CRC")
    assert scan(tp, batch(0, corrupt=True)[:-3], 0) is None  # a batch cut by the fetch size is not read
