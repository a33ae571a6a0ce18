"""Load shapes keep their promises (counts, timing, order, rates, steps); user data is exact."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from workbench.driver.config import RunConfig
from workbench.driver.shapes import (
    SIZE_BYTES,
    SIZES,
    Burst,
    Hold,
    Launch,
    LoadShape,
    Poisson,
    Staggered,
    Steps,
    data_size_for,
    data_sizes,
    default_rate_per_s,
    make_user_data,
    shape_from_config,
)

users_st = st.integers(1, 300)
seconds_st = st.floats(0, 600, allow_nan=False)


def times(shape: LoadShape) -> list[float]:
    return [launch.at_s for launch in shape.launches()]


def assert_ordered(launches: list[Launch]) -> None:
    assert all(a.at_s <= b.at_s for a, b in zip(launches, launches[1:], strict=False))
    assert all(launch.at_s >= 0 for launch in launches)


@settings(max_examples=80)
@given(users=users_st, ramp_s=seconds_st)
def test_staggered_starts_each_user_once_evenly_before_the_ramp_ends(users, ramp_s):
    shape = Staggered(users, ramp_s)
    launches = list(shape.launches())
    assert_ordered(launches)
    assert [launch.user for launch in launches] == list(range(users))
    assert all(launch.repeat_until_s is None and launch.step is None for launch in launches)
    for i, launch in enumerate(launches):
        assert launch.at_s == pytest.approx(i * ramp_s / users)
    assert launches[-1].at_s < ramp_s or ramp_s == 0  # the last starts one interval early
    assert shape.expected_flows() == shape.wallets_needed() == users


@given(users=users_st)
def test_burst_starts_everyone_at_zero(users):
    shape = Burst(users)
    assert times(shape) == [0.0] * users
    assert shape.expected_flows() == users


@settings(max_examples=80)
@given(users=users_st, data=st.data())
def test_hold_repeats_until_duration_and_starts_everyone_before_it(users, data):
    duration = data.draw(st.floats(1, 600))
    ramp = data.draw(st.floats(0, duration))
    shape = Hold(users, ramp, duration)
    launches = list(shape.launches())
    assert_ordered(launches)
    assert len(launches) == users
    assert all(launch.repeat_until_s == duration > launch.at_s for launch in launches)
    assert shape.expected_flows() is None  # how often users repeat depends on the system


def flows_of_a_looping_user(launch: Launch, flow_s: float) -> int:
    """What a runner does with a launch when every flow takes `flow_s` (flows start back to back
    while the clock is before `repeat_until_s`)."""
    starts, t = 0, launch.at_s
    while True:
        starts, t = starts + 1, t + flow_s
        if launch.repeat_until_s is None or t >= launch.repeat_until_s:
            return starts


@given(flow_s=st.floats(0.5, 120))
def test_hold_repeats_are_bounded_by_the_duration(flow_s):
    shape = Hold(10, 5, 60)
    for launch in shape.launches():
        n = flows_of_a_looping_user(launch, flow_s)
        fit = (60 - launch.at_s) / flow_s  # n = ceil(fit): starts while the clock is before 60
        assert max(1, fit - 1e-9) <= n <= fit + 1 + 1e-9


def test_hold_with_zero_duration_is_one_flow_per_user():
    shape = Hold(5, 10, 0)
    assert all(launch.repeat_until_s is None for launch in shape.launches())
    assert shape.expected_flows() == 5
    with pytest.raises(ValueError):
        Hold(5, ramp_s=20, duration_s=10)


def test_poisson_inter_arrivals_are_exponential_at_the_rate():
    rate, duration = 5.0, 2000.0
    launches = list(Poisson(rate, duration, seed=1234).launches())
    at = np.array([launch.at_s for launch in launches])
    gaps = np.diff(np.concatenate([[0.0], at]))
    # KS test against the exponential of mean 1/rate; fixed seed, so not flaky.
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    # The count is Poisson(rate * duration): inside its 99.9% interval.
    lo, hi = stats.poisson.interval(0.999, rate * duration)
    assert lo <= len(launches) <= hi
    assert at.max() < duration
    assert all(launch.user is None and launch.repeat_until_s is None for launch in launches)


def test_poisson_counts_per_second_are_not_overdispersed():
    # Open model: arrivals are independent, so counts per second have variance == mean.
    at = np.array(times(Poisson(4.0, 3000.0, seed=7)))
    counts = np.bincount(at.astype(int), minlength=3000)
    dispersion = counts.var(ddof=1) / counts.mean()
    chi2 = dispersion * (len(counts) - 1)
    p = stats.chi2.sf(chi2, len(counts) - 1)
    assert 0.005 < p < 0.995


@given(users=users_st, rate=st.floats(0.01, 1000), seed=st.integers(0, 2**32 - 1))
def test_poisson_with_zero_duration_has_one_arrival_per_user(users, rate, seed):
    shape = Poisson(rate, 0, seed, users)
    launches = list(shape.launches())
    assert len(launches) == users == shape.expected_flows()
    assert_ordered(launches)
    assert launches[0].at_s > 0  # a Poisson process does not arrive at exactly 0


def test_poisson_is_deterministic_per_seed_and_rng():
    shape = Poisson(3.0, 100.0, seed=5)
    assert times(shape) == times(shape)
    assert times(shape) != times(Poisson(3.0, 100.0, seed=6))
    assert shape.expected_flows() == len(times(shape))
    # A caller's rng seeds a private stream once, so its later draws cannot move arrivals.
    rng = random.Random(9)
    lazy = shape.launches(rng)
    first = [next(lazy).at_s for _ in range(3)]
    rng.random()
    rest = [launch.at_s for launch in lazy]
    assert first + rest == [launch.at_s for launch in shape.launches(random.Random(9))]
    gen = np.random.default_rng(1)
    assert len(list(shape.launches(gen))) > 0


@settings(max_examples=60)
@given(
    levels=st.lists(st.integers(1, 40), min_size=1, max_size=6, unique=True).map(sorted),
    hold_s=st.floats(1, 300),
    ramp_frac=st.floats(0, 1),
)
def test_steps_reach_each_level_and_hold_to_the_end(levels, hold_s, ramp_frac):
    shape = Steps(levels, hold_s, ramp_s=hold_s * ramp_frac)
    launches = list(shape.launches())
    assert_ordered(launches)
    end = len(levels) * hold_s
    assert [launch.user for launch in launches] == list(range(levels[-1]))
    assert all(launch.repeat_until_s == end for launch in launches)
    for k, level in enumerate(levels):
        joined = [launch for launch in launches if launch.step == k]
        assert all(launch.level == level for launch in joined)
        assert all(k * hold_s <= launch.at_s < (k + 1) * hold_s for launch in joined)
        started_by_step_end = sum(launch.at_s < (k + 1) * hold_s for launch in launches)
        assert started_by_step_end == level  # the level is reached inside its own step
    assert shape.wallets_needed() == levels[-1]
    assert shape.expected_flows() is None


def test_steps_assign_flows_by_start_time():
    shape = Steps((10, 20, 30), hold_s=60, ramp_s=10)
    assert [shape.step_at(t) for t in (0, 59.999, 60, 179.9, 180, -1)] == [0, 0, 1, 2, None, None]
    bounds = shape.describe()["steps"]
    assert [(b["users"], b["start_s"], b["end_s"]) for b in bounds] == [
        (10, 0, 60),
        (20, 60, 120),
        (30, 120, 180),
    ]
    assert Staggered(3).step_at(1.0) is None
    for bad in ([], [10, 5], [0, 5]):
        with pytest.raises(ValueError):
            Steps(bad, 60)
    with pytest.raises(ValueError):
        Steps((10,), hold_s=5, ramp_s=10)


def test_describe_is_json_safe_and_says_the_shape():
    for shape in (
        Staggered(3, 1),
        Burst(3),
        Hold(3, 1, 10),
        Poisson(2, 10, 1, 3),
        Steps((1, 2), 5, 1),
    ):
        described = json.loads(json.dumps(shape.describe()))
        assert described["shape"] == shape.name
        assert described["wallets"] == shape.wallets_needed()
        assert isinstance(shape, LoadShape)
    assert Poisson(2, 10).describe()["model"] == "open"


@pytest.mark.parametrize(
    ("params", "kind", "expect"),
    [
        ({"shape": "staggered", "users": 4, "ramp_s": 8}, Staggered, [0, 2, 4, 6]),
        ({"shape": "burst", "users": 3}, Burst, [0, 0, 0]),
        ({"shape": "hold", "users": 2, "ramp_s": 2, "duration_s": 30}, Hold, [0, 1]),
        (
            {"shape": "steps", "users": 3, "steps": (1, 3), "step_hold_s": 10, "ramp_s": 0},
            Steps,
            [0, 10, 10],
        ),
    ],
)
def test_shape_from_config(params, kind, expect):
    shape = shape_from_config(RunConfig(**params))
    assert type(shape) is kind and times(shape) == expect


def test_poisson_from_config_derives_its_rate():
    shape = shape_from_config(RunConfig(shape="poisson", users=25, ramp_s=10, seed=3))
    assert isinstance(shape, Poisson)
    assert (shape.rate_per_s, shape.users, shape.seed, shape.duration_s) == (2.5, 25, 3, 0)
    given_rate = shape_from_config(RunConfig(shape="poisson", rate_per_s=7.0, duration_s=5))
    assert given_rate.rate_per_s == 7.0 and given_rate.duration_s == 5
    assert default_rate_per_s(25, 0) == 25.0


# ---- data sizes and user data ---------------------------------------------------------------


@given(n=st.integers(0, 500))
def test_mixed_sizes_cycle_and_stay_balanced(n):
    sizes = data_sizes("mixed", n)
    assert sizes == [SIZES[i % 3] for i in range(n)]
    counts = Counter(sizes)
    assert max(counts.values(), default=0) - min(counts.get(s, 0) for s in SIZES) <= 1


def test_fixed_sizes():
    for size in SIZES:
        assert data_sizes(size, 4) == [size] * 4
        assert data_size_for(size, 99, random.Random(1)) == size
    with pytest.raises(ValueError):
        data_size_for("huge", 0)


@settings(max_examples=40, deadline=None)
@given(size=st.sampled_from(SIZES), user=st.integers(0, 99_999), seed=st.integers(0, 2**32 - 1))
def test_user_data_is_exact_json_and_deterministic(size, user, seed):
    data = make_user_data(size, user, seed=seed)
    assert len(data) == SIZE_BYTES[size]
    doc = json.loads(data)
    assert doc["user"]["id"] == user and doc["records"]
    assert make_user_data(size, user, seed=seed) == data
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    assert make_user_data(size, user, rng_a) == make_user_data(size, user, rng_b)


def test_user_data_differs_between_users_and_seeds():
    assert make_user_data("medium", 1) != make_user_data("medium", 2)
    assert make_user_data("medium", 1, seed=1) != make_user_data("medium", 1, seed=2)
    assert SIZE_BYTES == {"small": 1024, "medium": 10240, "large": 102400}
