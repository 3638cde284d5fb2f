"""The API server's process freezes what its start-up allocated out of the collector's scans; an
app a test builds in its own process does not (the test process would keep its cyclic garbage)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from tests.factories import campaign, catalog

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    records = catalog(campaign("c1")).to_records()
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump({"campaigns": records}))
    monkeypatch.setenv("ATTRIBUTION_LAKE_URL", f"file://{tmp_path}/lake")
    monkeypatch.setenv("ATTRIBUTION_CATALOG_URL", str(tmp_path / "catalog.yaml"))
    monkeypatch.setenv("ATTRIBUTION_API_KEYS_PATH", str(tmp_path / "keys.yaml"))
    monkeypatch.setenv("ATTRIBUTION_REDIS_URL", redis_url)


async def _frozen_while_serving(app: Any) -> int:
    async with app.router.lifespan_context(app):
        return gc.get_freeze_count()


async def test_the_servers_app_freezes_its_start_up_and_a_tests_app_does_not(env: None) -> None:
    """Kills the mutant that never freezes (a full collection over the start-up's objects is a
    pause of tens of ms in some request: about 40 ms for 140k objects on this machine) and the one
    that freezes in every app."""
    from reporting.api import app_from_env, create_app

    gc.unfreeze()
    try:
        assert await _frozen_while_serving(create_app()) == 0
        assert await _frozen_while_serving(app_from_env()) > 10_000
    finally:
        gc.unfreeze()
