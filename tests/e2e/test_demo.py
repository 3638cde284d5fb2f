"""``attribution demo`` as a user runs it: a small demo, end to end, in its own process, once for
the module; its printed commands run as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_printed_commands import EXE, ROOT, _background, _console_answers, _lines, _ok, _shell_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One small demo (two days, 300 users) run as a newcomer runs it: from the project root, no
    ``ATTRIBUTION_`` settings, the virtualenv not on PATH. Its folder and its output."""
    folder = tmp_path_factory.mktemp("demo") / "demo"
    out = subprocess.run(
        [EXE, "demo", "--folder", str(folder), "--users", "300", "--days", "2"],
        cwd=ROOT,
        env=_shell_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return folder, out.stdout


def test_small_demo_runs_end_to_end(demo: tuple[Path, str]) -> None:
    folder, text = demo
    assert "discrepancy 0.000%" in text
    assert "ROAS per campaign and model" in text
    for model in ("billing", "markov", "shapley"):
        assert model in text
    chart = folder / "roas_by_day.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "lake" / "metrics" / "campaign_daily").is_dir()
    assert "X-API-Key" in text


def test_the_commands_make_demo_prints_run_as_printed(demo: tuple[Path, str]) -> None:
    served = demo[1].split("6. serve it", 1)[1]
    lines = _lines(served)
    (api,) = [line for line in lines if " api --port " in line]
    assert not api.split()[-4].startswith("attribution"), api  # the path to it, not a bare name
    curls = [line for line in lines if line.startswith("curl ")]
    assert len(curls) >= 2, served
    port = int(re.search(r"--port (\d+)", api).group(1))  # type: ignore[union-attr]
    with _background(api, port):
        for curl in curls:
            assert '"rows"' in _ok(curl, 60), curl
        _console_answers(lines)


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
