"""Markov-chain attribution of order k, with removal effects solved exactly.

The chain has a start state, one transient state per observed run of the last
``k`` channels, and two absorbing states (conversion, null). Transition
probabilities are the path aggregates' counts, weighted by conversions plus
nulls. Conversion probability from the start solves ``(I - Q) x = b`` (dense
LU below ``DENSE_LIMIT`` states, above it a fixed-point iteration over the
sparse matrix run to machine precision). The removal effect of a channel is
``1 - P(conversion | channel removed) / P(conversion)``, where removing a
channel sends every state that contains it to null. Credit is shared in
proportion to removal effects. No simulation, so the result is deterministic.

Conventions, as in ChannelAttribution: states are the path's runs of ``k``
channels from the first full run on (a shorter path is a single state);
self-loops are dropped, so at order 1 consecutive repeats collapse
(``a > a > b`` is ``a > b``) while at order 2 ``a > a > b`` is ``(a, a) -> (a, b)``.
Value is attributed by removal effects
computed on expected conversion value, where a conversion from a state is worth
the mean value of the conversions observed leaving that state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Self

import numpy as np
import numpy.typing as npt

from attribution_models.base import DataDrivenModel
from attribution_models.errors import ModelError
from attribution_models.types import PathStats

log = logging.getLogger(__name__)

DENSE_LIMIT = 2_500
_TOLERANCE = 1e-15
_MAX_ITERATIONS = 1_000_000

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def collapse_repeats(path: Sequence[str]) -> tuple[str, ...]:
    """``a > a > b > b > a`` -> ``a > b > a``."""
    out: list[str] = []
    for ch in path:
        if not out or out[-1] != ch:
            out.append(ch)
    return tuple(out)


def _states(path: tuple[str, ...], order: int) -> list[tuple[str, ...]]:
    """The chain's states along a path: its sliding runs of ``order`` channels.

    A path shorter than the order is one state. Consecutive repeats are kept
    (``a > a > b`` at order 2 is ``(a, a) -> (a, b)``) and equal consecutive
    states become self-loops, which are dropped.
    """
    if len(path) <= order:
        return [path]
    return [path[i : i + order] for i in range(len(path) - order + 1)]


class _Chain:
    """Sparse transition structure over transient states (index 0 is the start)."""

    def __init__(self, paths: Sequence[PathStats], order: int) -> None:
        index: dict[tuple[str, ...], int] = {(): 0}
        edges: dict[tuple[int, int], float] = {}
        out_weight: dict[int, float] = {}
        conv_weight: dict[int, float] = {}
        value_at: dict[int, float] = {}
        for p in paths:
            weight = p.conversions + p.nulls
            if not p.path or weight <= 0:
                continue
            prev = 0
            for state in _states(p.path, order):
                cur = index.setdefault(state, len(index))
                if cur == prev:  # a self-loop changes no absorption probability
                    continue
                edges[(prev, cur)] = edges.get((prev, cur), 0.0) + weight
                out_weight[prev] = out_weight.get(prev, 0.0) + weight
                prev = cur
            out_weight[prev] = out_weight.get(prev, 0.0) + weight
            conv_weight[prev] = conv_weight.get(prev, 0.0) + p.conversions
            value_at[prev] = value_at.get(prev, 0.0) + p.value
        self.states = list(index)
        self.size = len(index)
        keys = list(edges)
        self.rows: IntArray = np.fromiter((k[0] for k in keys), np.int64, len(keys))
        self.cols: IntArray = np.fromiter((k[1] for k in keys), np.int64, len(keys))
        totals_out = np.zeros(self.size)
        for s, w in out_weight.items():
            totals_out[s] = w
        weights = np.fromiter((edges[k] for k in keys), np.float64, len(keys))
        with np.errstate(divide="ignore", invalid="ignore"):
            self.probs: FloatArray = np.where(totals_out[self.rows] > 0, weights / totals_out[self.rows], 0.0)
        self.to_conv: FloatArray = np.zeros(self.size)
        self.mean_value: FloatArray = np.zeros(self.size)
        for s, c in conv_weight.items():
            if totals_out[s] > 0:
                self.to_conv[s] = c / totals_out[s]
            if c > 0:
                self.mean_value[s] = value_at[s] / c
        channels: dict[str, list[int]] = {}
        for s, state in enumerate(self.states):
            for ch in set(state):
                channels.setdefault(ch, []).append(s)
        self.states_of: dict[str, IntArray] = {ch: np.asarray(v, np.int64) for ch, v in channels.items()}

    def absorb(self, b: FloatArray, removed: IntArray | None) -> float:
        """Probability-weighted ``b`` reached from the start with ``removed`` states cut to null."""
        keep = np.ones(self.size, dtype=bool)
        if removed is not None:
            keep[removed] = False
        b = np.where(keep, b, 0.0)
        live = keep[self.rows]
        rows, cols, probs = self.rows[live], self.cols[live], self.probs[live]
        if self.size <= DENSE_LIMIT:
            a = np.eye(self.size)
            np.subtract.at(a, (rows, cols), probs)
            try:
                x = np.linalg.solve(a, b)
            except np.linalg.LinAlgError:
                # Singular only for a closed loop no path leaves, which data can't produce;
                # least squares keeps the answer finite whatever the input.
                log.warning("singular transition matrix (%d states); using least squares", self.size)
                x = np.linalg.lstsq(a, b, rcond=None)[0]
            return float(x[0])
        x = b.copy()
        for _ in range(_MAX_ITERATIONS):
            nxt = b + np.bincount(rows, weights=probs * x[cols], minlength=self.size)
            if np.max(np.abs(nxt - x)) <= _TOLERANCE:
                return float(nxt[0])
            x = nxt
        raise ModelError(f"Markov chain of {self.size} states did not converge")


class Markov(DataDrivenModel):
    """Data-driven attribution by removal effects of an order-``k`` Markov chain."""

    name = "markov"

    def __init__(self, order: int = 1) -> None:
        if not isinstance(order, int) or order < 1:
            raise ModelError(f"order = {order!r}: must be an integer >= 1")
        self.order = order
        self.removal_effects: dict[str, float] = {}
        self.removal_effects_value: dict[str, float] = {}
        self.conversion_probability = 0.0

    def fit(self, paths: Sequence[PathStats]) -> Self:
        chain = _Chain(paths, self.order)
        base = chain.absorb(chain.to_conv, None)
        base_value = chain.absorb(chain.to_conv * chain.mean_value, None)
        effects: dict[str, float] = {}
        effects_value: dict[str, float] = {}
        for ch, states in sorted(chain.states_of.items()):
            if base > 0:
                effects[ch] = _clip01(1.0 - chain.absorb(chain.to_conv, states) / base)
            else:
                effects[ch] = 0.0
            if base_value > 0:
                removed_value = chain.absorb(chain.to_conv * chain.mean_value, states)
                effects_value[ch] = _clip01(1.0 - removed_value / base_value)
            else:
                effects_value[ch] = effects[ch]
        self.removal_effects = effects
        self.removal_effects_value = effects_value
        self.conversion_probability = base
        self._fitted = True
        return self

    def channel_weights(self) -> tuple[dict[str, float], dict[str, float]]:
        return self.removal_effects, self.removal_effects_value

    def details(self) -> dict[str, object]:
        return {"removal_effects": dict(self.removal_effects), "order": self.order}


def _clip01(x: float) -> float:
    return 0.0 if not np.isfinite(x) or x < 0 else min(x, 1.0)
