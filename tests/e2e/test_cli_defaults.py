"""Settings that matter fail loudly: a command that needs Redis or a catalog and was given neither
(option, environment) says in one line which defaults it uses; ``budget show`` never prints a table
of zeros without saying that nothing has spent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.livetraffic import live_catalog

pytestmark = pytest.mark.e2e
EXE = str(Path(sys.executable).with_name("attribution"))


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """In an empty folder: the defaults (relative paths) name nothing there."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ATTRIBUTION_")}
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
    )


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"campaigns": live_catalog(100, 1, 50).to_records()}, sort_keys=False))
    return path


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("note: using defaults:")]


def test_budget_show_says_the_default_redis_it_reads(catalog: Path, tmp_path: Path) -> None:
    out = _run(
        "budget", "show", "--catalog", str(catalog), cwd=tmp_path
    )  # whatever Redis answers (or not) there
    (note,) = _notes(out.stderr)
    assert "Redis redis://127.0.0.1:6379/0 (default; --redis-url or ATTRIBUTION_REDIS_URL sets it)" in note
    assert "catalog" not in note  # it was given


def test_budget_show_of_a_fresh_redis_says_nothing_has_spent(
    catalog: Path, redis_server: Any, tmp_path: Path
) -> None:
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    out = _run(
        "budget",
        "show",
        "--catalog",
        str(catalog),
        cwd=tmp_path,
        env={"ATTRIBUTION_REDIS_URL": redis_server.url},
    )
    assert out.returncode == 0, out.stderr
    assert _notes(out.stderr) == []  # both given: one by option, one by the environment
    campaigns = len(yaml.safe_load(catalog.read_text())["campaigns"])
    assert (
        f"nothing has spent: none of these {campaigns} campaigns has any spend in Redis {redis_server.url}"
        in (" ".join(out.stdout.split()))
    )


def test_batch_run_says_the_default_catalog_and_lake(tmp_path: Path) -> None:
    out = _run("batch", "run", "--start", "2026-11-01", "--no-follow", cwd=tmp_path)
    (note,) = _notes(out.stderr)
    assert "catalog var/demo/catalog.yaml (default; --catalog or ATTRIBUTION_CATALOG_URL sets it)" in note
    assert "lake file://./var/lake (default; --lake-url or ATTRIBUTION_LAKE_URL sets it)" in note
