"""Comparing two runs: a real shift is found, noise is not called a change."""

from __future__ import annotations

import numpy as np
from synthetic import write_results_dir

from workbench.analysis import compare


def test_a_doubled_latency_is_reported_slower_with_the_right_ratio(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.uniform(10, 20, 60)
    a = write_results_dir(tmp_path / "a", n_flows=60, durations=base)
    b = write_results_dir(tmp_path / "b", n_flows=60, durations=base * 2, seed=1)
    table = compare.compare(a, b)
    assert table.loc["flow", "verdict"] == "slower"
    assert table.loc["flow", "ratio"] == np.median(base * 2) / np.median(base)
    assert table.loc["flow", "p_value"] < 0.001


def test_the_same_distribution_is_no_significant_change(tmp_path):
    rng = np.random.default_rng(2)
    a = write_results_dir(tmp_path / "a", n_flows=60, durations=rng.uniform(10, 20, 60))
    b = write_results_dir(tmp_path / "b", n_flows=60, durations=rng.uniform(10, 20, 60), seed=3)
    assert compare.compare(a, b).loc["flow", "verdict"] == "no significant change"


def test_success_shift_uses_fisher_exact_and_handles_empty_runs():
    worse = compare.success_shift(50, 50, 30, 50)
    assert worse["rate_b"] == 0.6 and worse["p_value"] < 0.001
    assert compare.success_shift(0, 0, 1, 1)["p_value"] is None
    assert compare.latency_shift([1.0], [2.0, 3.0])["verdict"] == "too few"
