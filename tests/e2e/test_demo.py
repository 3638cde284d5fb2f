"""``attribution demo`` as a user runs it: a small week, end to end, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_small_demo_runs_end_to_end(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).with_name("attribution"))
    folder = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run(
        [exe, "demo", "--folder", str(folder), "--users", "300", "--days", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "discrepancy 0.000%" in text
    assert "ROAS per campaign and model" in text
    for model in ("billing", "markov", "shapley"):
        assert model in text
    chart = folder / "roas_by_day.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "lake" / "metrics" / "campaign_daily").is_dir()
    assert "X-API-Key" in text


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).with_name("attribution"))
    bad = tmp_path / "catalog.yaml"
    bad.write_text(
        "campaigns:\n  - campaign_id: c1\n    advertiser_id: a\n    lever: ad\n    merchant_ids: [m]\n"
        "    currency: XYZ\n    pricing: {model: fixed, fee_minor: 1}\n"
    )
    out = subprocess.run(
        [exe, "budget", "show", "--catalog", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip() and not line.startswith("note: using")]
    assert lines == ["error: invalid campaign: field 'c1.currency' = 'XYZ': is not an ISO 4217 currency code"]
    assert "Traceback" not in out.stderr
