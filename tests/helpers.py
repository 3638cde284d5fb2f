"""Helpers several suites share: a Redis snapshot to compare runs, a lake built from traffic, the API
in its own process and the shape of its errors, a valid order, a batch metric row."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from devtools.servers import free_port
from devtools.synthetic import Traffic
from realtime.client import connect
from realtime.replay import replay
from shared_logic.settings import RedisSettings, Settings
from storage import Lake, open_lake
from storage.raw import land_events

#: A valid order event, as a producer sends it.
ORDER: dict[str, Any] = {
    "event_id": "e1",
    "event_type": "order",
    "event_time": 1_793_527_200_000,
    "user_id": "u1",
    "order_id": "o1",
    "merchant_id": "m1",
    "amount_minor": 1234,
    "currency": "USD",
    "promo_codes": ["SAVE10"],
}


def markov_row(campaign: Any, dt: str) -> dict[str, Any]:
    """A batch metric row of the Markov model for ``campaign`` on ``dt`` (ROAS 40); a column added
    later is null."""
    from shared_logic.contract import METRIC_ROW, metric_row

    values = {
        "dt": dt,
        "campaign_id": campaign.campaign_id,
        "advertiser_id": campaign.advertiser_id,
        "lever": str(campaign.lever),
        "currency": campaign.currency,
        "model": "markov",
        "impressions": 10,
        "clicks": 2,
        "promo_views": 0,
        "orders": 1.5,
        "revenue_minor": 4_000.0,
        "spend_minor": 100,
        "capped_orders": 0,
        "roas": 40.0,
    }
    return metric_row(**{**dict.fromkeys(METRIC_ROW.names), **values})


def flush(url: str) -> None:
    """Empty a Redis or a Redis Cluster (every primary)."""
    import redis

    from realtime.client import is_cluster

    if is_cluster(url):
        host, _, port = url.split("://", 1)[1].split(",")[0].rpartition(":")
        client: Any = redis.RedisCluster(host=host, port=int(port))
    else:
        client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


async def redis_snapshot(url: str, match: str = "attr:*", sort_streams: bool = False) -> dict[str, Any]:
    """Every key matching ``match`` with its value; streams as their entries' fields (ids dropped).
    A Redis Cluster is read on every node."""
    r = connect(RedisSettings(url=url))
    out: dict[str, Any] = {}
    async for key in r.scan_iter(match=match):
        k = key.decode()
        kind = await r.type(key)
        if kind == b"string":
            out[k] = await r.get(key)
        elif kind == b"hash":
            out[k] = await r.hgetall(key)
        elif kind == b"zset":
            out[k] = await r.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            entries = [fields for _, fields in await r.xrange(key)]
            out[k] = sorted(entries, key=repr) if sort_streams else entries
    await r.aclose()
    return out


def land_and_replay(
    folder: Path, traffic: Traffic, redis_url: str, **changes: Any
) -> tuple[Lake, Settings, Path]:
    """Land the traffic in a lake under ``folder``, replay it through the speed layer (ledger flushed to
    the lake), and write its catalog file: the state the nightly job and the API start from."""
    url = f"file://{folder}/lake"
    lake = open_lake(url)
    land_events(lake, ((e.payload, e.arrival_ms) for e in traffic.events))
    settings = Settings().replace(redis_url=redis_url, lake_url=url, **changes)
    payloads = [e.payload for e in traffic.events]
    asyncio.run(replay(payloads, traffic.catalog, settings, flush_ledger=True, show_progress=False))
    catalog = folder / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"campaigns": traffic.catalog.to_records()}))
    return lake, settings, catalog


PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


@contextmanager
def running_api(env: dict[str, str], exe: Path | None = None, timeout_s: float = 90.0) -> Iterator[str]:
    """``attribution api`` in its own process on a free loopback port, with ``env``; yields its base URL.

    Uvicorn runs the app's startup before it listens, so the first accepted TCP connection means
    the API is ready (no HTTP request is spent on it: it would draw from a rate-limit bucket).
    Its output goes to a file, read back when it fails to start.
    """
    port = free_port()
    exe = exe or Path(sys.executable).with_name("attribution")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [str(exe), "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait(10)
                    log.seek(0)
                    raise RuntimeError(f"API did not start: {log.read().decode(errors='replace')}") from None
                time.sleep(0.1)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def assert_problem(resp: Any, status: int, parameter: str | None = None) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem of ``status`` (naming ``parameter`` when given), with the
    security headers; returns its body."""
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert (_header(resp, "content-type") or "").startswith("application/problem+json"), resp.headers
    body: dict[str, Any] = resp.json()
    assert set(body) >= PROBLEM_FIELDS, body
    assert body["status"] == status
    assert all(isinstance(body[f], str) and body[f] for f in PROBLEM_FIELDS - {"status"}), body
    if parameter is not None:
        assert body.get("parameter") == parameter, body
    for name, value in SECURITY_HEADERS.items():
        assert _header(resp, name) == value, (name, resp.headers)
    return body


def _header(resp: Any, name: str) -> str | None:
    """A header of an httpx response, or of a schemathesis one (lowercase names, list values)."""
    value = resp.headers.get(name)
    return value[0] if isinstance(value, list) and value else value


async def read_dead_letter_topic(settings: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Everything on the dead-letter topic: read until every partition's position reaches the end
    offset the fetches report (a condition, not a quiet spell: a slow fetch cannot cut it short)."""
    import asyncio
    import time

    import orjson
    from aiokafka import AIOKafkaConsumer

    from realtime.broker import client_options

    consumer = AIOKafkaConsumer(
        settings.realtime.topic("dead_letters"),
        **client_options(settings.realtime),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            out += [orjson.loads(r.value) for rows in batch.values() for r in rows]
            held = consumer.assignment()
            ends = {tp: consumer.highwater(tp) for tp in held}
            positions = {tp: await consumer.position(tp) for tp in held}
            if held and all(e is not None and positions[tp] >= e for tp, e in ends.items()):
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError(f"the dead-letter topic was not read to its end in {timeout_s:.0f}s")
    finally:
        await consumer.stop()
    return out
