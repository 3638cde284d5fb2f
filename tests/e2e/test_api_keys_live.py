"""API keys managed while the API runs, over real HTTP: a key made with ``attribution api-key
create`` is accepted, and one removed with ``attribution api-key revoke`` refused, without a
restart (the API re-reads its key file when it changes, at most ``RELOAD_S`` seconds late);
``api-key list`` shows ids, names and roles, never keys."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devtools.livetraffic import live_catalog
from reporting.auth import RELOAD_S, add_key, read_keys
from tests.helpers import UNTHROTTLED, product_env, running_api

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EXE = str(Path(sys.executable).with_name("attribution"))


@pytest.fixture
def api(tmp_path: Path, redis_server: Any) -> Iterator[dict[str, Any]]:
    keys_path = tmp_path / "keys.yaml"
    admin = add_key(keys_path, "ops", "admin")
    catalog = tmp_path / "catalog.yaml"
    records = live_catalog(100, 1, 50).to_records()
    catalog.write_text(yaml.safe_dump({"campaigns": records}, sort_keys=False))
    env = product_env()
    env.update(
        UNTHROTTLED,
        ATTRIBUTION_API_KEYS_PATH=str(keys_path),
        ATTRIBUTION_REDIS_URL=redis_server.url,
        ATTRIBUTION_LAKE_URL=f"file://{tmp_path / 'lake'}",
        ATTRIBUTION_CATALOG_URL=str(catalog),
    )
    with running_api(env) as base:
        yield {"base": base, "admin": admin, "keys_path": keys_path, "env": env}


def _cli(api: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "api-key", *args],
        env={**api["env"], "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _status(api: dict[str, Any], key: str) -> int:
    return httpx.get(api["base"] + "/health", headers={"X-API-Key": key}, timeout=10).status_code


def _becomes(api: dict[str, Any], key: str, status: int) -> list[int]:
    """The statuses seen until ``key`` answers ``status``, or until well past the reload bound."""
    seen = []
    deadline = time.monotonic() + RELOAD_S + 10
    while time.monotonic() < deadline:
        seen.append(_status(api, key))
        if seen[-1] == status:
            return seen
        time.sleep(0.2)
    pytest.fail(f"the key never answered {status}: {seen[-5:]}")


def test_a_key_created_then_revoked_while_the_api_runs_is_accepted_then_refused(api: dict[str, Any]) -> None:
    assert _status(api, api["admin"]) == 200
    made = _cli(api, "create", "--name", "new ad server", "--role", "ad_server")
    assert made.returncode == 0, made.stderr
    key = made.stdout.split()[0]
    assert key.startswith("ak_")
    _becomes(api, key, 200)

    listed = _cli(api, "list")
    assert listed.returncode == 0, listed.stderr
    (new,) = [k for k in read_keys(api["keys_path"]) if k.name == "new ad server"]
    assert new.sha256[:12] in listed.stdout
    assert "ad_server" in listed.stdout
    assert "ops" in listed.stdout
    assert key not in listed.stdout  # only ids: the keys themselves are not kept

    revoked = _cli(api, "revoke", "--id", new.sha256[:12])
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout
    seen = _becomes(api, key, 401)
    assert _status(api, api["admin"]) == 200  # the other keys stay
    assert [k.name for k in read_keys(api["keys_path"])] == ["ops"]
    print(f"refused after {len(seen)} request(s), reload bound {RELOAD_S:g}s")


def test_revoke_refuses_an_ambiguous_or_unknown_key_and_removes_nothing(api: dict[str, Any]) -> None:
    add_key(api["keys_path"], "twin", "ad_server")
    add_key(api["keys_path"], "twin", "ad_server")
    before = read_keys(api["keys_path"])
    ambiguous = _cli(api, "revoke", "--name", "twin")
    assert ambiguous.returncode == 2
    assert "field 'name' = 'twin': matches 2 keys" in ambiguous.stderr, ambiguous.stderr
    unknown = _cli(api, "revoke", "--id", "0123456789ab")
    assert unknown.returncode == 2
    assert "field 'id' = '0123456789ab': matches no key" in unknown.stderr, unknown.stderr
    assert read_keys(api["keys_path"]) == before
