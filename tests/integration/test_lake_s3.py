"""The lake on S3, for real: an S3-compatible HTTP endpoint (moto's server) on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from devtools.servers import free_port
from devtools.synthetic import SyntheticConfig, generate
from shared_logic.settings import S3Settings
from storage import open_lake, partition
from storage.errors import LakeError, UnknownBackend
from storage.raw import land_events, read_raw, rows_to_payloads

pytestmark = pytest.mark.integration
BUCKET = "attribution-lake"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Settings]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    settings = S3Settings(endpoint_url=f"http://127.0.0.1:{port}", access_key="test", secret_key="test")
    import boto3

    boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    yield settings
    server.stop()


def test_partition_write_list_read_and_markers(s3: S3Settings) -> None:
    lake = open_lake(f"s3://{BUCKET}/prod", s3)
    ref = partition("metrics/campaign_daily", dt="2026-11-01")
    assert not lake.is_complete(ref)
    first = pa.table({"campaign_id": ["a", "b"], "spend_minor": [1, 2]})
    names = lake.write_partition(ref, first, meta={"job": "test"})
    assert lake.is_complete(ref)
    assert lake.manifest(ref)["rows"] == 2  # type: ignore[index]
    assert lake.files(ref) == [f"metrics/campaign_daily/dt=2026-11-01/{n}" for n in names]
    assert lake.read([ref]).to_pylist() == [
        {"campaign_id": "a", "spend_minor": 1, "dt": "2026-11-01"},
        {"campaign_id": "b", "spend_minor": 2, "dt": "2026-11-01"},
    ]
    # A rewrite replaces the partition whole; stale objects are deleted.
    lake.write_partition(ref, pa.table({"campaign_id": ["c"], "spend_minor": [9]}))
    assert [r["campaign_id"] for r in lake.read([ref]).to_pylist()] == ["c"]
    assert len(lake.list_parquet(ref)) == 1
    assert lake.partitions("metrics/campaign_daily") == [{"dt": "2026-11-01"}]


def test_raw_events_land_and_read_back_on_s3(s3: S3Settings) -> None:
    traffic = generate(SyntheticConfig(users=60, days=1, malformed_rate=0.05))
    lake = open_lake(f"s3://{BUCKET}/raw-test", s3)
    landed = land_events(lake, ((e.payload, e.arrival_ms) for e in traffic.events))
    assert landed.rejected == sum(e.malformed for e in traffic.events)
    table = read_raw(lake, traffic.config.start, traffic.config.start)
    payloads = rows_to_payloads(table)
    assert len(payloads) == landed.accepted
    assert {p["event_id"] for p in payloads} == {p["event_id"] for p in traffic.valid_payloads()}
    assert lake.partitions("dead_letters") == [{"dt": "2026-11-01"}]


def test_append_only_files_and_uri(s3: S3Settings) -> None:
    lake = open_lake(f"s3://{BUCKET}/ledger-test", s3)
    ref = partition("realtime_ledger", dt="2026-11-02")
    lake.put_file(ref, "part-s0-1-2.parquet", pa.table({"x": [1]}))
    lake.put_file(ref, "part-s0-1-2.parquet", pa.table({"x": [1]}))  # a retry: same name, same content
    lake.put_file(ref, "part-s0-3-4.parquet", pa.table({"x": [2]}))
    assert sorted(r["x"] for r in lake.read([ref]).to_pylist()) == [1, 2]
    assert lake.uri("raw") == f"s3a://{BUCKET}/ledger-test/raw"


@pytest.mark.parametrize(
    ("url", "error", "rule"),
    [
        ("ftp://x/y", UnknownBackend, "scheme must be one of file://, s3://, s3a://"),
        ("s3:///nobucket", LakeError, "an s3:// url needs a bucket"),
    ],
)
def test_bad_lake_urls(url: str, error: type[Exception], rule: str, s3: Any) -> None:
    with pytest.raises(error, match=f"lake url.*{rule}"):
        open_lake(url, s3)
