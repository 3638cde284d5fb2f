"""Our Markov (k = 1, 2) and Shapley against ChannelAttribution's ``markov_model``.

Both sides start from the same pandas frame of path aggregates (ours includes
turning the frame into ``PathStats``). ChannelAttribution runs with its
defaults (1e5 simulated walks); ours is exact. Best of 3 runs each.
"""

from __future__ import annotations

import pandas as pd

from attribution_models import get_model, paths_from_columns
from benchmarks._harness import Row, best_of, console, print_table, quick
from devtools.peers import ca_markov
from devtools.synthetic import random_path_records


def _peer_markov(frame: pd.DataFrame, order: int) -> pd.DataFrame:
    return ca_markov(frame, order)  # type: ignore[no-any-return]


def _ours(frame: pd.DataFrame, name: str, **params: object) -> object:
    paths = paths_from_columns(
        frame["path"].tolist(),
        frame["total_conversions"].to_numpy(),
        frame["total_conversion_value"].to_numpy(),
        frame["total_null"].to_numpy(),
    )
    return get_model(name, **params).attribute(paths)


def run() -> list[Row]:
    sizes = [10_000] if quick() else [100_000, 1_000_000]
    rows: list[Row] = []
    for n in sizes:
        console.print(f"[dim]models: generating {n:,} path aggregates[/dim]")
        frame = pd.DataFrame(random_path_records(n, channels=12, seed=n))
        for order in (1, 2):
            ours, _ = best_of(lambda f=frame, o=order: _ours(f, "markov", order=o))
            peer, _ = best_of(lambda f=frame, o=order: _peer_markov(f, o))
            rows.append(Row(f"markov k={order}, {n:,} paths", ours, peer, note="exact vs simulated"))
        ours, _ = best_of(lambda f=frame: _ours(f, "shapley"))
        peer, _ = best_of(lambda f=frame: _peer_markov(f, 1))
        rows.append(Row(f"shapley, {n:,} paths", ours, peer, note="baseline: CA markov k=1"))
    print_table("Attribution models: ours vs ChannelAttribution", rows, baseline="ChannelAttribution")
    return rows


if __name__ == "__main__":
    run()
