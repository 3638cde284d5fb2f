"""``make live``'s supervision: the worker and the lake sink killed with SIGKILL while they hold
orders and records must be reported and started again, resume where they were (spend keeps
growing, files keep landing), and the lake must still reconcile exactly. The test finds their pids
in ``live.json``, which ``attribution live`` rewrites (by a rename) whenever a part exits or starts
again. Its plain run (watched through the API, stopped with Ctrl-C, its printed commands run) is
``test_printed_commands.py``'s, which shares this module's helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from batch.job import run_day
from batch.reconcile import reconcile_day
from cli.live import Backoff, Loop
from shared_logic.settings import Settings
from storage import open_lake
from storage.catalog import open_catalog
from tests.helpers import product_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXE = str(Path(sys.executable).with_name("attribution"))


def _wait(what: str, check: Any, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"attribution live exited with {proc.returncode} while waiting for {what}:\n"
                + log.read_text()[-3000:]
            )
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout_s:.0f}s:\n" + log.read_text()[-3000:])


def _spend(api: str, key: str, campaigns: list[str]) -> int:
    try:
        r = httpx.get(f"{api}/v1/budget", params={"campaign_id": campaigns}, headers={"X-API-Key": key})
    except httpx.TransportError:
        return 0
    r.raise_for_status()
    return sum(s["spend_day_minor"] for s in r.json())


def _where(folder: Path) -> Any:
    """``live.json`` as it stands (it is replaced whole, so a read sees one version or the next)."""
    path = folder / "live.json"
    return json.loads(path.read_text()) if path.exists() else None


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def _live(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``attribution live`` started in a folder of ``tmp_path``: the process, the folder, its output.
    If the test leaves it running it gets Ctrl-C, then SIGKILL, and so do the parts it leaves."""
    folder, out = tmp_path / "live", tmp_path / "live.out"
    env = product_env()
    env["COLUMNS"] = "160"
    started = time.time()
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [EXE, "live", "--folder", str(folder), "--rate", "400", "--users", "800", "--lateness", "3"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc, folder, out
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            _kill_leftovers(folder, started)


def _kill_leftovers(folder: Path, since: float) -> None:
    """The processes ``live.json`` names that still run, started since ``attribution live`` was (each
    runs in its own session, so killing ``attribution live`` leaves them)."""
    for name, pid in ((_where(folder) or {}).get("pids") or {}).items():
        with contextlib.suppress(psutil.Error):
            if name != "live" and psutil.Process(pid).create_time() >= since - 1:
                os.kill(pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes], out: Path) -> str:
    """Ctrl-C; it must stop cleanly and say what it left."""
    proc.send_signal(signal.SIGINT)
    code = proc.wait(120)
    text = out.read_text()
    assert code == 0, text[-3000:]
    assert "make live stopped" in text
    assert "Left behind in" in text
    return text


def _none_left(pids: dict[str, int]) -> None:
    left = [name for name, pid in pids.items() if name != "live" and _alive(pid)]
    assert left == [], f"still running: {left}"


def _reconciles(spark: Any, folder: Path, where: dict[str, Any]) -> None:
    """The lake it left: the nightly job over what the sink landed agrees with the flushed ledger."""
    values = dict(line.split("=", 1) for line in (folder / "live.env").read_text().splitlines())
    settings = Settings().replace(
        lake_url=values["ATTRIBUTION_LAKE_URL"],
        catalog_url=values["ATTRIBUTION_CATALOG_URL"],
        rules_allowed_lateness_ms=int(values["ATTRIBUTION_RULES_ALLOWED_LATENESS_MS"]),
    )
    lake = open_lake(settings.lake.url)
    days = sorted(
        {p.name.removeprefix("dt=") for p in (Path(where["lake"]) / "realtime_ledger").glob("dt=*")}
    )
    assert days, "no ledger day"
    catalog = open_catalog(settings.catalog.url)
    for day in days:
        run_day(spark, lake, catalog, datetime.fromisoformat(day).replace(tzinfo=UTC).date(), settings)
        report = reconcile_day(spark, lake, catalog, datetime.fromisoformat(day).date(), settings)
        assert report.orders > 0
        assert report.discrepancy_pct == 0.0, (day, report.causes)
        assert report.batch_spend_minor
        assert report.realtime_spend_minor == report.batch_spend_minor


def _campaigns(where: dict[str, Any]) -> list[str]:
    return [c["campaign_id"] for c in yaml.safe_load(Path(where["catalog"]).read_text())["campaigns"]]


def _landed_since(folder: Path, pattern: str, since: float) -> bool:
    return any(p.stat().st_mtime > since for p in folder.glob(pattern))


def test_make_live_restarts_a_killed_worker_and_lake_sink_which_resume_exactly(
    tmp_path: Path, spark: Any
) -> None:
    parts = ("worker", "lake-sink")
    with _live(tmp_path) as (proc, folder, out):
        where = _wait("live.json", lambda: _where(folder), 120, proc, out)
        campaigns = _campaigns(where)
        api, key = where["api"], where["admin_key"]
        lake = Path(where["lake"])
        # Kill them while they hold work: orders pending in the worker, records buffered in the sink.
        _wait("spend in the API", lambda: _spend(api, key, campaigns), 90, proc, out)
        _wait("raw files", lambda: any((lake / "raw").glob("*/dt=*/hour=*/*.parquet")), 60, proc, out)
        old = {name: where["parts"][name]["pid"] for name in parts}
        assert all(_alive(pid) for pid in old.values()), old
        killed_at, killed_wall = time.monotonic(), time.time()
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)

        def restarted() -> Any:
            now = _where(folder)
            new = {name: now["parts"][name] for name in parts}
            return (
                all(
                    p["restarts"] == 1 and p["pid"] != old[name] and _alive(p["pid"])
                    for name, p in new.items()
                )
                and now
            )

        where = _wait("the worker and the lake sink restarted", restarted, 60, proc, out)
        restart_s = time.monotonic() - killed_at
        for name in parts:
            assert where["parts"][name]["exits"][0].startswith("killed by SIGKILL"), where["parts"]
            assert where["pids"][name] == where["parts"][name]["pid"]
        _wait(
            "the kills reported on the console",
            lambda: all(f"{name} killed by SIGKILL" in out.read_text() for name in parts),
            10,
            proc,
            out,
        )
        # The new worker charges (spend grows past what it was once both were back) and flushes its
        # ledger; the new sink lands raw files again.
        after = _spend(api, key, campaigns)
        _wait("spend growing after the restart", lambda: _spend(api, key, campaigns) > after, 90, proc, out)
        resumed_s = time.monotonic() - killed_at
        _wait(
            "raw files landed by the new sink",
            lambda: _landed_since(lake / "raw", "*/dt=*/hour=*/*.parquet", killed_wall),
            60,
            proc,
            out,
        )
        _wait(
            "ledger files flushed by the new worker",
            lambda: _landed_since(lake / "realtime_ledger", "dt=*/*.parquet", killed_wall),
            60,
            proc,
            out,
        )
        text = _stop(proc, out)
    print(f"restarted {restart_s:.1f}s after SIGKILL; spend grew again {resumed_s:.1f}s after it")
    for name in parts:
        assert f"{name}: stopped; restarted 1 time (killed by SIGKILL" in text, text[-3000:]
    assert "api: stopped " in text, text[-3000:]
    final = json.loads((folder / "live.json").read_text())
    assert {name: p["state"] for name, p in final["parts"].items()} == dict.fromkeys(
        ("worker", "lake-sink", "api"), "stopped"
    )
    _none_left({**final["pids"], **{f"old {name}": pid for name, pid in old.items()}})
    _reconciles(spark, folder, where)


def test_supervisor_backs_off_then_gives_up_on_a_part_that_keeps_failing(tmp_path: Path) -> None:
    """A part that exits at once is started again after 1, 2, 4 ... s (here scaled down), and left
    down after ``give_up_after`` fast failures, with a message naming its log."""
    assert [Backoff().delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    (tmp_path / "logs").mkdir()
    backoff = Backoff(first_s=0.05, cap_s=0.1, stable_s=60, give_up_after=3)
    loop = Loop(tmp_path, dict(os.environ), backoff)
    child = loop.start("broken", "no-such-command")  # the CLI refuses it: exit 2
    said: list[str] = []
    deadline = time.monotonic() + 60
    while not child.gave_up and time.monotonic() < deadline:
        said += loop.supervise(time.monotonic())
        time.sleep(0.02)
    assert child.gave_up, said
    assert child.restarts == 2
    assert len(child.exits) == 3
    assert all(e.startswith("exited with 2") for e in child.exits), child.exits
    assert "restarting it in 0.05s" in said[0], said[0]
    assert "No such command" in said[0], said[0]  # the last lines of its log
    assert "broken restarted" in said[1]
    assert "stays down" in said[-1], said[-1]
    assert str(child.log) in said[-1], said[-1]
    assert loop.supervise(time.monotonic() + 100) == []  # no more starts
    child.stop()
    assert child.ended.startswith("gave up after 3 failures in a row"), child.ended
    assert "restarted 2 times" in child.ended
    assert child.log.read_text().count("; restart ") == 2
