"""Shapley-value attribution over channel coalitions.

A coalition is the set of distinct channels of a path; its conversion rate is
``r(T) = conversions(T) / (conversions(T) + nulls(T))`` over the paths whose
channel set is exactly ``T`` (value rate likewise, with value). Two
characteristic functions are offered:

``additive`` (default; Zhao et al. 2018, "Shapley value methods for attribution
  modeling in online advertising"): ``v(S) = sum of r(T) for T subset of S``.
  This game is a sum of unanimity games, so the exact Shapley value is each
  coalition's rate split equally among its members (its Harsanyi dividend):
  ``phi_i = sum over T containing i of r(T) / |T|``. Exact for any number of
  channels, in time linear in the number of distinct coalitions.

``subset_rate``: ``v(S)`` is the conversion rate of the paths that use only
  channels in ``S``. Not additive, so Shapley values are computed exactly by
  enumerating all ``2 ** n`` coalitions (subset sums by a zeta transform, then
  the weighted marginal contributions), which caps it at ``MAX_EXACT_CHANNELS``
  channels. Past the cap it falls back to ``additive`` and says so in the
  result's details and the log. Negative contributions (a channel whose paths
  convert worse) are clipped to zero before shares are taken, so no credit is
  ever negative.

Credited conversions (value) are the Shapley shares times total conversions
(value), so totals always balance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from math import factorial
from typing import Self

import numpy as np

from attribution_models.base import DataDrivenModel
from attribution_models.errors import ModelError
from attribution_models.types import PathStats

log = logging.getLogger(__name__)

MAX_EXACT_CHANNELS = 18
CHARACTERISTICS = ("additive", "subset_rate")


class Shapley(DataDrivenModel):
    """Exact Shapley values of channels from coalition conversion rates."""

    name = "shapley"

    def __init__(
        self, characteristic: str = "additive", max_exact_channels: int = MAX_EXACT_CHANNELS
    ) -> None:
        if characteristic not in CHARACTERISTICS:
            raise ModelError(
                f"characteristic = {characteristic!r}: must be one of {', '.join(CHARACTERISTICS)}"
            )
        if not 1 <= max_exact_channels <= 24:
            raise ModelError(f"max_exact_channels = {max_exact_channels}: must be in 1..24")
        self.characteristic = characteristic
        self.max_exact_channels = max_exact_channels
        self.weights: dict[str, float] = {}
        self.weights_value: dict[str, float] = {}
        self.method = characteristic

    def fit(self, paths: Sequence[PathStats]) -> Self:
        coalitions: dict[frozenset[str], list[float]] = {}
        channels: set[str] = set()
        for p in paths:
            if not p.path:
                continue
            key = frozenset(p.path)
            channels |= key
            slot = coalitions.setdefault(key, [0.0, 0.0, 0.0])
            slot[0] += p.conversions
            slot[1] += p.value
            slot[2] += p.nulls
        names = sorted(channels)
        self.method = self.characteristic
        if self.characteristic == "subset_rate" and len(names) > self.max_exact_channels:
            log.warning(
                "shapley: %d channels exceed the exact cap of %d; falling back to the additive game",
                len(names),
                self.max_exact_channels,
            )
            self.method = "additive (fallback)"
        if self.method == "subset_rate":
            self.weights, self.weights_value = _subset_rate(names, coalitions)
        else:
            self.weights, self.weights_value = _additive(names, coalitions)
        self._fitted = True
        return self

    def channel_weights(self) -> tuple[dict[str, float], dict[str, float]]:
        return self.weights, self.weights_value

    def details(self) -> dict[str, object]:
        return {"method": self.method, "shapley_values": dict(self.weights)}


def _rates(slot: list[float]) -> tuple[float, float]:
    conv, value, nulls = slot
    n = conv + nulls
    return (conv / n, value / n) if n > 0 else (0.0, 0.0)


def _additive(
    names: list[str], coalitions: dict[frozenset[str], list[float]]
) -> tuple[dict[str, float], dict[str, float]]:
    phi = dict.fromkeys(names, 0.0)
    phi_v = dict.fromkeys(names, 0.0)
    for members, slot in coalitions.items():
        rate, value_rate = _rates(slot)
        for ch in members:
            phi[ch] += rate / len(members)
            phi_v[ch] += value_rate / len(members)
    return phi, phi_v


def _subset_rate(
    names: list[str], coalitions: dict[frozenset[str], list[float]]
) -> tuple[dict[str, float], dict[str, float]]:
    n = len(names)
    if n == 0:
        return {}, {}
    bit = {ch: 1 << i for i, ch in enumerate(names)}
    size = 1 << n
    conv = np.zeros(size)
    value = np.zeros(size)
    count = np.zeros(size)
    for members, (c, v, nulls) in coalitions.items():
        mask = sum(bit[ch] for ch in members)
        conv[mask] += c
        value[mask] += v
        count[mask] += c + nulls
    masks = np.arange(size)
    for i in range(n):  # zeta transform: totals over all subsets of each mask
        has = (masks >> i) & 1 == 1
        for arr in (conv, value, count):
            arr[has] += arr[masks[has] ^ (1 << i)]
    with np.errstate(divide="ignore", invalid="ignore"):
        v_conv = np.where(count > 0, conv / count, 0.0)
        v_value = np.where(count > 0, value / count, 0.0)
    popcount = np.array([bin(m).count("1") for m in range(size)])
    weight = np.array([factorial(k) * factorial(n - k - 1) / factorial(n) for k in range(n)])
    phi: dict[str, float] = {}
    phi_v: dict[str, float] = {}
    for ch, b in bit.items():
        without = masks[(masks & b) == 0]
        w = weight[popcount[without]]
        phi[ch] = max(float(np.sum(w * (v_conv[without | b] - v_conv[without]))), 0.0)
        phi_v[ch] = max(float(np.sum(w * (v_value[without | b] - v_value[without]))), 0.0)
    return phi, phi_v
