"""Each extra installs alone: fresh virtualenvs with only ``.[api]`` and only ``.[realtime]``.

The API, from its own environment, serves ROAS from a DuckDB view of a lake and from the speed
layer's Redis; the worker, from its own, runs the agents on in-memory channels. Neither
environment can import the other layers' libraries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import yaml

from devtools.synthetic import SyntheticConfig, make_catalog
from reporting.auth import add_key
from shared_logic.contract import METRICS
from storage import open_lake, partition
from tests.helpers import markov_row, running_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def _venv(folder: Path, extra: str) -> Path:
    assert UV is not None, "uv is installed by `make setup`"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    subprocess.run(
        [
            UV,
            "pip",
            "install",
            "-q",
            "--python",
            str(python),
            "-c",
            str(ROOT / "constraints.txt"),
            f"{ROOT}[{extra}]",
        ],
        check=True,
        timeout=900,
    )
    return python


def _importable(python: Path, modules: list[str]) -> list[str]:
    code = (
        "import importlib.util, sys; print(','.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    )
    out = subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ATTRIBUTION_", "VIRTUAL_ENV", "PYSPARK"))
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def api_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(tmp_path_factory.mktemp("venv-api"), "api")


@pytest.fixture(scope="module")
def realtime_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(tmp_path_factory.mktemp("venv-realtime"), "realtime")


@pytest.fixture
def served_alone(api_env: Path, tmp_path: Path, redis_url: str) -> Iterator[dict[str, Any]]:
    catalog = make_catalog(SyntheticConfig())
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"campaigns": catalog.to_records()}))
    lake = open_lake(f"file://{tmp_path}/lake")
    campaign = next(iter(catalog))
    row = markov_row(campaign, "2026-11-01")
    lake.write_partition(partition(METRICS, dt="2026-11-01"), pa.Table.from_pylist([row]).drop(["dt"]))
    admin = add_key(tmp_path / "keys.yaml", "ops", "admin")
    env = _clean_env(
        ATTRIBUTION_LAKE_URL=lake.url,
        ATTRIBUTION_CATALOG_URL=str(tmp_path / "catalog.yaml"),
        ATTRIBUTION_API_KEYS_PATH=str(tmp_path / "keys.yaml"),
        ATTRIBUTION_REDIS_URL=redis_url,
    )
    with running_api(env, exe=api_env.with_name("attribution")) as base:
        yield {"base": base, "key": admin, "campaign": campaign.campaign_id}


def test_the_api_serves_roas_with_only_its_extra(api_env: Path, served_alone: dict[str, Any]) -> None:
    assert _importable(api_env, ["pyspark", "pandas", "faust", "fastapi", "duckdb"]) == ["fastapi", "duckdb"]
    resp = httpx.get(
        served_alone["base"] + "/v1/roas",
        params={"start": "2026-11-01", "end": "2026-11-02", "model": ["markov", "billing"]},
        headers={"X-API-Key": served_alone["key"]},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["batch_through"] == "2026-11-01"
    batch = [r for r in body["rows"] if r["source"] == "batch"]
    assert [(r["campaign_id"], r["model"], r["spend_minor"], r["roas"]) for r in batch] == [
        (served_alone["campaign"], "markov", 100, 40.0)
    ]
    # The day after the batch view comes from the speed layer's Redis (empty here): no row, no error.
    assert all(r["day"] == "2026-11-01" for r in body["rows"])


def test_the_worker_runs_on_in_memory_channels_with_only_its_extra(
    realtime_env: Path, tmp_path: Path, redis_url: str
) -> None:
    assert _importable(realtime_env, ["pyspark", "pandas", "fastapi", "duckdb", "faust"]) == ["faust"]
    exe = str(realtime_env.with_name("attribution"))
    env = _clean_env(COLUMNS="200")
    gen = subprocess.run(
        [exe, "generate", "--out", str(tmp_path), "--users", "60", "--days", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    replay = subprocess.run(
        [
            exe,
            "realtime",
            "replay",
            "--jsonl",
            str(tmp_path / "events.jsonl"),
            "--catalog",
            str(tmp_path / "catalog.yaml"),
            "--redis-url",
            redis_url,
            "--no-flush-ledger",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert replay.returncode == 0, replay.stderr
    assert "orders attributed" in replay.stdout
    events = sum(1 for _ in (tmp_path / "events.jsonl").open())
    assert f"replay: {events:,} events" in replay.stdout


ANSWER_SCRIPT = """
import asyncio, sys
from realtime.client import connect
from realtime.keys import Keys
from serving import AnswerReader, CachedAnswerReader
from shared_logic import Catalog
from shared_logic.settings import load_settings

async def main():
    settings = load_settings()
    catalog = Catalog.from_records([{
        "campaign_id": "c1", "advertiser_id": "a", "lever": "ad", "merchant_ids": ["m"],
        "currency": "USD", "pricing": {"model": "fixed", "fee_minor": 100},
        "budget": {"daily_minor": 1000},
    }])
    keys = Keys.of(settings.keys)
    redis = connect(settings.redis)
    await redis.set(keys.spend_day("c1", "2026-11-01"), 400)
    reader = AnswerReader(redis, catalog, keys, settings.pacing)
    (a,) = await reader.answer("u1", ["c1"], 1793500000000)
    print(a.servable, a.remaining_minor, a.serve_probability)
    cached = CachedAnswerReader(reader, clock_ms=lambda: 1793500000000)
    await cached.start()
    (b,) = await cached.answer("u1", ["c1"], 1793500000000)
    await redis.set(keys.spend_day("c1", "2026-11-01"), 450)
    for _ in range(400):
        (b,) = await cached.answer("u1", ["c1"], 1793500000000)
        if b.remaining_minor == 550:
            break
        await asyncio.sleep(0.005)
    print(b.remaining_minor, cached.stats.fallbacks, cached.stats.invalidations > 0)
    await cached.close()
    await redis.aclose()

asyncio.run(main())
"""


def test_the_ad_servers_client_answers_with_only_its_extra(tmp_path: Path, redis_url: str) -> None:
    """``.[adserver]`` alone: the answer reads Redis (directly and cached), and neither Faust,
    Spark, FastAPI nor the API's libraries are installed."""
    python = _venv(tmp_path / "venv-adserver", "adserver")
    heavy = ["faust", "pyspark", "fastapi", "uvicorn", "duckdb", "pyarrow", "aiokafka", "orjson"]
    assert _importable(python, ["serving", "redis", *heavy]) == ["serving", "redis"]
    out = subprocess.run(
        [str(python), "-c", ANSWER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_clean_env(ATTRIBUTION_REDIS_URL=redis_url, ATTRIBUTION_PACING_START_PROBABILITY="0.25"),
    )
    assert out.returncode == 0, out.stderr
    # The cached mode too: the spend change pushed, no campaign read past the bound.
    assert out.stdout.split() == ["True", "600", "0.25", "550", "0", "True"]
