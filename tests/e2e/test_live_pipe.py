"""``make live 2>&1 | tee live.log``, then Ctrl-C: the Ctrl-C ends ``tee`` too, and ``attribution
live`` is left writing to a pipe nobody reads. Its ordered stop (settle the orders the worker holds,
flush the ledger, land what the sink holds, stop every part) must not depend on that: the output
goes on in ``logs/live.log``, the stop summary lands in ``stop-summary.txt``, and the nightly job
over the lake it left reconciles with the ledger exactly (0.000%).

Driven here with stdout and stderr to a pipe that the test closes before it sends SIGINT (as a
killed ``tee`` does) or SIGHUP (the terminal gone). The helpers are test_live's."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_live import (
    EXE,
    _campaigns,
    _kill_leftovers,
    _none_left,
    _reconciles,
    _spend,
    _wait,
    _where,
)
from tests.helpers import product_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _drain(fd: int, into: Path) -> None:
    """What the pipe holds now, appended to ``into`` (never blocks)."""
    with into.open("ab") as fh:
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            fh.write(chunk)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGHUP], ids=["sigint", "sighup"])
def test_make_live_stops_in_order_and_reconciles_exactly_when_its_pipe_is_closed(
    tmp_path: Path, spark: Any, stop_signal: signal.Signals
) -> None:
    folder, seen = tmp_path / "live", tmp_path / "seen.out"
    seen.touch()
    env = product_env()
    env["COLUMNS"] = "160"
    started = time.time()
    proc = subprocess.Popen(
        [EXE, "live", "--folder", str(folder), "--rate", "400", "--users", "800", "--lateness", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    try:
        where = _wait("live.json", lambda: _where(folder), 120, proc, seen)
        campaigns = _campaigns(where)
        api, key = where["api"], where["admin_key"]
        _wait("spend in the API", lambda: _spend(api, key, campaigns), 90, proc, seen)
        lake = Path(where["lake"])
        _wait("ledger files", lambda: any((lake / "realtime_ledger").glob("dt=*/*.parquet")), 60, proc, seen)

        def status_line() -> bool:
            _drain(fd, seen)
            return "live " in seen.read_text() and "events sent" in seen.read_text()

        # Not a terminal: plain status lines, not a redrawn table.
        _wait("a plain status line on the pipe", status_line, 30, proc, seen)
        text = seen.read_text()
        assert "make live: the production loop" in text
        assert "\x1b[" not in text, "cursor or colour codes on a pipe"

        proc.stdout.close()  # the reader is gone, as when Ctrl-C ends tee
        log = folder / "logs" / "live.log"
        # Its next status line meets the closed pipe; the output goes on in the log.
        _wait(
            "the output switched to logs/live.log",
            lambda: log.exists() and "live " in log.read_text(),
            30,
            proc,
            seen,
        )
        proc.send_signal(stop_signal)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(folder, started)
    assert code == 0, log.read_text()[-3000:]
    summary = (folder / "stop-summary.txt").read_text()
    assert f"Stopped by {stop_signal.name}" in summary, summary
    for part in ("worker", "lake-sink", "api"):
        assert f"{part}: stopped" in summary, summary
    logged = log.read_text()
    assert "make live stopped" in logged
    assert "Traceback" not in logged, logged[-3000:]
    final = _where(folder)
    assert {name: p["state"] for name, p in final["parts"].items()} == dict.fromkeys(
        ("worker", "lake-sink", "api"), "stopped"
    )
    _none_left(final["pids"])
    _reconciles(spark, folder, where)
