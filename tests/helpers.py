"""Helpers several suites share: a Redis snapshot to compare runs, a lake built from traffic, the API
in its own process and the shape of its errors, a valid order, a batch metric row."""

from __future__ import annotations

import asyncio
import os
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
from shared_logic import AttributionPolicy
from shared_logic.contract import TOUCH_CODES, parse_touch_member
from shared_logic.rules import touch_retention_ms
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

#: What a product process keeps of the tests' settings when a test gives it a world of its own
#: (lake, catalog, Redis): the small plan's shuffle partitions (conftest.py says why).
PLAN_SETTINGS = ("ATTRIBUTION_SPARK_SHUFFLE_PARTITIONS",)


def product_env(*prefixes: str) -> dict[str, str]:
    """This process's environment without our ``ATTRIBUTION_*`` settings (nor any other prefix
    named), except :data:`PLAN_SETTINGS`."""
    drop = ("ATTRIBUTION_", *prefixes)
    return {k: v for k, v in os.environ.items() if k in PLAN_SETTINGS or not k.startswith(drop)}


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


def usable_touches(state: dict[str, Any], end_ms: int | None = None) -> dict[str, Any]:
    """``state`` with only the touches an order still to come may use: a touch of a kind older than
    ``end_ms`` minus that kind's retention (the default policy's, the least any catalog has) is left
    out of each user's set (``:t:``) and ids (``:ti:``), a set left empty is dropped, and so is
    each bucket's trim floor.

    When the ingest script trims such a touch depends on when each user's next touch came and on
    the settlement bound then: batching, by design (no decision depends on it: an order uses a touch
    only within its kind's retention of its release). ``end_ms`` defaults to the latest touch: no
    trim bound passes it when the input topics' partitions each hold touches (a replay, Kafka),
    since the settlement bound is a minimum over every partition's watermark."""
    retention = {TOUCH_CODES[k]: ms for k, ms in touch_retention_ms(AttributionPolicy()).items()}
    sets = {k: v for k, v in state.items() if ":t:" in k}
    if end_ms is None:
        end_ms = max((int(score) for members in sets.values() for _, score in members), default=0)
    # Each bucket's trim floor (``:trimmed``) is how far trimming went: batching too.
    out = {
        k: v for k, v in state.items() if ":t:" not in k and ":ti:" not in k and not k.endswith(":trimmed")
    }
    for key, members in sets.items():
        kept = [(m, s) for m, s in members if s >= end_ms - retention[m.decode().split("|", 1)[0]]]
        if not kept:
            continue
        out[key] = kept
        ids = state.get(key.replace(":t:", ":ti:", 1), {})
        names = {m for m, _ in kept}
        kept_ids = {parse_touch_member(m.decode()).event_id.encode() for m in names}
        out[key.replace(":t:", ":ti:", 1)] = {f: v for f, v in ids.items() if f in kept_ids}
    return out


def ledger_entries(state: dict[str, Any]) -> list[Any]:
    """The entries of every budget shard's ledger stream in a snapshot, shard after shard."""
    return [e for k in sorted(state) if k.endswith(":ledger") for e in state[k]]


async def redis_snapshot(
    url: str, match: str = "attr:*", sort_streams: bool = False, all_touches: bool = False
) -> dict[str, Any]:
    """Every key matching ``match`` with its value; streams as their entries' fields (ids dropped).
    A Redis Cluster is read on every node. Touches only as ``usable_touches`` leaves them, unless
    ``all_touches``."""
    r = connect(RedisSettings(url=url))
    out: dict[str, Any] = {}
    try:
        names = list(dict.fromkeys([key async for key in r.scan_iter(match=match, count=1000)]))
        # Two pipelined rounds (each key's type, then its value), not two round trips per key.
        async with r.pipeline(transaction=False) as pipe:
            for key in names:
                pipe.type(key)
            kinds = await pipe.execute()
        read = {
            b"string": lambda p, k: p.get(k),
            b"hash": lambda p, k: p.hgetall(k),
            b"zset": lambda p, k: p.zrange(k, 0, -1, withscores=True),
            b"stream": lambda p, k: p.xrange(k),
        }
        kept = [(key, kind) for key, kind in zip(names, kinds, strict=True) if kind in read]
        async with r.pipeline(transaction=False) as pipe:
            for key, kind in kept:
                read[kind](pipe, key)
            values = await pipe.execute()
    finally:
        await r.aclose()
    for (key, kind), value in zip(kept, values, strict=True):
        if kind == b"stream":
            entries = [fields for _, fields in value]
            value = sorted(entries, key=repr) if sort_streams else entries
        out[key.decode()] = value
    return out if all_touches else usable_touches(out)


#: API settings with every role's rate limit out of reach: for tests about answers, not throttling
#: (tests/e2e/test_api_limits.py is about throttling).
UNTHROTTLED = {
    f"ATTRIBUTION_API_RATE_{role}_{knob}": "1000000"
    for role in ("ADMIN", "ADVERTISER", "AD_SERVER", "ANONYMOUS")
    for knob in ("PER_S", "BURST")
}


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
    arrivals = [e.arrival_ms for e in traffic.events]
    asyncio.run(
        replay(payloads, traffic.catalog, settings, flush_ledger=True, show_progress=False, arrivals=arrivals)
    )
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


# Faults: waiting on conditions, freezing a process at a state, holding a broker's commits --------


def wait_for(
    what: str,
    check: Any,
    timeout_s: float,
    interval_s: float = 0.05,
    alive: tuple[subprocess.Popen[bytes], ...] = (),
    logs: tuple[Path, ...] = (),
) -> Any:
    """Poll ``check()`` until it returns something truthy, and return that. Fails naming ``what``
    when ``timeout_s`` passes or a process of ``alive`` exits, with the tails of ``logs``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        dead = [p.args for p in alive if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists()
            )
            why = f"exited: {dead}" if dead else f"timed out after {timeout_s:.0f}s"
            raise AssertionError(f"{what}: {why}\n{tails}")
        time.sleep(interval_s)


def is_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (state ``T`` in ``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def stop_process(pid: int, timeout_s: float = 10.0) -> None:
    """SIGSTOP ``pid`` and return once it is really stopped (the signal is delivered asynchronously)."""
    import os
    import signal

    os.kill(pid, signal.SIGSTOP)
    wait_for(f"process {pid} stops", lambda: is_stopped(pid), timeout_s, interval_s=0.001)


def stop_group(proc: subprocess.Popen[Any], term_s: float = 30.0, kill_s: float = 10.0) -> None:
    """Stop a process started in its own session and everything in its process group: SIGTERM,
    then SIGKILL when it has not exited within ``term_s``."""
    import contextlib
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(term_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(kill_s)


def freeze_when(proc: subprocess.Popen[bytes], ready: Any, timeout_s: float, slice_s: float = 0.05) -> Any:
    """Run ``proc`` in slices (SIGCONT, ``slice_s``, SIGSTOP) until ``ready()``, asked while it is
    stopped, returns something truthy; return that, with ``proc`` left stopped. So a fault or a kill
    lands at a state that was observed, and the process cannot have moved past it in the meantime
    (however loaded the machine: a slice it overran only moves the state checked next). The caller
    continues it (SIGCONT) or kills it."""
    import os
    import signal

    deadline = time.monotonic() + timeout_s
    while True:
        stop_process(proc.pid)
        got = ready()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode} before the state was reached")
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGCONT)
            raise AssertionError(f"{proc.args}: the state was not reached in {timeout_s:.0f}s")
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(slice_s)


OFFSET_COMMIT = 8  # Kafka API keys: OffsetCommit
LEAVE_GROUP = 13  # LeaveGroup


class CommitHold:
    """A TCP front of a Kafka-protocol broker that passes every request and answer through, except
    OffsetCommit requests once ``hold_after`` of them have passed: the first such request, and
    everything its connection sends after it, are kept here and never reach the broker (a client
    waits for the answer in order). ``held`` is set when a commit is held; the requests held are
    dropped with their connection. The broker must advertise this front's ``port`` (``InnerBroker``
    with ``advertised_port``) so every connection a client opens comes through here. ``refused``
    counts the connections closed at once because the broker (``upstream``, which may be changed to
    a new broker's port) did not answer; ``requests`` lists the API key of every request seen."""

    def __init__(self, upstream: int, hold_after: int | None = None, port: int | None = None) -> None:
        import threading

        self.upstream = upstream
        self.port = port or free_port()
        self.hold_after = hold_after
        self.passed = 0
        self.refused = 0
        self.requests: list[int] = []  # the API key of every request clients sent, in arrival order
        self.held = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"commit-hold-{self.port}", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError(f"the commit-holding front did not start on port {self.port}")

    def release(self) -> None:
        """Hold nothing from now on (the connections already holding stay held until they close)."""
        self.hold_after = None

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self._started.set()
        async with server:
            await self._stop.wait()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import struct

        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:  # the broker is away: the client sees its connection closed
            self.refused += 1
            writer.close()
            return

        async def requests() -> None:
            holding = False
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(struct.unpack(">i", head)[0])
                self.requests.append(struct.unpack_from(">h", body)[0])
                if not holding and struct.unpack_from(">h", body)[0] == OFFSET_COMMIT:
                    if self.hold_after is not None and self.passed >= self.hold_after:
                        holding = True
                        self.held.set()
                    else:
                        self.passed += 1
                if not holding:
                    up_writer.write(head + body)
                    await up_writer.drain()

        async def answers() -> None:
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
                await writer.drain()

        tasks = [asyncio.create_task(requests()), asyncio.create_task(answers())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the front stops: end quietly (asyncio reports a cancelled handler)
            pass
        finally:
            for t in tasks:
                t.cancel()
            for w in (writer, up_writer):
                w.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> CommitHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
