"""The ``attribution`` command as a user mistypes it: one red line, an exit status, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from devtools.servers import free_port
from tests.helpers import product_env

pytestmark = pytest.mark.e2e
EXE = str(Path(sys.executable).with_name("attribution"))


def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = product_env()
    return subprocess.run(
        [EXE, *args], capture_output=True, text=True, timeout=120, env={**full_env, **(env or {})}, cwd=cwd
    )


@pytest.mark.parametrize(
    ("args", "status", "line"),
    [
        (
            ["lake-snk"],
            2,
            "error: No such command 'lake-snk'. Did you mean 'lake-sink', 'lake'? (see 'attribution --help')",
        ),
        (["frobnicate"], 2, "error: No such command 'frobnicate'. (see 'attribution --help')"),
        (
            ["lake-sink"],
            2,
            "error: Invalid value: the lake sink needs a Kafka broker (--broker-url kafka://host:port or "
            "ATTRIBUTION_REALTIME_BROKER_URL); `attribution land` lands files "
            "(see 'attribution lake-sink --help')",
        ),
        (
            ["worker", "--broker-url", "kafka://127.0.0.1:1"],
            3,
            "error: broker_url = 'kafka://127.0.0.1:1': no Kafka broker answers (KafkaConnectionError: "
            "Unable to bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)])",
        ),
        (["batch", "run"], 2, "error: Missing option '--start'. (see 'attribution batch run --help')"),
        (
            ["api-key", "create", "--name", "x", "--role", "admin", "--advertiser-id", "adv00"],
            2,
            "error: invalid input: field 'advertiser_id' = 'adv00': is required for an advertiser key, "
            "and only for one",
        ),
        (
            ["api-key", "create", "--name", "x", "--role", "root"],
            2,
            "error: Invalid value: role = 'root': must be admin, advertiser or ad_server "
            "(see 'attribution api-key create --help')",
        ),
        (
            ["budget", "show", "--catalog", "/no/such/catalog.yaml"],
            3,
            "error: catalog = '/no/such/catalog.yaml': no such file",
        ),
    ],
)
def test_mistakes_are_one_line_and_an_exit_status(args: list[str], status: int, line: str) -> None:
    out = _run(*args)
    assert out.returncode == status, out.stderr
    assert _said(out.stderr) == [line]
    assert "Traceback" not in out.stderr + out.stdout


def _said(stderr: str) -> list[str]:
    """The lines of stderr, without the note on the defaults a command uses (``cli.common.settings``)."""
    return [x for x in stderr.splitlines() if x.strip() and not x.startswith("note: using defaults:")]


def test_an_unknown_setting_is_refused_by_name() -> None:
    out = _run("budget", "show", env={"ATTRIBUTION_BATCH_LAKE_URL": "file:///tmp/x"})
    assert out.returncode == 2
    assert out.stderr.startswith("error: invalid setting: field 'ATTRIBUTION_BATCH_LAKE_URL'")
    assert "Extra inputs are not permitted" in out.stderr


def test_an_advertiser_key_needs_an_advertiser_of_the_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "campaigns:\n  - {campaign_id: c1, advertiser_id: adv01, lever: ad, merchant_ids: [m], currency: USD,"
        " pricing: {model: fixed, fee_minor: 1}}\n"
    )
    keys = tmp_path / "keys.yaml"
    base = [
        "api-key",
        "create",
        "--name",
        "a",
        "--role",
        "advertiser",
        "--keys-path",
        str(keys),
        "--catalog",
        str(catalog),
    ]
    typo = _run(*base, "--advertiser-id", "adv1")
    assert typo.returncode == 2
    assert "field 'advertiser_id' = 'adv1': has no campaign in the catalog" in typo.stderr
    assert not keys.exists()
    ok = _run(*base, "--advertiser-id", "adv01")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().startswith("ak_")
    assert "adv01" in keys.read_text()
    forced = _run(*base, "--advertiser-id", "adv-new", "--allow-unknown-advertiser")
    assert forced.returncode == 0
    assert "adv-new" in keys.read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["budget", "show"],
        ["realtime", "replay", "--synthetic-users", "1", "--no-progress"],
        ["batch", "run", "--start", "2026-11-01"],
        ["api-key", "create", "--name", "a", "--role", "advertiser", "--advertiser-id", "adv01"],
    ],
)
def test_every_entry_point_takes_a_cassandra_catalog(args: list[str]) -> None:
    """``--catalog cassandra://…`` reaches the Cassandra driver (no server runs here: 'no host')."""
    port = free_port()
    out = _run(*args, "--catalog", f"cassandra://127.0.0.1:{port}/attribution")
    assert out.returncode == 3, out.stderr
    assert _said(out.stderr) == [f"error: no Cassandra/ScyllaDB host answers (127.0.0.1:{port})"]
    same = _run(*args, env={"ATTRIBUTION_CATALOG_URL": f"cassandra://127.0.0.1:{port}/attribution"})
    assert (same.returncode, same.stderr) == (out.returncode, out.stderr)


def test_a_rerun_without_follow_names_the_days_it_would_leave_stale(tmp_path: Path) -> None:
    """``--no-follow`` refuses before Spark starts when later nights were built on the range."""
    import yaml

    from batch.checkpoints import Checkpoint
    from shared_logic.contract import SETTLEMENT_STATE, SETTLEMENT_STATE_ROW
    from storage import open_lake, partition
    from storage.arrow import arrow_schema
    from tests.factories import campaign, catalog

    lake = open_lake(f"file://{tmp_path}/lake")
    for day in (3, 4, 5):
        d = date(2026, 11, day)
        meta = Checkpoint(d, "0:00", "f", d - timedelta(days=1), "0:00", 0, ()).manifest()
        lake.write_partition(
            partition(SETTLEMENT_STATE, dt=d.isoformat()),
            arrow_schema(SETTLEMENT_STATE_ROW).empty_table(),
            meta,
        )
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"campaigns": catalog(campaign("ad1")).to_records()}))
    args = ["batch", "run", "--start", "2026-11-01", "--end", "2026-11-02", "--catalog", str(path)]
    out = _run(*args, "--no-follow", "--lake-url", lake.url)
    assert out.returncode == 2, out.stderr
    assert [x for x in out.stderr.splitlines() if x.strip()] == [
        "error: rerunning 2026-11-01..2026-11-02 would leave the checkpoints of 2026-11-03..2026-11-05 stale "
        "(they were built on its state): follow them (the default), or include them in the range"
    ]
