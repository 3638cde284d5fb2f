"""``attribution live`` (``make live``): the production loop on one machine, with traffic stamped now.

It starts a Kafka-protocol broker (Tansu, in memory) and a ``redis-server`` on free loopback ports,
then the parts as production runs them, each its own process: one ``attribution worker``, one
``attribution lake-sink`` and ``attribution api``; and a traffic generator in this process that
produces synthetic behaviour at a set rate, each event stamped with the wall clock. It prints where
to look (the API with a ready admin key, the live budget table, the lake, the metrics), then a
status table every few seconds. Ctrl-C (or ``--duration``) stops the traffic, then the worker (it
flushes its ledger), the sink (it lands what it holds), the API, Redis and the broker, in that
order, and says what is left behind.

Every child runs in its own session, so the terminal's Ctrl-C reaches only this process, which
stops them in order.

The ordered stop does not depend on the terminal: SIGHUP (the terminal closed) and SIGTERM stop it
as Ctrl-C does, and a broken stdout or stderr (``make live | tee live.log`` with ``tee`` killed by
the same Ctrl-C, a closed pipe) switches the output to ``logs/live.log`` instead of ending the
command. The stop summary is written to ``stop-summary.txt`` in the folder as well as the screen.
When stdout is not a terminal the status is a plain line every few seconds instead of a redrawn
table.

While it runs, it supervises the worker, the lake sink and the API: a part that exits (any status,
or a signal) is reported at once with the last lines of its log and started again with the same
command and environment after a bounded exponential backoff (:class:`Backoff`); it resumes from its
checkpoints (committed offsets, Redis, the sink's intents in the lake). ``live.json`` in the folder
holds each part's pid, state and restarts, rewritten whole at every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer
import yaml
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from cli.common import SafeStream, console, err, exe_path, money

#: Settings of the children that differ from the defaults: quick rolls and flushes to watch.
LIVE_ENV = {
    "ATTRIBUTION_REALTIME_TOPIC_PARTITIONS": "4",
    "ATTRIBUTION_REALTIME_LEDGER_FLUSH_INTERVAL_S": "5",
    "ATTRIBUTION_SINK_ROLL_AGE_S": "5",
    "ATTRIBUTION_SINK_MARKER_INTERVAL_S": "5",
}


@dataclass(frozen=True)
class Backoff:
    """When the supervisor starts a part again after it exits: ``first_s`` after its first failure,
    doubling up to ``cap_s``. A run that lasted ``stable_s`` forgives the failures before it; after
    ``give_up_after`` failures in a row, each within ``stable_s`` of its start, the part stays down
    and the others keep running."""

    first_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    stable_s: float = 60.0
    give_up_after: int = 6

    def delay(self, failures: int) -> float:
        """The wait before the next start after ``failures`` failures in a row (1 or more)."""
        return min(self.cap_s, self.first_s * self.factor ** max(failures - 1, 0))


def how_it_ended(returncode: int) -> str:
    """``exited with 1`` or ``killed by SIGKILL`` (Popen reports a signal as its negative number)."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


def log_tail(path: Path, lines: int = 3, window: int = 8192) -> list[str]:
    """The last non-empty lines of a log, read from its end."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - window))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


@dataclass
class Child:
    """A part this command started and supervises: its command, its log (appended to across
    restarts), the process running now, and its history of exits and restarts."""

    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    log: Path
    handle: IO[bytes]
    process: subprocess.Popen[bytes]
    started: float
    restarts: int = 0
    failures: int = 0  # in a row, each within Backoff.stable_s of its start
    exits: list[str] = field(default_factory=list)
    restart_at: float | None = None  # down, to be started again then
    gave_up: bool = False
    stopping: bool = False  # stopped by this command: never started again
    ended: str = ""

    @classmethod
    def spawn(cls, name: str, args: tuple[str, ...], env: dict[str, str], log: Path) -> Child:
        handle = log.open("ab")
        return cls(name, args, env, log, handle, _popen(args, env, handle), time.monotonic())

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopped"
        if self.gave_up:
            return "gave up"
        if self.restart_at is not None:
            return "restarting"
        return "running" if self.process.poll() is None else "exited"

    def supervise(self, now: float, backoff: Backoff) -> str | None:
        """Notice an exit, or start the part again once its backoff has passed; say what happened
        (console markup), or None when nothing did."""
        if self.stopping or self.gave_up:
            return None
        if self.restart_at is not None:
            if now < self.restart_at:
                return None
            self.restart_at = None
            self.restarts += 1
            self.handle.write(
                f"\n--- make live {datetime.now(UTC):%H:%M:%S}: {self.name} {self.exits[-1]}; "
                f"restart {self.restarts} ---\n".encode()
            )
            self.handle.flush()
            self.process, self.started = _popen(self.args, self.env, self.handle), now
            return f"[green]{self.name} restarted[/green] (pid {self.process.pid}, restart {self.restarts})"
        code = self.process.poll()
        if code is None:
            return None
        up = now - self.started
        self.failures = 1 if up >= backoff.stable_s else self.failures + 1
        self.exits.append(f"{how_it_ended(code)} after {up:,.0f}s")
        tail = "".join(f"\n    {escape(line)}" for line in log_tail(self.log)) or " (nothing)"
        said = f"[bold red]{self.name} {self.exits[-1]}[/bold red] (pid {self.process.pid})"
        if self.failures >= backoff.give_up_after:
            self.gave_up = True
            return (
                f"{said}: it failed {self.failures} times in a row, each within {backoff.stable_s:g}s of "
                f"its start, so it stays down; the other parts keep running. See {self.log}:{tail}"
            )
        delay = backoff.delay(self.failures)
        self.restart_at = now + delay
        return f"{said}; restarting it in {delay:g}s. Last lines of {self.log}:{tail}"

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.process.pid,
            "state": self.state,
            "restarts": self.restarts,
            "exits": self.exits,
            "log": str(self.log),
        }

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait, SIGKILL if it would not go; remember which it took, and its restarts."""
        self.stopping = True
        if self.gave_up:
            self.ended = f"gave up after {self.failures} failures in a row ({self.exits[-1]}; see {self.log})"
        elif self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout_s)
                # uvicorn shuts down and then re-raises the SIGTERM it caught: -15 is a clean stop too
                self.ended = "stopped" if code in (0, -signal.SIGTERM) else f"stopped (exit {code})"
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                self.ended = f"killed: it did not stop within {timeout_s:.0f}s (see {self.log})"
        elif self.restart_at is not None:
            self.ended = f"was down, waiting to restart ({self.exits[-1]}; see {self.log})"
        else:
            self.ended = f"down: {how_it_ended(self.process.returncode)} (see {self.log})"
        if self.restarts:
            times = "time" if self.restarts == 1 else "times"
            self.ended += f"; restarted {self.restarts} {times} ({'; '.join(self.exits)})"
        self.handle.close()


def _popen(args: tuple[str, ...], env: dict[str, str], handle: IO[bytes]) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).with_name("attribution"))
    return subprocess.Popen(
        [exe, *args], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


@dataclass
class Loop:
    folder: Path
    env: dict[str, str]
    backoff: Backoff = field(default_factory=Backoff)
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, *args: str) -> Child:
        child = Child.spawn(name, args, self.env, self.folder / "logs" / f"{name}.log")
        self.children.append(child)
        return child

    def supervise(self, now: float) -> list[str]:
        """One round over the parts: what exited, what started again."""
        return [said for c in self.children if (said := c.supervise(now, self.backoff))]


def live(
    folder: Annotated[Path, typer.Option(help="where the lake, logs, catalog and keys go")] = Path(
        "var/live"
    ),
    rate: Annotated[float, typer.Option(min=1, help="events per second the generator produces")] = 300.0,
    users: Annotated[int, typer.Option(min=10, help="users in the synthetic population")] = 2_000,
    seed: int = 7,
    duration: Annotated[
        float | None, typer.Option(min=1, help="stop after this many seconds (default: at Ctrl-C)")
    ] = None,
    lateness: Annotated[
        float,
        typer.Option(
            min=0,
            help="allowed lateness in seconds: an order is decided this long after it happens "
            "(production default 60; short here so budgets move at once)",
        ),
    ] = 10.0,
    keep_lake: Annotated[
        bool, typer.Option(help="keep the lake of an earlier run (default: start a fresh one)")
    ] = False,
) -> None:
    """Run the production loop on this machine: broker, Redis, worker, lake sink, API and live
    traffic; Ctrl-C (or SIGHUP, SIGTERM) stops it all in order."""
    from devtools.livetraffic import live_catalog
    from reporting.auth import add_key

    folder = folder.resolve()
    lake_dir = folder / "lake"
    if lake_dir.exists() and not keep_lake:
        shutil.rmtree(lake_dir)  # its sink offsets name a broker that is gone
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    catalog = live_catalog(users, seed, rate)
    catalog_path = folder / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump({"campaigns": catalog.to_records()}, sort_keys=False))
    keys_path = folder / "keys.yaml"
    keys_path.unlink(missing_ok=True)
    adv = sorted({c.advertiser_id for c in catalog})[0]
    made = {
        "admin_key": add_key(keys_path, "make live admin", "admin"),
        "advertiser_id": adv,
        "advertiser_key": add_key(keys_path, f"make live {adv}", "advertiser", adv),
        "ad_server_key": add_key(keys_path, "make live ad server", "ad_server"),
    }
    (folder / "stop-summary.txt").unlink(missing_ok=True)

    # Output that outlives its reader: a broken stdout/stderr goes on in logs/live.log.
    fallback = folder / "logs" / "live.log"
    saved = sys.stdout, sys.stderr, console.file, err.file
    out, errs = SafeStream(sys.stdout, fallback), SafeStream(sys.stderr, fallback)
    sys.stdout, sys.stderr = out, errs
    console.file, err.file = out, errs  # type: ignore[assignment]
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        _live(
            folder,
            lake_dir,
            catalog,
            catalog_path,
            keys_path,
            made,
            rate,
            users,
            seed,
            duration,
            lateness,
        )
    finally:
        sys.stdout, sys.stderr, console.file, err.file = saved


def _interrupt(signum: int, frame: Any) -> None:
    """SIGHUP (the terminal gone) and SIGTERM outside the asyncio loop: stop as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _busy(message: str) -> Any:
    """A spinner on a terminal; one plain line otherwise."""
    if console.is_terminal:
        return console.status(message)
    console.print(f"{message} ...")
    return contextlib.nullcontext()


def _live(
    folder: Path,
    lake_dir: Path,
    catalog: Any,
    catalog_path: Path,
    keys_path: Path,
    made: dict[str, str],
    rate: float,
    users: int,
    seed: int,
    duration: float | None,
    lateness: float,
) -> None:
    from devtools.livetraffic import LiveTraffic
    from devtools.servers import LocalBroker, LocalRedis
    from realtime.keys import Keys
    from shared_logic.settings import load_settings

    with _busy("starting Redis and the broker"):
        redis_server = LocalRedis(own_session=True)
        broker = LocalBroker(own_session=True)
    api_port, worker_metrics, sink_metrics = _free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")}
    env.update(
        LIVE_ENV,
        ATTRIBUTION_REDIS_URL=redis_server.url,
        ATTRIBUTION_REALTIME_BROKER_URL=broker.url,
        ATTRIBUTION_LAKE_URL=f"file://{lake_dir}",
        ATTRIBUTION_CATALOG_URL=str(catalog_path),
        ATTRIBUTION_API_KEYS_PATH=str(keys_path),
        ATTRIBUTION_API_HOST="127.0.0.1",
        ATTRIBUTION_API_PORT=str(api_port),
        ATTRIBUTION_REALTIME_METRICS_PORT=str(worker_metrics),
        ATTRIBUTION_SINK_METRICS_PORT=str(sink_metrics),
        ATTRIBUTION_RULES_ALLOWED_LATENESS_MS=str(round(lateness * 1000)),
    )
    # The settings every part runs with, for a shell: `set -a; . live.env; set +a`, then any command
    (folder / "live.env").write_text(
        "".join(f"{k}={v}\n" for k, v in sorted(env.items()) if k.startswith("ATTRIBUTION_"))
    )
    loop = Loop(folder, env)
    settings = load_settings(
        redis_url=redis_server.url,
        realtime_broker_url=broker.url,
        realtime_topic_partitions=int(LIVE_ENV["ATTRIBUTION_REALTIME_TOPIC_PARTITIONS"]),
        rules_allowed_lateness_ms=round(lateness * 1000),
    )
    traffic = LiveTraffic(settings.realtime, rate=rate, users=users, seed=seed)
    api = f"http://127.0.0.1:{api_port}"
    where: dict[str, Any] = {
        "api": api,
        **made,
        "redis_url": redis_server.url,
        "broker_url": broker.url,
        "lake": str(lake_dir),
        "catalog": str(catalog_path),
        "metrics": {
            "worker": f"http://127.0.0.1:{worker_metrics}/metrics",
            "lake_sink": f"http://127.0.0.1:{sink_metrics}/metrics",
            "api": f"{api}/metrics",
        },
        "logs": str(folder / "logs"),
        "env": str(folder / "live.env"),
    }
    stopped_by = "Ctrl-C"
    try:
        loop.start("worker", "worker")
        loop.start("lake-sink", "lake-sink")
        loop.start("api", "api")
        _wait_port(api_port, loop.children[-1])
        where["pids"] = {"redis": redis_server.process.pid, "broker": broker.process.pid, "live": os.getpid()}
        _write_where(folder, where, loop)
        console.print(_where(where, next(iter(catalog)).campaign_id, rate))
        keys = Keys.of(settings.keys)
        stopped_by = asyncio.run(_run(traffic, loop, where, catalog, keys, duration))
        for sig in (signal.SIGHUP, signal.SIGTERM):  # asyncio put back the defaults on its way out
            signal.signal(sig, _interrupt)
        _settle(where["metrics"]["worker"], lateness, next(c for c in loop.children if c.name == "worker"))
    except KeyboardInterrupt as exc:
        if exc.args:
            stopped_by = str(exc.args[0])
    finally:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # the children stop in order; a second Ctrl-C waits
        console.print(
            f"\n[bold]stopping[/bold] ({stopped_by}): traffic, worker (flushes its ledger), lake sink (lands "
            "what it holds), API, Redis, broker"
        )
        for name in ("worker", "lake-sink", "api"):
            for child in loop.children:
                if child.name == name:
                    child.stop()
        redis_server.stop()
        broker.stop()
        if "pids" in where:
            _write_where(folder, where, loop)
        summary = _left_behind(loop, folder, lake_dir, traffic.sent, stopped_by)
        (folder / "stop-summary.txt").write_text("make live stopped\n" + "\n".join(summary) + "\n")
        console.print(Panel("\n".join(summary), title="make live stopped", expand=False))


def _write_where(folder: Path, where: dict[str, Any], loop: Loop) -> None:
    """``live.json``: where to look, and each part's pid, state and restarts (rewritten whole, by a
    rename, whenever a part exits or starts again, so a reader never sees half of it)."""
    where["pids"] = {**where["pids"], **{c.name: c.process.pid for c in loop.children}}
    where["parts"] = {c.name: c.describe() for c in loop.children}
    tmp = folder / "live.json.tmp"
    tmp.write_text(json.dumps(where, indent=2))
    os.replace(tmp, folder / "live.json")


def _settle(metrics_url: str, lateness_s: float, worker: Child) -> None:
    """With the traffic stopped, let the worker decide the orders it still holds: its partitions are
    idle, so the wall clock moves its watermark past them within the allowed lateness. Then the
    ledger it flushes on stop holds every order the lake holds, and the reconciliation can be exact.
    A second Ctrl-C skips the wait."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    if worker.process.poll() is not None:
        console.print(f"the worker is down ({worker.state}); the next worker decides the orders it held")
        return
    deadline = time.monotonic() + lateness_s + 30
    pending: float | None = None
    with _busy(f"settling the orders the worker still holds (allowed lateness {lateness_s:g}s)"):
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                text = httpx.get(metrics_url, timeout=2).text
                pending = sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    if family.name == "attribution_pending_actions"
                    for sample in family.samples
                )
                if pending == 0:
                    return
            time.sleep(0.5)
    console.print(f"the worker still holds {pending} pending action(s); the next worker decides them")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports: each socket stays bound until all are chosen (one at a
    time, the kernel may hand out the same port twice, and two parts would then share it)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _wait_port(port: int, child: Child, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}: see {child.log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} did not listen on port {port} within {timeout_s:.0f}s: see {child.log}")


def _where(where: dict[str, Any], first: str, rate: float) -> Panel:
    key, api = where["admin_key"], where["api"]
    adv, adv_key, ads_key = where["advertiser_id"], where["advertiser_key"], where["ad_server_key"]
    exe = exe_path()
    lines = [
        f"[bold]API[/bold]        {api}",
        f"  admin key (everything): {key}",
        f"  advertiser {adv}'s key (its campaigns' ROAS and budgets): {adv_key}",
        f"  ad-server key (budget state only): {ads_key}",
        f"  curl -fsS -H 'X-API-Key: {ads_key}' '{api}/v1/budget?campaign_id={first}'",
        f"  curl -fsS -H 'X-API-Key: {adv_key}' "
        f'"{api}/v1/roas?start=$(date -u +%F)&end=$(date -u +%F)&model=billing"',
        f"  {api}/docs (send a key as X-API-Key)",
        f"  {api}/console in a browser (sign in with a key above: ROAS, budgets, reconciliation)",
        "[bold]Budgets[/bold]    a live table, in another terminal, from where you ran this "
        "(live.env holds every setting):",
        f"  set -a; . {where['env']}; set +a; {exe} budget show --watch",
        f"[bold]Keys[/bold]       {exe} api-key list / create / revoke (with live.env sourced; the API "
        "sees changes within seconds)",
        f"[bold]Lake[/bold]       {where['lake']}  (raw/, realtime_ledger/, dead_letters/, raw/_landed/)",
        f"[bold]Metrics[/bold]    worker {where['metrics']['worker']}",
        f"           lake sink {where['metrics']['lake_sink']}",
        f"           API {where['metrics']['api']} (with the admin key)",
        f"[bold]Logs[/bold]       {where['logs']}/",
        f"[bold]Traffic[/bold]    {rate:g} events/s, stamped now, to {where['broker_url']}",
    ]
    return Panel("\n".join(lines), title="make live: the production loop on this machine", expand=False)


async def _run(
    traffic: Any, loop: Loop, where: dict[str, Any], catalog: Any, keys: Any, duration: float | None
) -> str:
    """Produce until Ctrl-C or ``duration``; supervise the parts (an exit is reported at once and the
    part started again after its backoff); redraw the status every 2 s. Returns what stopped it."""
    from realtime.budget import BudgetReader
    from realtime.client import connect
    from shared_logic.settings import RedisSettings

    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    reason = {"by": "Ctrl-C"}

    def on_signal(name: str) -> None:
        reason["by"] = name
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        running.add_signal_handler(sig, on_signal, sig.name)
    producing = asyncio.create_task(traffic.run(stop))
    started = time.monotonic()
    redis = connect(RedisSettings(url=where["redis_url"]))
    reader, ids = BudgetReader(redis, catalog, keys), [c.campaign_id for c in catalog]
    redraw = started + 2.0
    # On a terminal a table redrawn in place; otherwise (a pipe, a file) a plain line now and then.
    drawn = console.is_terminal
    with Live(console=console, auto_refresh=False) if drawn else contextlib.nullcontext() as screen:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
            if producing.done():
                stop.set()
                reason["by"] = f"the traffic generator ended ({producing.exception()!r})"
            now = time.monotonic()
            events = loop.supervise(now)
            for said in events:
                console.print(said)
            if events:
                _write_where(loop.folder, where, loop)
            if duration is not None and now - started >= duration:
                stop.set()
                reason["by"] = f"--duration {duration:g}s"
            if events or now >= redraw or stop.is_set():
                values = await _status_values(traffic, where, reader, ids, now - started)
                if screen is not None and console.is_terminal:
                    redraw = now + 2.0
                    screen.update(Group(_status_table(values), _parts(loop, now)))
                    screen.refresh()
                else:
                    redraw = now + 10.0
                    console.print(_status_line(values, loop, now), highlight=False, soft_wrap=True)
    await redis.aclose()
    with contextlib.suppress(Exception):
        await producing
    return reason["by"]


async def _status_values(
    traffic: Any, where: dict[str, Any], reader: Any, ids: list[str], elapsed: float
) -> dict[str, str]:
    """What the status shows, as text: the same in the table and the plain line."""
    states = await reader.states(ids, int(time.time() * 1000))
    lake = Path(where["lake"])
    raw = sum(1 for _ in (lake / "raw").glob("*/dt=*/hour=*/*.parquet"))
    ledger = sum(1 for _ in (lake / "realtime_ledger").glob("dt=*/*.parquet"))
    dead_letters = sum(1 for _ in (lake / "dead_letters").glob("dt=*/*.parquet"))
    spend: dict[str, int] = {}
    for s in states:
        spend[s.currency] = spend.get(s.currency, 0) + s.spend_day_minor
    return {
        "elapsed": f"{elapsed:,.0f}s",
        "events sent": f"{traffic.sent:,} ({traffic.sent / max(elapsed, 1e-9):,.0f}/s)",
        "synthetic days": f"{traffic.days}",
        "spend today": ", ".join(money(v, c) for c, v in sorted(spend.items())) or "-",
        "campaigns capped": f"{sum(s.exhausted for s in states)} of {len(states)}",
        "lake files": f"raw {raw:,}, ledger {ledger:,}, dead letters {dead_letters:,}",
    }


def _status_table(values: dict[str, str]) -> Table:
    table = Table(title=f"live for {values['elapsed']} (Ctrl-C stops)", show_header=True)
    columns = [k for k in values if k != "elapsed"]
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*(values[c] for c in columns))
    return table


def _status_line(values: dict[str, str], loop: Loop, now: float) -> str:
    """The status as one plain line, for a pipe or a file."""
    parts = []
    for c in loop.children:
        if c.gave_up:
            parts.append(f"{c.name} gave up")
        elif c.restart_at is not None:
            parts.append(f"{c.name} down")
        elif c.process.poll() is None:
            parts.append(f"{c.name} up" + (f" ({c.restarts} restarts)" if c.restarts else ""))
        else:
            parts.append(f"{c.name} exited")
    shown = "; ".join(f"{k} {v}" for k, v in values.items() if k != "elapsed")
    return f"live {values['elapsed']}: {shown}; {', '.join(parts)}"


def _parts(loop: Loop, now: float) -> Table:
    """The supervised parts: pid, state, restarts, how each last exited."""
    table = Table(show_header=True, box=None, padding=(0, 2))
    for col in ("part", "pid", "state", "restarts", "last exit", "log"):
        table.add_column(col)
    for c in loop.children:
        if c.gave_up:
            state = "[bold red]gave up[/bold red]"
        elif c.restart_at is not None:
            state = f"[red]down[/red], restart in {max(c.restart_at - now, 0):.0f}s"
        elif c.process.poll() is None:
            state = f"up {now - c.started:,.0f}s"
        else:
            state = "[red]exited[/red]"
        table.add_row(
            c.name,
            str(c.process.pid),
            state,
            str(c.restarts),
            c.exits[-1] if c.exits else "-",
            str(c.log.relative_to(loop.folder)),
        )
    return table


def _left_behind(loop: Loop, folder: Path, lake: Path, sent: int, stopped_by: str) -> list[str]:
    """The stop summary, plain lines (the screen shows them in a panel; ``stop-summary.txt`` holds
    them too)."""
    files = [p for p in lake.rglob("*") if p.is_file()] if lake.exists() else []
    size = sum(p.stat().st_size for p in files)
    exe = exe_path()
    # The days the nightly job can run: those whose raw orders landed (a day the ledger names but no
    # order of reached the lake, as when stopped in the first seconds, would make `batch run` refuse).
    # Named, not `$(date -u +%F)`: that is evaluated once per command, names two days for a run
    # stopped across midnight UTC, and the wrong day when run on a later one.
    days = sorted(p.name.removeprefix("dt=") for p in (lake / "raw" / "order").glob("dt=*"))
    lines = [f"Stopped by {stopped_by} at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; {sent:,} events sent."]
    lines += [f"{c.name}: {c.ended}" for c in loop.children]
    lines += [
        "Redis and the broker: stopped; they kept everything in memory, so it is gone.",
        f"Left behind in {folder}: the lake ({len(files):,} files, {size / 2**20:,.1f} MiB), "
        "logs/, catalog.yaml, keys.yaml, live.env, live.json, stop-summary.txt.",
    ]
    if days:
        span = f"--start {days[0]} --end {days[-1]}"
        lines += [
            "The nightly job and the reconciliation run on it with the same settings "
            "(from where you ran this):",
            f"  set -a; . {folder / 'live.env'}; set +a",
            f"  {exe} batch run {span} && {exe} reconcile {span}",
        ]
    else:
        lines += ["No order reached the lake before the stop: nothing for the nightly job to run on."]
    lines += [
        "The next `make live` starts a fresh lake (--keep-lake keeps it).",
    ]
    return lines
