"""``/metrics`` reports Redis keys and memory by record kind, estimated from a sample (issue 21), on
a real redis-server and on a 3-master Redis Cluster.

The test writes known keys of three kinds (the layout's own key builder names them) and measures
them whole itself; a sampler allowed more keys than a node holds must give exactly those figures,
one allowed fewer must land within its sampling error. Mutants this kills (tried): a sample not
scaled by the node's key count; memory taken as the mean size of all kinds instead of each kind's.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import redis as redis_sync
from redis.crc import key_slot

from realtime.client import connect, is_cluster
from realtime.footprint import Footprint, export, sample
from realtime.keys import Keys
from realtime.metrics import Metrics
from shared_logic.settings import KeySettings, RedisSettings

pytestmark = pytest.mark.integration

KEYS = Keys.of(KeySettings())


def _fill(url: str) -> dict[str, tuple[int, int]]:
    """300 touch sets of 20 members, 600 claims, 60 day-stats hashes; each kind's (keys, bytes)."""
    if is_cluster(url):
        port = int(url.split("//", 1)[1].split(",")[0].rsplit(":", 1)[1])
        client: redis_sync.Redis = redis_sync.RedisCluster(host="127.0.0.1", port=port)  # type: ignore[assignment]
    else:
        client = redis_sync.Redis.from_url(url)
    made: dict[str, list[str]] = {"touches": [], "claims": [], "stats": []}
    for u in range(300):
        key = KEYS.touches(f"user{u}")
        client.zadd(key, {f"v|ad{i}|1|digest{i}|event-{u}-{i}": 1000 + i for i in range(20)})
        made["touches"].append(key)
    for o in range(600):
        key = KEYS.claim(o % KEYS.user_buckets, f"order-{o}")
        client.set(key, "0|digest|" + "x" * 40)
        made["claims"].append(key)
    for c in range(60):
        key = KEYS.stats(f"ad{c}", "2026-11-01")
        client.hset(key, mapping={"orders": 1, "revenue": 100, "spend": 10})
        made["stats"].append(key)
    out = {
        kind: (len(keys), sum(int(client.memory_usage(k) or 0) for k in keys)) for kind, keys in made.items()
    }
    slots = {key_slot(k.encode()) for keys in made.values() for k in keys}
    assert len(slots) > 3  # spread over slots (and, on the cluster, over its nodes)
    client.close()
    return out


@pytest.mark.parametrize("speed_redis_url", ["server", "cluster"], indirect=True)
def test_the_sample_estimates_keys_and_memory_of_each_kind(speed_redis_url: str) -> None:
    """A node with no more keys than the sample is measured whole (exact figures); a larger one is
    sampled, each kind's estimate within 5 standard deviations of a sample of that size (a
    binomial share: a bound a correct sampler misses about once in 3 million runs, where a fixed
    25% misses about once in 20 for a kind of 60 keys in 960)."""
    truth = _fill(speed_redis_url)
    total_keys = sum(n for n, _ in truth.values())

    async def run(per_node: int) -> Footprint:
        redis = connect(RedisSettings(url=speed_redis_url))
        try:
            return await sample(redis, KEYS, per_node=per_node)
        finally:
            await redis.aclose()

    whole = asyncio.run(run(per_node=total_keys))  # every node holds at most every key
    assert whole.sampled == total_keys
    for kind, (n, size) in truth.items():
        assert (whole.keys[kind], whole.bytes[kind]) == (n, size), kind
    metrics = Metrics()
    export(whole, metrics)
    assert metrics.value("attribution_redis_memory_bytes", kind="touches") == truth["touches"][1]
    assert metrics.value("attribution_redis_keys", kind="claims") == 600
    assert metrics.registry.get_sample_value("attribution_redis_keys", {"kind": "dead letters"}) == 0

    per_node = 150  # fewer than any node holds (960 keys; a cluster node about 320)
    got = asyncio.run(run(per_node=per_node))
    nodes = 3 if is_cluster(speed_redis_url) else 1
    assert got.sampled == nodes * per_node  # sampled, not scanned
    assert sum(got.keys.values()) == pytest.approx(total_keys, abs=len(truth) * nodes)  # rounding only
    for kind, (n, size) in truth.items():
        share = n / total_keys
        sd = total_keys * math.sqrt(share * (1 - share) / got.sampled)
        assert abs(got.keys[kind] - n) <= 5 * sd, (kind, got.keys[kind], n, sd)
        mean = size / n  # every key of a kind is about the same size here
        assert abs(got.bytes[kind] - size) <= 5 * sd * mean * 1.2, (kind, got.bytes[kind], size)


def test_every_record_the_speed_layer_writes_has_a_kind() -> None:
    """The ad server's and the invalid-traffic rules' records are classified too, not lumped in
    ``other`` (mutant killed: a pattern dropped from ``KIND_PATTERNS``)."""
    from realtime.footprint import Classifier

    kind_of = Classifier(KEYS.prefix).kind_of
    assert kind_of(KEYS.pacing("c1")) == "pacing"
    assert kind_of(KEYS.pacing_touches("c1")) == "pacing"
    assert kind_of(KEYS.published("c1")) == "pacing"
    assert kind_of(KEYS.frequency(3, "u1", "c1")) == "frequency caps"
    assert kind_of(KEYS.ivt("2026-11-01")) == "invalid traffic"
    assert kind_of(KEYS.touches("u1")) == "touches"
    assert kind_of(f"{KEYS.prefix}:something-new") == "other"
