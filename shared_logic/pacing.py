"""The pacing controller: a serve probability per campaign that makes its budget last the day.

Pure and deterministic: the speed layer calls ``step`` on a short event-time interval with what
Redis holds, and stores the returned ``PacingState``; the ad server serves a campaign with the
state's ``probability`` (a pass-through rate, as LinkedIn's budget pacing calls it).

Cost-per-order spend arrives late (a click at 09:00 is charged at 09:40, or on day 6 of its
window), so the controller counts the **in-flight liability** ``L`` (the expected charge of
touches served and still open, see ``in_flight_liability``) as spent already. With spend ``S``
of the budget day so far and the caps, what is left to commit is

    R = min(daily_cap − S_day, lifetime_cap − S_life) − L

The **target curve** ``W(t)`` is the share of the day's traffic seen by ``t`` (from the campaign's
traffic by local hour, ``TrafficShape``; flat without history), rescaled to reach 1 at the
spend-out point ``day end − margin``. The controller keeps an estimate ``F`` of the committed
spend (charges landing inside the budget day) the campaign would make over a whole day served at
probability 1: a ratio of exponentially decayed sums, each step adding what it committed over
the exposure it served (``p · ΔW``):

    F = Σ λᵏ ΔCₖ / Σ λᵏ pₖ ΔWₖ          (λ from ``estimate_half_life_ms``)

``ΔC = ΔN · v``: the touches served since the previous step times ``v``, the expected charge
inside the budget day of one touch served now (``touch_value_minor``, from the learned
conversion rate, the charge and the delay distribution). Not the realised ``ΔS + ΔL``: with a
few dozen orders a day each landing order is several % of the cap, and an estimate fed by when
orders happen to land swings by 10x. (Without a touch value, the realised ``ΔC`` is the fallback.)

Served at ``p`` the campaign commits ``p · F · ΔW`` over a stretch of the curve. The controller
aims the **spend itself** at the curve a horizon ``H`` ahead (``track_horizon_ms``, 1 h; ``τ =
t + H``): the liability is assumed to run down linearly to the day's end ``T`` (what lands
meanwhile is spend, ``L · (τ − t) / (T − t)``), so the probability that brings the spend to
``cap · W(τ)`` at ``τ``, never committing more than ``R``, is

    p* = clamp(min(cap · W(τ) − S − L · (τ − t)/(T − t), R) / (F · (W(τ) − W(t))), 0, 1)

Near the end (``τ`` past the spend-out point) this is ``R / (F · (1 − W(t)))``, the terminal
rule: spend what is left by the spend-out point (also used with ``H = 0`` or no daily cap).

and the new probability moves towards it by at most a bounded step (``max_step``, ±10% in
LinkedIn's controller, KDD 2014), ``p ← clamp(p*, p(1 − s), p(1 + s))`` within
``[min_probability, 1]``. Without an estimate yet (nothing committed), ``p`` rises by a step; the
first step of a budget day starts from ``start_probability`` (cautious, as LinkedIn's does).

**A gap of k intervals** (a step that follows the previous one of the same budget day by ``k``
step intervals: the speed layer skips the steps of a catch-up, or a quiet stream moved no
watermark) moves ``p`` by up to ``k`` bounded steps, ``clamp(p*, p(1 − s)ᵏ, p(1 + s)ᵏ)``, not
by one and not from ``start_probability`` again. Why: the bound limits how fast ``p`` moves per
unit of event time (±10% a minute), not per call; and ``F`` integrates the whole gap (its sums
decay by the gap's length and add its ``ΔC`` over ``p · ΔW``), so ``p*`` after a gap is as well
informed as after ``k`` steps. Restarting cautiously would drop an established ``p`` to
``start_probability`` after every catch-up and take tens of live intervals to climb back, an
ad server would see a dip only because the worker had been behind; a single step would leave
``p`` lagging ``p*`` by ``k − 1`` steps. A new budget day still starts from
``start_probability`` with one step, whatever the gap.

Hard limits override the bounded step: no cap gives 1.0, a spent cap (``R + L ≤ 0``: real spend,
not liability) gives 0.0. Delivery mode ``asap`` (Google's accelerated delivery) aims at
``p* = 1`` while ``R > 0`` and at ``0`` once the liability fills what is left; ``even``
(standard delivery, the default with a daily cap) follows the curve.

Monotone in spend: more spend lowers ``R`` and raises ``F``'s newest ``ΔC``, both lower ``p*``,
and the clamp keeps the order, so the probability never rises with spend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from shared_logic.money import caps_left

HOUR_MS = 3_600_000
#: The least ``F`` (spend a full day at p = 1, minor units) the controller divides by (``_aim``).
_MIN_FULL_MINOR = 1e-9


class DeliveryMode(StrEnum):
    """How a capped campaign spends through its day (Google Ads' standard and accelerated)."""

    EVEN = "even"
    ASAP = "asap"


@dataclass(frozen=True, slots=True)
class PacingConfig:
    """The controller's constants (``PacingSettings`` in the settings tree carries the same)."""

    max_step: float = 0.10
    start_probability: float = 0.10
    min_probability: float = 0.001
    estimate_half_life_ms: int = 30 * 60_000
    spend_out_margin_ms: int = HOUR_MS
    track_horizon_ms: int = HOUR_MS

    def __post_init__(self) -> None:
        if not 0 < self.max_step < 1:
            raise ValueError(f"max_step = {self.max_step}: must be in (0, 1)")
        if not 0 < self.min_probability <= self.start_probability <= 1:
            raise ValueError(
                f"start_probability = {self.start_probability}, min_probability = {self.min_probability}: "
                "need 0 < min_probability <= start_probability <= 1"
            )
        if self.estimate_half_life_ms <= 0:
            raise ValueError(f"estimate_half_life_ms = {self.estimate_half_life_ms}: must be positive")
        if self.spend_out_margin_ms < 0:
            raise ValueError(f"spend_out_margin_ms = {self.spend_out_margin_ms}: must not be negative")
        if self.track_horizon_ms < 0:
            raise ValueError(f"track_horizon_ms = {self.track_horizon_ms}: must not be negative")


@dataclass(frozen=True, slots=True)
class TrafficShape:
    """Relative traffic per hour of the campaign's local day (24 weights, hour 0 first).

    The target curve follows it: a campaign whose users come in the evening spends in the
    evening. ``flat()`` when there is no history.
    """

    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != 24:
            raise ValueError(f"weights = {len(self.weights)} values: need 24, one per local hour")
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"weights = {self.weights!r}: must be finite, non-negative, not all 0")

    @classmethod
    def flat(cls) -> TrafficShape:
        return cls((1.0,) * 24)

    @classmethod
    def from_counts(cls, counts: Sequence[float], prior: float = 1.0) -> TrafficShape:
        """The shape of previous days' touches by local hour, each hour smoothed by ``prior``
        touches so an hour never seen keeps a little weight (flat when ``counts`` sum to 0)."""
        if len(counts) != 24:
            raise ValueError(f"counts = {len(counts)} values: need 24, one per local hour")
        if any(c < 0 for c in counts):
            raise ValueError(f"counts = {list(counts)!r}: must not be negative")
        if sum(counts) <= 0:
            return cls.flat()
        return cls(tuple(float(c) + prior for c in counts))

    @classmethod
    def from_exposure(
        cls, touches: Sequence[float], exposure_h: Sequence[float], prior_h: float = 1 / 60
    ) -> TrafficShape:
        """The shape of the requests themselves, not of what the controller let through: per local
        hour, touches served over the exposure that served them (``exposure_h``: hours of serving
        at ``p = 1``, i.e. ``Σ p · Δt``), each hour shrunk towards the day's mean rate by
        ``prior_h`` hours of exposure, so an hour served little (or not at all, the cap spent)
        keeps the mean (flat when nothing was exposed)."""
        if len(touches) != 24 or len(exposure_h) != 24:
            raise ValueError(f"touches, exposure_h = {len(touches)}, {len(exposure_h)} values: need 24 each")
        if any(t < 0 for t in touches) or any(e < 0 for e in exposure_h) or prior_h <= 0:
            raise ValueError(
                f"touches = {list(touches)!r}, exposure_h = {list(exposure_h)!r}: must not be negative"
            )
        seen, exposed = sum(touches), sum(exposure_h)
        if seen <= 0 or exposed <= 0:
            return cls.flat()
        mean = seen / exposed
        return cls(
            tuple((t + prior_h * mean) / (e + prior_h) for t, e in zip(touches, exposure_h, strict=True))
        )

    def share(self, elapsed_ms: int, day_ms: int) -> float:
        """Share of the day's traffic seen ``elapsed_ms`` after local midnight, in [0, 1].

        Hours count by elapsed time from local midnight, so a 23- or 25-hour day (a DST change)
        is measured in real hours; a 25th hour weighs like the 24th.
        """
        hours = max(day_ms, 1) / HOUR_MS
        full = max(min(elapsed_ms, day_ms), 0) / HOUR_MS
        total = 0.0
        seen = 0.0
        h = 0
        while h < hours:
            length = min(1.0, hours - h)
            w = self.weights[min(h, 23)] * length
            total += w
            if full >= h + length:
                seen += w
            elif full > h:
                seen += w * (full - h) / length
            h += 1
        return min(seen / total, 1.0)


@dataclass(frozen=True, slots=True)
class PacingInput:
    """What the controller reads at one step (money in minor units of the campaign's currency)."""

    now_ms: int
    day: str
    day_start_ms: int
    day_end_ms: int
    daily_cap_minor: int | None
    lifetime_cap_minor: int | None
    spend_day_minor: int
    spend_lifetime_minor: int
    liability_minor: float = 0.0
    mode: DeliveryMode = DeliveryMode.EVEN
    shape: TrafficShape | None = None
    served_touches: int = 0
    touch_value_minor: float = 0.0

    def __post_init__(self) -> None:
        if self.day_end_ms <= self.day_start_ms:
            raise ValueError(f"day_end_ms = {self.day_end_ms}: must be after day_start_ms")
        for name in ("spend_day_minor", "spend_lifetime_minor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}: must not be negative")
        if not math.isfinite(self.liability_minor) or self.liability_minor < 0:
            raise ValueError(f"liability_minor = {self.liability_minor}: must be finite, not negative")
        if self.served_touches < 0:
            raise ValueError(f"served_touches = {self.served_touches}: must not be negative")
        if not math.isfinite(self.touch_value_minor) or self.touch_value_minor < 0:
            raise ValueError(f"touch_value_minor = {self.touch_value_minor}: must be finite, not negative")

    @property
    def capped(self) -> bool:
        return self.daily_cap_minor is not None or self.lifetime_cap_minor is not None

    @property
    def left_minor(self) -> int | None:
        """What the caps leave of real spend (None without a cap)."""
        return caps_left(
            self.daily_cap_minor, self.lifetime_cap_minor, self.spend_day_minor, self.spend_lifetime_minor
        )


@dataclass(frozen=True, slots=True)
class PacingState:
    """What the controller keeps between steps (stored in Redis by the speed layer).

    ``committed_minor`` is spend plus liability at the step; ``num``/``den`` are the decayed
    sums of the full-serving estimate ``F = num / den``; ``target`` is the curve's share at the
    step (what the pacing error is measured against); ``liability_minor`` is the step's input.
    """

    day: str
    at_ms: int
    probability: float
    committed_minor: float
    target: float
    num: float = 0.0
    den: float = 0.0
    liability_minor: float = 0.0
    touches: int = 0

    @property
    def full_day_estimate(self) -> float | None:
        return self.num / self.den if self.den > 0 and self.num > 0 else None


def target_share(inp: PacingInput, config: PacingConfig, at_ms: int | None = None) -> float:
    """The target curve ``W``: share of the day's cap to have committed by ``at_ms`` (default the
    input's instant), reaching 1 at the spend-out point ``day end − margin``."""
    shape = inp.shape or TrafficShape.flat()
    day_ms = inp.day_end_ms - inp.day_start_ms
    elapsed = (inp.now_ms if at_ms is None else at_ms) - inp.day_start_ms
    out_at = max(day_ms - config.spend_out_margin_ms, 1)
    whole = shape.share(out_at, day_ms)
    if whole <= 0:
        return 1.0
    return min(shape.share(elapsed, day_ms) / whole, 1.0)


def _bounded(target: float, prev: float, config: PacingConfig, intervals: int = 1) -> float:
    """``target`` clamped to what ``intervals`` bounded steps from ``prev`` can reach."""
    lo = max(prev * (1 - config.max_step) ** intervals, config.min_probability)
    hi = min(max(prev, config.min_probability) * (1 + config.max_step) ** intervals, 1.0)
    return min(max(target, lo), hi)


def _learn(
    prev: PacingState | None, inp: PacingInput, committed: float, target: float, config: PacingConfig
) -> tuple[float, float, float]:
    """The probability to step from and the estimate's sums, updated with the exposure served
    since the previous step of the same budget day."""
    if prev is None:
        return config.start_probability, 0.0, 0.0
    if prev.day != inp.day:
        return config.start_probability, prev.num, prev.den
    num, den = prev.num, prev.den
    dt = max(inp.now_ms - prev.at_ms, 0)
    if dt > 0:
        decay = 0.5 ** (dt / config.estimate_half_life_ms)
        if inp.touch_value_minor > 0:  # the expected charge of what was served: no order noise
            seen = max(inp.served_touches - prev.touches, 0) * inp.touch_value_minor
        else:  # no model of a touch's value: the committed spend as it was realised
            seen = max(committed - prev.committed_minor, 0.0)
        num = decay * num + seen
        den = decay * den + prev.probability * max(target - prev.target, 0.0)
    return prev.probability, num, den


def _aim(inp: PacingInput, target: float, num: float, den: float, config: PacingConfig) -> float:
    left = inp.left_minor
    if left is None:
        return 1.0
    remaining = left - inp.liability_minor
    if left <= 0 or remaining <= 0:
        return 0.0
    rest = 1.0 - target
    if inp.mode is DeliveryMode.ASAP or rest <= 1e-9 or den <= 0 or num <= 0:
        return 1.0
    # ``F`` floored at a billionth of a minor unit a day: a learned estimate that small is no
    # spend at all (serve fully), and ``F · span`` must not underflow to 0 (num 5e-324 did).
    full = max(num / den, _MIN_FULL_MINOR)
    terminal = remaining / (full * rest)
    if config.track_horizon_ms <= 0 or inp.daily_cap_minor is None:
        return min(terminal, 1.0)
    # Track the spend itself ``H`` ahead: commit over (t, t + H] what brings the spend to the
    # curve at t + H, the liability assumed to run down linearly to the day's end (what lands
    # meanwhile is spend), and never more than ``R`` over that stretch.
    ahead = min(inp.now_ms + config.track_horizon_ms, inp.day_end_ms)
    w_ahead = target_share(inp, config, ahead)
    span = w_ahead - target
    if span <= 1e-9:
        return min(terminal, 1.0)
    lands = inp.liability_minor * (ahead - inp.now_ms) / max(inp.day_end_ms - inp.now_ms, 1)
    gap = inp.daily_cap_minor * w_ahead - inp.spend_day_minor - lands
    track = min(gap, remaining) / (full * span)
    return min(max(track, 0.0), 1.0)


def aim(prev: PacingState | None, inp: PacingInput, config: PacingConfig = PacingConfig()) -> float:
    """``p*``, the probability the controller steps towards, in [0, 1] (before the step bound):
    1 without a cap, 0 with a spent cap or a liability that fills what is left, else
    ``R / (F · (1 − W))`` (1 in ``asap`` mode, and while there is no estimate ``F`` yet)."""
    committed = inp.spend_day_minor + inp.liability_minor
    target = target_share(inp, config)
    _, num, den = _learn(prev, inp, committed, target, config)
    return _aim(inp, target, num, den, config)


def step(
    prev: PacingState | None, inp: PacingInput, config: PacingConfig = PacingConfig(), intervals: int = 1
) -> PacingState:
    """The controller's next state from the previous one (None at the first step ever).
    ``intervals``: how many step intervals of event time this step covers (more than 1 after a
    catch-up or a quiet spell); ``p`` may move by up to that many bounded steps (see the module)."""
    if intervals < 1:
        raise ValueError(f"intervals = {intervals}: must be at least 1")
    committed = inp.spend_day_minor + inp.liability_minor
    target = target_share(inp, config)
    if not inp.capped:
        return PacingState(
            inp.day,
            inp.now_ms,
            1.0,
            committed,
            target,
            liability_minor=inp.liability_minor,
            touches=inp.served_touches,
        )
    if inp.left_minor == 0:  # a spent cap stops serving at once: capping, not pacing
        num, den = (prev.num, prev.den) if prev is not None else (0.0, 0.0)
        return PacingState(
            inp.day, inp.now_ms, 0.0, committed, target, num, den, inp.liability_minor, inp.served_touches
        )
    p_prev, num, den = _learn(prev, inp, committed, target, config)
    same_day = prev is not None and prev.day == inp.day
    p = _bounded(_aim(inp, target, num, den, config), p_prev, config, intervals if same_day else 1)
    return PacingState(
        inp.day, inp.now_ms, p, committed, target, num, den, inp.liability_minor, inp.served_touches
    )


def conversion_rate(touches: float, orders: int, prior_rate: float, prior_touches: float) -> float:
    """The campaign's orders per touch from its own recent history, shrunk towards ``prior_rate``
    as if ``prior_touches`` touches had converted at it (a beta prior): a new campaign starts at
    the prior and moves to its own rate as touches accrue. ``touches`` may be a touch count
    weighted by the share of each touch's conversions due by now (``due_touches``), so that
    touches too recent to have converted yet do not read as a low rate."""
    if touches < 0 or orders < 0:
        raise ValueError(f"touches = {touches}, orders = {orders}: must not be negative")
    if not 0 <= prior_rate <= 1 or prior_touches < 0:
        raise ValueError(f"prior_rate = {prior_rate}, prior_touches = {prior_touches}: out of range")
    if touches + prior_touches <= 0:
        return prior_rate
    return min((orders + prior_rate * prior_touches) / (touches + prior_touches), 1.0)


@lru_cache(maxsize=1 << 16)
def delay_cdf(
    age_ms: float, window_ms: int, mean_delay_ms: float, long_share: float = 0.0, long_delay_ms: int = 0
) -> float:
    """Share of a touch's conversions (those inside its window) that happen within ``age_ms``: a
    mixture of an exponential delay with mean ``mean_delay_ms`` (weight ``1 − long_share``) and
    a uniform one over ``long_delay_ms`` (weight ``long_share``: the orders that come days
    later), cut at the window, so 1 at the window.

    Memoised: a step evaluates it for every touch group of every capped campaign, and the ages
    repeat (steps and groups fall on whole minutes), so most calls are a lookup."""
    if age_ms <= 0:
        return 0.0
    if age_ms >= window_ms:
        return 1.0
    rate = 1.0 / mean_delay_ms
    fast = (1.0 - math.exp(-rate * age_ms)) / (1.0 - math.exp(-rate * window_ms))
    if long_share <= 0 or long_delay_ms <= 0:
        return fast
    span = min(long_delay_ms, window_ms)
    return (1.0 - long_share) * fast + long_share * min(age_ms / span, 1.0)


def due_touches(
    groups: Sequence[tuple[int, int]],
    since_ms: int,
    window_ms: int,
    mean_delay_ms: float,
    long_share: float = 0.0,
    long_delay_ms: int = 0,
) -> float:
    """How many of ``(age, count)`` touch groups' conversions were due in the last ``since_ms``
    (the span the orders are counted over): ``Σ n · (G(a) − G(a − since))``, ``G`` the delay CDF.
    Orders over that span divided by it is the conversion rate without the bias of touches too
    recent to have converted (the censoring a plain orders / touches has) or too old to count."""
    if since_ms < 0:
        raise ValueError(f"since_ms = {since_ms}: must not be negative")
    total = 0.0
    for age, count in groups:
        if count <= 0 or age <= 0:
            continue
        g1 = delay_cdf(age, window_ms, mean_delay_ms, long_share, long_delay_ms)
        g0 = delay_cdf(age - since_ms, window_ms, mean_delay_ms, long_share, long_delay_ms)
        total += count * (g1 - g0)
    return total


def in_flight_liability(
    open_touches: Sequence[tuple[int, int]],
    rate: float,
    charge_minor: float,
    window_ms: int,
    mean_delay_ms: float,
    horizon_ms: int,
    long_share: float = 0.0,
    long_delay_ms: int = 0,
) -> float:
    """The expected charge, inside the next ``horizon_ms`` (what is left of the budget day), of
    touches already served: ``Σ n · rate · charge · (G(min(a + h, window)) − G(a)) / (1 − rate ·
    G(a))`` over ``(age a, count n)`` groups of open touches, ``G`` the delay CDF (``delay_cdf``).

    A touch's remaining chance decays with its age and is 0 past its window; the divisor
    conditions on its not having converted yet (a touch that converted is spend, not liability).
    """
    if (
        not 0 <= rate <= 1
        or charge_minor < 0
        or window_ms <= 0
        or mean_delay_ms <= 0
        or horizon_ms < 0
        or not 0 <= long_share <= 1
        or long_delay_ms < 0
    ):
        raise ValueError(
            f"rate = {rate}, charge_minor = {charge_minor}, window_ms = {window_ms}, "
            f"mean_delay_ms = {mean_delay_ms}, horizon_ms = {horizon_ms}, long_share = {long_share}, "
            f"long_delay_ms = {long_delay_ms}: out of range"
        )
    total = 0.0
    for age, count in open_touches:
        if count <= 0 or age >= window_ms:
            continue
        g0 = delay_cdf(age, window_ms, mean_delay_ms, long_share, long_delay_ms)
        g1 = delay_cdf(age + horizon_ms, window_ms, mean_delay_ms, long_share, long_delay_ms)
        alive = 1.0 - rate * g0
        if alive > 0:
            total += count * rate * charge_minor * (g1 - g0) / alive
    return total


def published_probability(
    state: PacingState | Published | None,
    day: str,
    capped: bool,
    mode: DeliveryMode,
    config: PacingConfig = PacingConfig(),
) -> float:
    """The serve probability a reader gives a servable campaign on budget day ``day``: 1 without
    a cap; the controller's for today; before its first step today, ``start_probability`` for
    ``even`` delivery and 1 for ``asap`` (what the controller's own first step starts from)."""
    if not capped:
        return 1.0
    if state is not None and state.day == day:
        return state.probability
    return config.start_probability if mode is DeliveryMode.EVEN else 1.0


#: The fields of a campaign's pacing hash in Redis (``Keys.pacing``): what the speed layer writes
#: and the budget state reads, in this order (the ad server's answer reads the published string,
#: ``encode_published``, written with it).
PACING_FIELDS = ("day", "at", "p", "committed", "target", "num", "den", "liability", "touches")


@dataclass(frozen=True, slots=True)
class Published:
    """What a reader of the answer needs of a pacing state: its budget day, the step's time, the
    probability and the liability (stored apart from the hash as one string, ``encode_published``)."""

    day: str
    at_ms: int
    probability: float
    liability_minor: float


def encode_published(state: PacingState) -> str:
    """The published part of a state as one string, ``day|at|p|liability`` (floats as ``repr``).

    One string per campaign, beside the controller's hash: the ad server's answer reads 50
    candidates' spends and states in one ``MGET`` (about 8 µs in Redis for 150 keys) instead of a
    script reading a hash each (about 120 µs: each ``redis.call`` from Lua costs more than a
    key)."""
    return f"{state.day}|{state.at_ms}|{state.probability!r}|{state.liability_minor!r}"


def decode_published(raw: bytes | str | None) -> Published | None:
    """The published part from ``encode_published``'s string (None when there is none).

    Memoised: a campaign's string changes once a step (a minute), and every ad request that names
    the campaign meanwhile reads the same one (parsing it was a quarter of the answer's own time)."""
    return None if raw is None else _decode_published(raw)


@lru_cache(maxsize=1 << 14)
def _decode_published(raw: bytes | str) -> Published:
    day, at, p, liability = (raw.decode() if isinstance(raw, bytes) else raw).split("|")
    return Published(day, int(at), float(p), float(liability))


def encode_state(state: PacingState) -> dict[str, str]:
    """A state as the fields of its pacing hash (floats as ``repr``, exact when read back)."""
    return {
        "day": state.day,
        "at": str(state.at_ms),
        "p": repr(state.probability),
        "committed": repr(state.committed_minor),
        "target": repr(state.target),
        "num": repr(state.num),
        "den": repr(state.den),
        "liability": repr(state.liability_minor),
        "touches": str(state.touches),
    }


def decode_state(values: Sequence[bytes | str | None]) -> PacingState | None:
    """The state from its hash's values in ``PACING_FIELDS`` order (None when there is none; a
    state written before ``touches`` was kept reads 0 touches)."""
    if len(values) != len(PACING_FIELDS) or any(v is None for v in values[:-1]):
        return None
    text = [v.decode() if isinstance(v, bytes) else str(v) for v in values[:-1]]
    day, at, p, committed, target, num, den, liability = text
    last = values[-1]
    touches = int(last.decode() if isinstance(last, bytes) else last) if last is not None else 0
    return PacingState(
        day,
        int(at),
        float(p),
        float(committed),
        float(target),
        float(num),
        float(den),
        float(liability),
        touches,
    )
