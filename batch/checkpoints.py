"""Settlement checkpoints in the lake: where a night's job starts, and what a rerun makes stale.

A checkpoint is the partition ``settlement_state/dt=D/`` (rows: ``SETTLEMENT_STATE_ROW``, the
``ChargeBook`` state after every action due before the first decision of D+1; why that boundary
is in ``batch.job``). Like every partition it is committed by its manifest, written last; a
folder without one is no checkpoint. The manifest says what the state was computed from:

- ``fingerprint``: a hash of what settlement depends on besides the raw events (the catalog,
  the allowed lateness, the future bound, the cancel horizon, the first day of history). A
  night only continues from a checkpoint of its own fingerprint.
- ``parent``: the checkpoint the job started from (``{"dt", "digest"}``), or null when it
  settled from the start of history.
- ``digest``: a hash of the rows (a count and the XOR of a 64-bit hash of each row, so it
  does not depend on row order or files). A later checkpoint built on this one records it
  as its parent's digest, so after a rerun of D, a later day is stale exactly when the
  digest it was built on differs from D's new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

from shared_logic import Catalog
from shared_logic.contract import SETTLEMENT_STATE
from shared_logic.settings import Settings
from storage.lake import Lake, partition

log = logging.getLogger(__name__)

#: Bumped when the checkpoint's meaning changes: older checkpoints then no longer match.
FORMAT = 1


def fingerprint(catalog: Catalog, config: Settings, history: date) -> str:
    """What a checkpoint's state depends on besides the raw events, as a short hash."""
    data = {
        "format": FORMAT,
        "catalog": sorted(catalog.to_records(), key=lambda r: str(r["campaign_id"])),
        "allowed_lateness_ms": config.rules.allowed_lateness_ms,
        "max_future_ms": config.rules.max_future_ms,
        "cancel_horizon_days": config.rules.cancel_horizon_days,
        "history": history.isoformat(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A committed checkpoint, as its manifest describes it."""

    day: date
    digest: str
    fingerprint: str
    parent_day: date | None
    parent_digest: str | None
    rows: int
    files: tuple[str, ...]

    @classmethod
    def from_manifest(cls, day: date, meta: dict[str, Any]) -> Checkpoint | None:
        if "digest" not in meta or "fingerprint" not in meta:
            return None
        parent = meta.get("parent") or {}
        return cls(
            day,
            str(meta["digest"]),
            str(meta["fingerprint"]),
            date.fromisoformat(parent["dt"]) if parent else None,
            str(parent["digest"]) if parent else None,
            int(meta.get("rows", 0)),
            tuple(meta.get("files", ())),
        )

    def manifest(self) -> dict[str, Any]:
        parent = (
            {"dt": self.parent_day.isoformat(), "digest": self.parent_digest}
            if self.parent_day is not None
            else None
        )
        return {"digest": self.digest, "fingerprint": self.fingerprint, "parent": parent, "rows": self.rows}


def read_checkpoint(lake: Lake, day: date) -> Checkpoint | None:
    """The committed checkpoint of ``day``, or None."""
    meta = lake.manifest(partition(SETTLEMENT_STATE, dt=day.isoformat()))
    return Checkpoint.from_manifest(day, meta) if meta is not None else None


def checkpoint_days(lake: Lake) -> list[date]:
    """Days with a checkpoint folder (committed or not), sorted: one listing."""
    return sorted(date.fromisoformat(p["dt"]) for p in lake.partitions(SETTLEMENT_STATE.path, depth=1))


def latest_before(lake: Lake, day: date, wanted: str) -> Checkpoint | None:
    """The latest committed checkpoint before ``day`` with the fingerprint ``wanted``.

    Normally D-1's. When D-1 has none (a night that never ran, a failed one), the job chains
    back to the latest one before it and settles the days between itself: its cost grows with
    the gap, not with the lake's age. None: settle from the start of history.
    """
    for d in reversed([d for d in checkpoint_days(lake) if d < day]):
        found = read_checkpoint(lake, d)
        if found is None:
            log.info("checkpoint %s: no manifest, skipped", d)
        elif found.fingerprint != wanted:
            log.info("checkpoint %s: computed from another catalog or settings, skipped", d)
        else:
            return found
    return None


def later_checkpoints(lake: Lake, after: date) -> list[Checkpoint]:
    """Committed checkpoints of the days after ``after``, oldest first."""
    found = (read_checkpoint(lake, d) for d in checkpoint_days(lake) if d > after)
    return [c for c in found if c is not None]


def is_stale(later: Checkpoint, rerun: dict[date, tuple[str | None, str]]) -> bool:
    """Whether ``later`` was built on state a rerun changed.

    ``rerun`` maps each day recomputed so far (before ``later.day``) to the digest its
    checkpoint had before and has now. ``later`` is stale when it was built on one of them
    and that one's digest is no longer the one it recorded, or when it settled a recomputed
    day itself (chained back over it, or from scratch) and that day's state changed.
    """
    for day, (before, after) in rerun.items():
        if day >= later.day:
            continue
        if later.parent_day == day:
            if later.parent_digest != after:
                return True
        elif (later.parent_day is None or later.parent_day < day) and before != after:
            return True
    return False


def describe(days: list[date]) -> str:
    """Days as short ranges: ``2026-11-03..2026-11-05, 2026-11-09``."""
    spans: list[list[date]] = []
    for d in sorted(days):
        if spans and (d - spans[-1][1]).days == 1:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    return ", ".join(a.isoformat() if a == b else f"{a}..{b}" for a, b in spans)
