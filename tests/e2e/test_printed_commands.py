"""Every command ``make demo`` and ``make live`` print runs as printed, from the project root, in a
shell without the virtualenv on ``PATH`` (a fresh clone after ``make setup``): the commands are
taken from their output and run with ``bash -c``; each must exit 0.

``attribution demo`` and ``attribution live`` are what the make targets run; small inputs here. The
demo's printed commands are run in ``test_demo.py``, on the one demo that module runs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage import open_lake, partition
from tests.e2e.test_live import _campaigns, _kill_leftovers, _none_left, _spend, _stop, _wait, _where

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXE = str(Path(sys.executable).with_name("attribution"))


def _shell_env() -> dict[str, str]:
    """A newcomer's shell: no ATTRIBUTION_ settings, the virtualenv not on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTRIBUTION_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["COLUMNS"] = "250"
    return env


def _lines(text: str) -> list[str]:
    """The output's lines without a panel's borders."""
    return [line.strip().strip("│").strip() for line in text.splitlines()]


def _run(command: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=_shell_env(), capture_output=True, text=True, timeout=timeout_s
    )


def _ok(command: str, timeout_s: float = 300) -> str:
    done = _run(command, timeout_s)
    assert done.returncode == 0, (
        f"{command}\n exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    )
    return done.stdout


@contextlib.contextmanager
def _background(command: str, port: int) -> Iterator[None]:
    """A printed server command, run until the test is done with it."""
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=ROOT,
        env=_shell_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proc.poll() is None, f"{command}\n exited {proc.returncode}"
            assert time.monotonic() < deadline, f"{command}\n did not listen on {port}"
            time.sleep(0.2)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _console_answers(lines: list[str]) -> None:
    """The console's printed address answers with its sign-in page."""
    (said,) = [line for line in lines if "/console" in line]
    url = re.search(r"http://\S+/console", said).group(0)  # type: ignore[union-attr]
    assert 'name="api_key"' in _ok(f"curl -fsSL '{url}'", 60), said


def test_make_live_moves_budgets_lands_files_stops_clean_on_ctrl_c_and_its_commands_run_as_printed(
    tmp_path: Path,
) -> None:
    """One ``make live`` run, as a newcomer's: spend grows in the API it prints, raw and ledger files
    land, both parts serve their metrics; every command it prints (the curls, the console's address,
    the budget table) runs as printed while it runs; Ctrl-C stops every process it started, none
    restarted; the nightly commands its stop summary prints run as printed and reconcile the lake it
    left with the flushed ledger at exactly 0."""
    folder, log = tmp_path / "live", tmp_path / "live.out"
    started = time.time()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [EXE, "live", "--folder", str(folder), "--rate", "200", "--users", "400", "--lateness", "3"],
            cwd=ROOT,
            env=_shell_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "make live: the production loop" not in log.read_text() or "live " not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        lines = _lines(log.read_text())
        curls = [line for line in lines if line.startswith("curl ")]
        assert len(curls) >= 2, lines
        for curl in curls:
            _ok(curl, 60)
        _console_answers(lines)
        sourced = [line for line in lines if line.startswith("set -a;") and "budget show" in line]
        assert len(sourced) == 1, lines
        _ok(sourced[0].replace(" --watch", ""), 60)  # the live table, drawn once

        where = _wait("live.json", lambda: _where(folder), 120, proc, log)
        campaigns = _campaigns(where)
        api, key = where["api"], where["admin_key"]
        first = _wait("spend in the API", lambda: _spend(api, key, campaigns), 90, proc, log)
        _wait("spend growing", lambda: _spend(api, key, campaigns) > first, 60, proc, log)
        lake = Path(where["lake"])
        # The summary names the nightly job's commands only for days whose orders reached the lake
        # (else it says there is nothing to run on): stop once the sink has landed an order.
        _wait(
            "raw orders", lambda: any((lake / "raw" / "order").glob("dt=*/hour=*/*.parquet")), 120, proc, log
        )
        _wait("ledger files", lambda: any((lake / "realtime_ledger").glob("dt=*/*.parquet")), 60, proc, log)
        assert "attribution_decisions_total" in httpx.get(where["metrics"]["worker"]).text
        assert "lake_sink_files_total" in httpx.get(where["metrics"]["lake_sink"]).text
        text = _stop(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(folder, started)
    for part in ("worker", "lake-sink", "api"):
        assert f"{part}: stopped " in text, text[-3000:]
    assert "restarted" not in text
    _none_left(where["pids"])
    lines = _lines(text)
    after = lines[next(i for i, line in enumerate(lines) if line.startswith("The nightly job")) + 1 :]
    printed = [line for line in after if line.startswith(("set -a", ".venv/", "/", "attribution"))]
    assert len(printed) == 2, after
    assert "batch run" in printed[1]
    ran = _ok("\n".join(printed), 600)
    assert "discrepancy" in ran, ran
    assert (folder / "stop-summary.txt").exists()
    assert _where(folder)["parts"]["worker"]["state"] == "stopped"
    # What the printed commands wrote: every ledger day reconciled at exactly 0, spend equal.
    lake_view = open_lake(f"file://{lake}")
    days = sorted(p.name.removeprefix("dt=") for p in (lake / "realtime_ledger").glob("dt=*"))
    assert days, "no ledger day"
    for day in days:
        report = lake_view.manifest(partition("reconciliation", dt=day))
        assert report is not None, day
        assert report["orders"] > 0, report
        assert report["discrepancy_pct"] == 0.0, report
        assert report["batch_spend_minor"], report
        assert report["realtime_spend_minor"] == report["batch_spend_minor"], report


def test_the_stop_summary_names_only_days_whose_orders_landed(tmp_path: Path) -> None:
    """Mutant killed: naming the ledger's days (a day with ledger lines and no landed order, as when
    `make live` is stopped in its first seconds, made the printed `batch run` exit 2: no raw orders)."""
    from types import SimpleNamespace

    from cli.live import _left_behind

    lake = tmp_path / "lake"
    (lake / "realtime_ledger" / "dt=2026-12-05").mkdir(parents=True)
    loop: Any = SimpleNamespace(children=[])
    summary = "\n".join(_left_behind(loop, tmp_path, lake, 10, "Ctrl-C"))
    assert "batch run" not in summary
    assert "No order reached the lake" in summary
    (lake / "raw" / "order" / "dt=2026-12-06" / "hour=00").mkdir(parents=True)
    (lake / "raw" / "order" / "dt=2026-12-07" / "hour=00").mkdir(parents=True)
    summary = "\n".join(_left_behind(loop, tmp_path, lake, 10, "Ctrl-C"))
    assert "batch run --start 2026-12-06 --end 2026-12-07 &&" in summary
    assert "No order reached the lake" not in summary
