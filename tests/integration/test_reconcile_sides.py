"""A reconciliation row ``missing`` says from which layer the order is missing (``missing_from``),
and the summary counts them per layer: the cases and the Spark run are test_reconcile's."""

from __future__ import annotations

import pytest

from tests.integration import test_reconcile as base
from tests.integration.test_reconcile import Run

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# test_reconcile's module fixtures, registered here under these names
built, reconciled = base.built, base.run


def test_a_missing_order_says_from_which_layer_it_is_missing(reconciled: Run) -> None:
    run = reconciled
    # o_missing_bt: only batch decided it, so the speed layer's ledger lacks it; o_missing_rt the reverse
    assert (run.rows["o_missing_bt"]["status"], run.rows["o_missing_bt"]["missing_from"]) == (
        "missing",
        "realtime",
    )
    assert (run.rows["o_missing_rt"]["status"], run.rows["o_missing_rt"]["missing_from"]) == (
        "missing",
        "batch",
    )
    assert run.rows["o_match"]["missing_from"] is None
    assert sum(run.result.missing.values()) == run.result.causes["missing"]
    assert run.result.missing["realtime"] >= 1
    assert run.result.missing["batch"] >= 1
    assert run.manifest["missing_from"] == run.result.missing
