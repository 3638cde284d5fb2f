"""Checkpoint lineage: which later nights a rerun makes stale, and what a checkpoint depends on."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from batch.checkpoints import Checkpoint, describe, fingerprint, is_stale
from shared_logic import Catalog
from shared_logic.settings import Settings
from tests.factories import campaign

pytestmark = pytest.mark.unit
D = date(2026, 11, 10)


def _later(day: date, parent: date | None, digest: str | None = "p") -> Checkpoint:
    return Checkpoint(day, "x", "f", parent, digest if parent else None, 1, ())


def test_a_night_built_on_a_rerun_day_is_stale_only_when_that_state_changed() -> None:
    rerun = {D: ("old", "new")}
    assert is_stale(_later(D + timedelta(days=1), D, "old"), rerun)
    assert not is_stale(_later(D + timedelta(days=1), D, "new"), rerun)
    # Recomputed to the same state: the next night stands.
    assert not is_stale(_later(D + timedelta(days=1), D, "same"), {D: ("same", "same")})


def test_a_night_that_settled_a_changed_day_itself_is_stale() -> None:
    changed, unchanged = {D: ("old", "new")}, {D: ("same", "same")}
    chained_over = _later(D + timedelta(days=2), D - timedelta(days=1))  # its own run settled D
    from_scratch = _later(D + timedelta(days=2), None)
    assert is_stale(chained_over, changed)
    assert is_stale(from_scratch, changed)
    assert not is_stale(chained_over, unchanged)
    assert not is_stale(from_scratch, unchanged)
    # Built on a later checkpoint that the rerun did not reach: it depends on D only through it.
    assert not is_stale(_later(D + timedelta(days=3), D + timedelta(days=2)), changed)
    # A day recomputed after it (a follow of a later day) is no parent of it.
    assert not is_stale(_later(D, D - timedelta(days=1)), {D + timedelta(days=1): ("a", "b")})


def test_checkpoint_manifests_round_trip_and_days_read_as_ranges() -> None:
    c = Checkpoint(D, "3:ab", "f1", D - timedelta(days=1), "2:cd", 3, ())
    meta = {**c.manifest(), "files": ["part-1.parquet"], "job": "nightly"}
    assert Checkpoint.from_manifest(D, meta) == Checkpoint(
        D, "3:ab", "f1", c.parent_day, "2:cd", 3, ("part-1.parquet",)
    )
    scratch = Checkpoint(D, "0:00", "f1", None, None, 0, ())
    assert scratch.manifest()["parent"] is None
    assert Checkpoint.from_manifest(D, scratch.manifest()) == scratch
    assert Checkpoint.from_manifest(D, {"files": []}) is None  # a manifest of something else
    days = [date(2026, 11, d) for d in (3, 4, 5, 9, 11, 12)]
    assert describe(days) == "2026-11-03..2026-11-05, 2026-11-09, 2026-11-11..2026-11-12"


def test_the_fingerprint_moves_with_what_settlement_depends_on_and_nothing_else() -> None:
    catalog = Catalog([campaign("ad1"), campaign("ad2")])
    base = fingerprint(catalog, Settings(), D)
    assert fingerprint(Catalog([campaign("ad2"), campaign("ad1")]), Settings(), D) == base
    assert fingerprint(catalog, Settings().replace(batch_models=("linear",), batch_refresh_days=1), D) == base
    moved = [
        fingerprint(
            Catalog([campaign("ad1"), campaign("ad2", budget={"lifetime_minor": 500})]), Settings(), D
        ),
        fingerprint(catalog, Settings().replace(rules_allowed_lateness_ms=1), D),
        fingerprint(catalog, Settings().replace(rules_max_future_ms=1), D),
        fingerprint(catalog, Settings().replace(rules_cancel_horizon_days=3), D),
        fingerprint(catalog, Settings(), D - timedelta(days=1)),
    ]
    assert base not in moved
    assert len(set(moved)) == len(moved)
