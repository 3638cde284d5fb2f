"""``make live`` driven as a newcomer would: ``attribution live`` started, watched through the API it
prints for some seconds, stopped with Ctrl-C (SIGINT). Spend must grow in the API, raw and ledger
files must land, every process it started must be gone, and the nightly job over the lake it left
must reconcile with the ledger exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from batch.job import run_day
from batch.reconcile import reconcile_day
from shared_logic.settings import Settings
from storage import open_lake
from storage.catalog import open_catalog

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
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout_s:.0f}s:\n" + log.read_text()[-3000:])


def _spend(api: str, key: str, campaigns: list[str]) -> int:
    try:
        r = httpx.get(f"{api}/v1/budget", params={"campaign_id": campaigns}, headers={"X-API-Key": key})
    except httpx.TransportError:
        return 0
    r.raise_for_status()
    return sum(s["spend_day_minor"] for s in r.json())


def test_make_live_moves_budgets_lands_files_and_stops_clean_on_ctrl_c(tmp_path: Path, spark: Any) -> None:
    folder = tmp_path / "live"
    out = tmp_path / "live.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")}
    env["COLUMNS"] = "160"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            [EXE, "live", "--folder", str(folder), "--rate", "400", "--users", "800", "--lateness", "3"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        try:
            where = _wait(
                "live.json",
                lambda: (folder / "live.json").exists() and json.loads((folder / "live.json").read_text()),
                120,
                proc,
                out,
            )
            campaigns = [
                c["campaign_id"] for c in yaml.safe_load(Path(where["catalog"]).read_text())["campaigns"]
            ]
            api, key = where["api"], where["admin_key"]
            first = _wait("spend in the API", lambda: _spend(api, key, campaigns), 90, proc, out)
            _wait("spend growing", lambda: _spend(api, key, campaigns) > first, 60, proc, out)
            lake = Path(where["lake"])
            _wait("raw files", lambda: any((lake / "raw").glob("*/dt=*/hour=*/*.parquet")), 60, proc, out)
            _wait(
                "ledger files", lambda: any((lake / "realtime_ledger").glob("dt=*/*.parquet")), 60, proc, out
            )
            worker_metrics = httpx.get(where["metrics"]["worker"]).text
            assert "attribution_decisions_total" in worker_metrics
            assert "lake_sink_files_total" in httpx.get(where["metrics"]["lake_sink"]).text
            proc.send_signal(signal.SIGINT)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    assert code == 0, text[-3000:]
    assert "make live stopped" in text
    for part in ("worker", "lake-sink", "api"):
        assert f"{part}: stopped" in text, text[-3000:]
    assert "Left behind in" in text
    left = [
        name
        for name, pid in where["pids"].items()
        if name != "live" and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert left == [], f"still running: {left}"

    # The lake it left: the nightly job over what the sink landed agrees with the flushed ledger.
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
        report = reconcile_day(spark, lake, datetime.fromisoformat(day).date(), settings)
        assert report.orders > 0
        assert report.discrepancy_pct == 0.0, (day, report.causes)
        assert report.realtime_spend_minor == report.batch_spend_minor > 0
