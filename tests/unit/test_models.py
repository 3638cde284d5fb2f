import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution_models import (
    MODEL_NAMES,
    Journey,
    ModelError,
    PathStats,
    TouchPoint,
    get_model,
    paths_from_records,
)
from attribution_models.markov import DENSE_LIMIT, Markov, collapse_repeats
from attribution_models.shapley import Shapley
from devtools.synthetic import random_path_records

pytestmark = pytest.mark.unit
PATH_MODELS = [m for m in MODEL_NAMES if m != "time_decay"]
HOUR = 3_600_000


def journey(*channels: str, converted: bool = True, value: float = 10.0, gap_ms: int = HOUR) -> Journey:
    touches = tuple(TouchPoint(ch, i * gap_ms) for i, ch in enumerate(channels))
    end = len(channels) * gap_ms if converted else None
    return Journey(touches, converted, value if converted else 0.0, end)


def test_registry_names_and_errors() -> None:
    assert set(MODEL_NAMES) == {
        "first_touch",
        "last_touch",
        "linear",
        "position_based",
        "time_decay",
        "markov",
        "shapley",
    }
    with pytest.raises(ModelError, match="must be one of"):
        get_model("magic")
    with pytest.raises(ModelError, match="bad parameters"):
        get_model("linear", foo=1)
    with pytest.raises(ModelError, match="order"):
        get_model("markov", order=0)
    with pytest.raises(ModelError, match="first"):
        get_model("position_based", first=0.8, last=0.4)
    with pytest.raises(ModelError, match="half_life_ms"):
        get_model("time_decay", half_life_ms=0)
    with pytest.raises(ModelError, match="characteristic"):
        get_model("shapley", characteristic="banzhaf")


def test_heuristic_touch_credits() -> None:
    j = journey("a", "b", "c", "d")
    assert get_model("first_touch").touch_credits(j) == [1, 0, 0, 0]
    assert get_model("last_touch").touch_credits(j) == [0, 0, 0, 1]
    assert get_model("linear").touch_credits(j) == [0.25] * 4
    assert get_model("position_based").touch_credits(j) == pytest.approx([0.4, 0.1, 0.1, 0.4])
    assert get_model("position_based", first=0.3, last=0.5).touch_credits(journey("a", "b")) == pytest.approx(
        [0.375, 0.625]
    )
    assert get_model("position_based").touch_credits(journey("a")) == [1.0]


def test_time_decay_uses_elapsed_time_not_position() -> None:
    model = get_model("time_decay", half_life_ms=HOUR)
    # Touches at 0h, 2h and 2h+1ms before a conversion at 3h: weights 1/8, 1/2, ~1/2.
    j = Journey(
        (TouchPoint("a", 0), TouchPoint("b", 2 * HOUR), TouchPoint("c", 2 * HOUR + 1)), True, 1.0, 3 * HOUR
    )
    credits = model.touch_credits(j)
    assert credits[0] == pytest.approx(0.125 / 1.125, rel=1e-3)
    assert credits[1] == pytest.approx(credits[2], rel=1e-3)
    # Touches decades apart do not underflow to 0/0.
    far = Journey((TouchPoint("a", 0), TouchPoint("b", 10**12)), True, 1.0, 10**12)
    assert get_model("time_decay", half_life_ms=1).touch_credits(far) == [0.0, 1.0]
    with pytest.raises(ModelError, match="touch times"):
        model.attribute([PathStats(("a",), 1)])


def test_heuristics_match_hand_computed_aggregates() -> None:
    paths = [PathStats(("a", "b", "c"), 3, 30.0, 2), PathStats(("a", "a", "b"), 1, 5.0, 3)]
    linear = get_model("linear").attribute(paths)
    assert linear.conversions == pytest.approx({"a": 1 + 2 / 3, "b": 1 + 1 / 3, "c": 1})
    assert linear.value == pytest.approx({"a": 10 + 10 / 3, "b": 10 + 5 / 3, "c": 10})


def test_markov_exact_on_a_known_chain() -> None:
    # start -> a -> conv (1) or null (1); start -> b -> conv (always). P(conv) = 3/4.
    paths = [PathStats(("a",), 1, 1.0, 1), PathStats(("b",), 2, 2.0, 0)]
    model = Markov().fit(paths)
    assert model.conversion_probability == pytest.approx(0.75)
    assert model.removal_effects == pytest.approx({"a": 1 / 3, "b": 2 / 3})


def test_markov_dense_and_sparse_solvers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = paths_from_records(random_path_records(400, channels=6, seed=3))
    dense = Markov(order=2).fit(paths).removal_effects
    monkeypatch.setattr("attribution_models.markov.DENSE_LIMIT", 0)
    sparse = Markov(order=2).fit(paths).removal_effects
    assert DENSE_LIMIT > 0
    assert sparse == pytest.approx(dense, abs=1e-12)


def test_collapse_repeats() -> None:
    assert collapse_repeats(("a", "a", "b", "b", "a")) == ("a", "b", "a")


@pytest.mark.parametrize("name", PATH_MODELS)
def test_edge_cases_never_give_negative_or_nan(name: str) -> None:
    cases = {
        "empty": [],
        "empty path": [PathStats((), 5, 10.0, 5)],
        "single channel": [PathStats(("a",), 3, 9.0, 1), PathStats(("a", "a"), 1, 1.0, 0)],
        "never converts": [PathStats(("a",), 3, 9.0, 1), PathStats(("z",), 0, 0.0, 9)],
        "all null": [PathStats(("a", "b"), 0, 0.0, 4), PathStats(("b",), 0, 0.0, 2)],
        "zero value": [PathStats(("a", "b"), 2, 0.0, 1)],
        "loop": [PathStats(("a", "b", "a", "b", "a"), 1, 1.0, 0)],
    }
    for label, paths in cases.items():
        result = get_model(name).attribute(paths)
        for credit in [*result.conversions.values(), *result.value.values()]:
            assert math.isfinite(credit), (name, label)
            assert credit >= 0, (name, label)
        conv = sum(p.conversions for p in paths if p.path)
        assert sum(result.conversions.values()) == pytest.approx(conv), (name, label)
    never = get_model(name).attribute(cases["never converts"])
    assert never.conversions["z"] == 0


def test_shapley_additive_is_harsanyi_split() -> None:
    paths = [PathStats(("a",), 1, 0, 1), PathStats(("a", "b"), 3, 0, 1), PathStats(("b",), 0, 0, 4)]
    model = Shapley().fit(paths)
    # r({a}) = 1/2, r({a,b}) = 3/4, r({b}) = 0.
    assert model.weights == pytest.approx({"a": 0.5 + 0.375, "b": 0.375})


def test_shapley_subset_rate_exact_matches_definition() -> None:
    # Two players: v({a}) = 1/2, v({b}) = 0, v({a,b}) = (1+3)/(2+4+4) = 0.4.
    paths = [PathStats(("a",), 1, 0, 1), PathStats(("a", "b"), 3, 0, 1), PathStats(("b",), 0, 0, 4)]
    model = Shapley("subset_rate").fit(paths)
    phi_a = 0.5 * (0.5 - 0) + 0.5 * (0.4 - 0)
    phi_b = max(0.5 * (0 - 0) + 0.5 * (0.4 - 0.5), 0.0)
    assert model.weights == pytest.approx({"a": phi_a, "b": phi_b})
    assert model.method == "subset_rate"


def test_shapley_falls_back_past_the_cap() -> None:
    paths = paths_from_records(random_path_records(300, channels=8, seed=1))
    capped = Shapley("subset_rate", max_exact_channels=4)
    result = capped.attribute(paths)
    assert result.details["method"] == "additive (fallback)"
    assert result.conversions == pytest.approx(Shapley().attribute(paths).conversions)


def test_data_driven_models_need_fit_before_touch_credits() -> None:
    for name in ("markov", "shapley"):
        with pytest.raises(ModelError, match="fit"):
            get_model(name).touch_credits(journey("a"))


channel_lists = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=7)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(channel_lists, st.booleans(), st.floats(0, 1_000)), min_size=1, max_size=30))
def test_credits_of_converting_journeys_sum_to_one_and_totals_balance(raw) -> None:
    journeys = [journey(*chs, converted=conv, value=val) for chs, conv, val in raw]
    total_conv = sum(j.converted for j in journeys)
    total_value = sum(j.value for j in journeys if j.converted)
    for name in MODEL_NAMES:
        model = get_model(name)
        result = model.attribute_journeys(journeys)
        assert sum(result.conversions.values()) == pytest.approx(total_conv, abs=1e-9)
        if total_value > 0 and (not model.data_driven or total_conv > 0):
            assert sum(result.value.values()) == pytest.approx(total_value, rel=1e-9, abs=1e-9)
        for j in journeys:
            if j.converted:
                credits = model.touch_credits(j)
                assert len(credits) == len(j.touches)
                assert sum(credits) == pytest.approx(1.0)
                assert min(credits) >= 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(channel_lists, st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=20))
def test_symmetric_channels_get_equal_credit(raw) -> None:
    """Swap the names x and y in every path and add the swapped copy: x and y become symmetric."""
    swap = {"a": "x", "b": "y"}
    back = {"x": "y", "y": "x"}
    paths: list[PathStats] = []
    for chs, conv, nulls in raw:
        renamed = tuple(swap.get(c, c) for c in chs)
        paths.append(PathStats(renamed, conv, conv * 2.0, nulls))
        paths.append(PathStats(tuple(back.get(c, c) for c in renamed), conv, conv * 2.0, nulls))
    for name in PATH_MODELS:
        result = get_model(name).attribute(paths)
        if "x" in result.conversions:
            assert result.conversions["x"] == pytest.approx(result.conversions["y"], rel=1e-9, abs=1e-9), name


def test_paths_from_columns_merges_repeats_and_validates() -> None:
    from attribution_models import paths_from_columns

    paths = paths_from_columns(["a > b", "b", "a > b", "a>b"], [1, 2, 3, 1], [10.0, 0, 5.0, 1], [0, 1, 2, 0])
    # Equal strings merge before splitting; other spellings of a path stay separate rows (models sum them).
    assert [(p.path, p.conversions, p.value, p.nulls) for p in paths] == [
        (("a", "b"), 4.0, 15.0, 2.0),
        (("b",), 2.0, 0.0, 1.0),
        (("a", "b"), 1.0, 1.0, 0.0),
    ]
    with pytest.raises(ModelError, match=r"total_null = -1.0 on path 'b' \(row 1\)"):
        paths_from_columns(["a", "b"], [1, 1], None, [0, -1])
    with pytest.raises(ModelError, match="total_conversions = nan"):
        paths_from_columns(["a"], [float("nan")])
    with pytest.raises(ModelError, match="2 values for 3 paths"):
        paths_from_columns(["a", "b", "c"], [1, 2])
