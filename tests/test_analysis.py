"""Analysis against synthetic results with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import synthetic
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from synthetic import write_results_dir

from workbench.analysis import histograms, results, stats, summary
from workbench.errors import WorkbenchError
from workbench.steps import step_component


def _flows(rows: list[tuple[float, float, str]], **extra) -> pd.DataFrame:
    """(t, duration_s, status) rows as a flows frame shaped like `load_results` gives."""
    events = [
        {"kind": "flow", "flow_id": i, "user": i, "t": t, "duration_s": d, "ok": s == "ok",
         "status": s, **{k: v[i] for k, v in extra.items()}}
        for i, (t, d, s) in enumerate(rows)
    ]  # fmt: skip
    return results.flows_frame(events)


def _steps(rows: list[tuple[int, str, bool, str | None]]) -> pd.DataFrame:
    """(flow_id, step, ok, error_class) rows as a steps frame."""
    events = [
        {"kind": "step", "flow_id": f, "step": s, "t": 0.0, "duration_s": 1.0, "ok": ok,
         "error_class": ec}
        for f, s, ok, ec in rows
    ]  # fmt: skip
    return results.steps_frame(events)


def _samples(rows: list[tuple[float, str, object, str, float]]) -> pd.DataFrame:
    """(t, component, pid, metric, value) rows."""
    return pd.DataFrame(rows, columns=["t", "component", "pid", "metric", "value"])


# ----------------------------------------------------------------------------- latency


def test_percentiles_on_a_known_grid_match_numpy_linear_exactly():
    x = np.arange(1, 101, dtype=float)  # 1..100 s
    s = stats.latency_stats(x)
    assert s["n"] == 100
    assert s["mean"] == 50.5
    assert s["p50"] == 50.5
    assert s["p95"] == pytest.approx(95.05, abs=1e-12)
    assert s["p99"] == pytest.approx(99.01, abs=1e-12)
    assert s["max"] == 100.0
    assert [s["p50"], s["p95"], s["p99"]] == list(np.percentile(x, [50, 95, 99]))
    for name in ("mean", "p50", "p95", "p99"):
        lo, hi = s[f"{name}_ci"]
        assert lo <= s[name] <= hi


def test_bootstrap_cis_contain_the_true_values_of_a_large_sample():
    # Uniform(0, 100): true mean 50, p50 50, p95 95, p99 99.
    x = np.random.default_rng(7).uniform(0, 100, 4000)
    s = stats.latency_stats(x, confidence=0.99)
    for name, true in {"mean": 50, "p50": 50, "p95": 95, "p99": 99}.items():
        lo, hi = s[f"{name}_ci"]
        assert lo < true < hi, name
        assert hi - lo < 6, name  # and it is informative, not just wide


def test_cis_are_reproducible_for_a_seed():
    x = np.random.default_rng(1).exponential(30, 200)
    assert stats.latency_stats(x, seed=3) == stats.latency_stats(x, seed=3)


@pytest.mark.parametrize("x", [[], [42.0], [5.0] * 30, [np.nan, 3.0]])
def test_degenerate_samples_give_no_ci_and_no_crash(x):
    s = stats.latency_stats(x)
    assert s["n"] == sum(np.isfinite(x))
    assert all(s[f"{k}_ci"] is None for k in ("mean", "p50", "p95", "p99"))
    if s["n"]:
        assert s["p50"] == s["max"] == [v for v in x if np.isfinite(v)][0]
    else:
        assert s["mean"] is None and s["max"] is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=0, max_size=60))
def test_latency_stats_are_ordered_for_any_sample(x):
    s = stats.latency_stats(x, n_resamples=200)
    if not x:
        return
    assert s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    for name in ("mean", "p50", "p95", "p99"):
        ci = s[f"{name}_ci"]
        assert ci is None or ci[0] <= ci[1]


def test_hdr_histograms_merge_and_approximate_the_exact_percentiles():
    a, b = np.linspace(1, 50, 500), np.linspace(50, 100, 500)
    merged = histograms.merge_histograms(
        histograms.latency_histogram(a), histograms.latency_histogram(b)
    )
    assert merged.get_total_count() == 1000
    exact = np.percentile(np.concatenate([a, b]), [50, 95, 99])
    approx = histograms.histogram_percentiles(merged)
    for q, e in zip(("p50", "p95", "p99"), exact, strict=True):
        assert approx[q] == pytest.approx(e, rel=2e-3)  # 3 significant digits plus bin width


def read_hgrm(path) -> pd.DataFrame:
    """An .hgrm percentile distribution: Value (ms), Percentile, TotalCount per row."""
    table = pd.read_csv(path, sep=r"\s+", comment="#", skip_blank_lines=True)
    return table[["Value", "Percentile", "TotalCount"]]


def test_each_results_dir_gets_hgrm_files_that_read_back_as_its_raw_latencies(tmp_path):
    rng = np.random.default_rng(3)
    durations = rng.lognormal(np.log(30), 0.4, 300)  # skewed, like real flows
    path = write_results_dir(tmp_path / "r", n_flows=300, fail_every=7, durations=durations)
    summary.analyze(path)
    run = results.load_results(path)
    folder = path / "histograms"
    names = {p.stem for p in folder.glob("*.hgrm")}
    assert names == {"flow", *run.steps.loc[run.steps["ok"], "step"]}
    ok_ms = {"flow": run.flows.loc[run.flows["ok"], "duration_s"].to_numpy() * 1000}
    ok_ms["relay"] = run.steps.query("ok and step == 'relay'")["duration_s"].to_numpy() * 1000
    for name, raw in ok_ms.items():
        table, raw = read_hgrm(folder / f"{name}.hgrm"), np.sort(raw)
        assert table["TotalCount"].iloc[-1] == len(raw) and table["Percentile"].iloc[-1] == 1
        # Row by row: the value at each percentile is the raw sample of that rank, within
        # HdrHistogram's precision (3 significant digits; 1 us recording, 0.001 ms printing).
        nearest = raw[table["TotalCount"].to_numpy() - 1]
        assert np.allclose(table["Value"], nearest, rtol=1e-3, atol=0.002)
        assert (table["TotalCount"] / len(raw) >= table["Percentile"] - 1 / len(raw)).all()
        back = histograms.histogram_percentiles(histograms.read_histograms(path)[name])
        for q in (50, 95, 99):
            rank = max(1, int(q / 100 * len(raw) + 0.5))  # HdrHistogram's rank: q*n rounded
            assert back[f"p{q}"] == pytest.approx(raw[rank - 1] / 1000, rel=1e-3, abs=2e-6)


def test_histograms_of_two_halves_merge_into_the_whole(tmp_path):
    """Two workers' (here: two runs') histograms.hlog, merged, equal the histogram of all."""
    durations = np.random.default_rng(5).uniform(5, 120, 200)
    halves = [
        write_results_dir(tmp_path / name, n_flows=100, durations=part, seed=i)
        for i, (name, part) in enumerate((("a", durations[:100]), ("b", durations[100:])))
    ]
    for half in halves:
        histograms.write_run_histograms(half, results.load_results(half))
    a, b = (histograms.read_histograms(half) for half in halves)
    whole = histograms.latency_histogram(durations)
    merged = histograms.merge_histograms(a["flow"], b["flow"])
    assert merged.equals(whole) and merged.get_total_count() == 200
    # Logs of several workers concatenated: intervals of one tag add up on reading.
    both = tmp_path / "both.hlog"
    both.write_text("".join((h / "histograms" / "histograms.hlog").read_text() for h in halves))
    assert histograms.read_histograms(both)["flow"].equals(whole)
    assert set(histograms.read_histograms(both)) == set(a) == set(b)


def test_step_breakdown_counts_and_quantiles():
    steps = results.steps_frame(
        [{"kind": "step", "flow_id": i, "step": "relay", "t": 0, "duration_s": float(i + 1),
          "ok": True} for i in range(20)]
        + [{"kind": "step", "flow_id": 99, "step": "relay", "t": 0, "duration_s": 500.0,
            "ok": False, "error_class": "timeout"},
           {"kind": "step", "flow_id": 98, "step": "relay", "t": 0, "duration_s": 1.0,
            "ok": False, "error_class": "cancelled"},
           {"kind": "step", "flow_id": 0, "step": "derive_key", "t": 0, "duration_s": 0.1,
            "ok": True}]
    )  # fmt: skip
    table = stats.step_breakdown(steps)
    assert list(table.index) == ["derive_key", "relay"]  # flow order, not alphabetical
    relay = table.loc["relay"]
    assert (relay["n"], relay["ok"], relay["failed"], relay["cancelled"]) == (22, 20, 1, 1)
    assert relay["ok_rate"] == 20 / 21
    ok = np.arange(1, 21, dtype=float)  # the failed 500 s attempt is not a latency
    assert relay["max"] == 20.0 and relay["mean"] == ok.mean()
    assert [relay["p50"], relay["p95"], relay["p99"]] == pytest.approx(
        np.percentile(ok, [50, 95, 99]), abs=1e-12
    )


# ----------------------------------------------------------------------------- throughput


def test_throughput_of_a_known_schedule():
    # Flow k (1..20) starts at 6(k-1) and lasts 6 s: ends at 6, 12, ..., 120.
    flows = _flows([(6.0 * (k - 1), 6.0, "ok") for k in range(1, 21)])
    assert stats.flows_per_minute(flows) == 20 / 2.0  # 20 ok flows over 120 s
    tp = stats.throughput(flows, bin_s=60)
    # Ends 6..54 -> window 0 (9), 60..114 -> window 1 (10), 120 -> window 2 (1).
    assert tp["ok"].tolist() == [9, 10, 1]
    assert tp["flows_per_min"].tolist() == [9.0, 10.0, 1.0]
    assert tp["t_start"].tolist() == [0.0, 60.0, 120.0]
    assert tp["partial"].tolist() == [False, False, True]
    per_30s = stats.throughput(flows, bin_s=30)
    assert per_30s["flows_per_min"].iloc[1] == 5 * 2.0  # ends 30..54: 5 flows in 30 s


def test_throughput_counts_failures_apart_and_ignores_cancelled():
    flows = _flows([(0, 10, "ok"), (0, 20, "failed"), (0, 30, "cancelled"), (70, 10, "ok")])
    tp = stats.throughput(flows, bin_s=60)
    assert tp[["ok", "failed"]].values.tolist() == [[1, 1], [1, 0]]
    assert stats.flows_per_minute(flows) == 2 / (80 / 60)  # ok flows over first start..last end
    assert stats.flows_per_minute(_flows([(0, 5, "failed")])) is None
    assert stats.throughput(_flows([]), bin_s=60).empty


def test_concurrency_counts_overlaps_and_not_back_to_back_flows():
    flows = _flows([(0, 10, "ok"), (5, 10, "ok"), (10, 5, "ok"), (15, 5, "failed")])
    c = stats.concurrency(flows)
    in_flight = dict(zip(c["t"], c["in_flight"], strict=True))
    assert in_flight == {0: 1, 5: 2, 10: 2, 15: 1, 20: 0}
    assert stats.concurrency(_flows([])).empty


# ----------------------------------------------------------------------------- success


def test_success_rate_cis_are_scipys_wilson_intervals():
    flows = _flows([(0, 1, "ok")] * 18 + [(0, 1, "failed")] * 2 + [(0, 1, "cancelled")] * 3)
    r = stats.success_rates(flows, _steps([]))["flows"]
    assert (r["k"], r["n"], r["rate"]) == (18, 20, 0.9)  # cancelled flows are out
    ci = scipy_stats.binomtest(18, 20).proportion_ci(confidence_level=0.95, method="wilson")
    assert (r["ci_low"], r["ci_high"]) == (ci.low, ci.high)
    empty = stats.success_rates(_flows([]), _steps([]))
    assert empty["flows"] == {"k": 0, "n": 0, "rate": None, "ci_low": None, "ci_high": None}


def test_transaction_upload_and_inference_definitions():
    flows = _flows([(0, 1, "ok"), (0, 1, "failed"), (0, 1, "failed"), (0, 1, "cancelled")])
    steps = _steps(
        [
            (0, "upload_file", True, None), (0, "upload_grant", True, None),
            (0, "relay", True, None), (0, "confirm", True, None),
            (0, "inference_submit", True, None), (0, "inference_poll", True, None),
            (1, "upload_file", False, "storage"),
            (2, "upload_file", True, None), (2, "upload_grant", True, None),
            (2, "relay", True, None), (2, "confirm", False, "timeout"),
            (3, "upload_file", True, None), (3, "upload_grant", True, None),
            (3, "relay", True, None), (3, "confirm", False, "cancelled"),
        ]
    )  # fmt: skip
    r = stats.success_rates(flows, steps)
    # Tx: flows 0 and 2 relayed; 0 confirmed; flow 3 was cancelled before its confirm: left out.
    assert (r["transactions"]["k"], r["transactions"]["n"]) == (1, 2)
    assert (r["uploads"]["k"], r["uploads"]["n"]) == (6, 7)
    assert (r["inference"]["k"], r["inference"]["n"]) == (1, 1)


def test_error_classes_and_api_errors():
    flows = _flows(
        [(0, 1, "ok"), (0, 1, "failed"), (0, 1, "failed"), (0, 1, "cancelled")],
        error_class=[None, "http", "storage", "cancelled"],
        failed_step=[None, "relay", "upload_file", "inference_poll"],
    )
    e = stats.error_classes(flows)
    assert e == {
        "by_class": {"http": 1, "storage": 1, "cancelled": 1},
        "by_step": {"relay": 1, "upload_file": 1, "inference_poll": 1},
    }
    steps = _steps(
        [(1, "relay", False, "http"), (2, "upload_file", False, "timeout"),
         (4, "inference_poll", False, "timeout"), (5, "relay", False, "revert")]
    )  # fmt: skip
    assert stats.api_errors(steps, _samples([])) == {"step_errors": 2, "crashes": None, "total": 2}
    crashed = _samples(
        [(0, "api", 7, "rss_mb", 50), (1, "api", 7, "alive", 0), (2, "api", 8, "rss_mb", 50)]
    )
    assert stats.api_errors(steps, crashed) == {"step_errors": 2, "crashes": 1, "total": 3}


def test_api_errors_count_connections_the_api_server_refused_at_any_step():
    """A killed API server refuses the next flows' connections at whatever step they are: the
    criterion "no API server timeouts or crashes" counts those, and no other component's."""
    steps = _steps(
        [(1, "inference_submit", False, "api"), (2, "inference_poll", False, "api"),
         (3, "relay", False, "api"), (4, "server_identity", False, "personal"),
         (5, "upload_file", False, "storage"), (6, "inference_poll", True, None)]
    )  # fmt: skip
    assert stats.api_errors(steps, _samples([]))["step_errors"] == 3


# ----------------------------------------------------------------------------- resources


def test_resources_peaks_averages_and_pids_adding_up():
    samples = _samples(
        [
            (0, "driver", 1, "rss_mb", 100), (1, "driver", 1, "rss_mb", 200),
            (0, "driver", 1, "cpu_pct", 10), (1, "driver", 1, "cpu_pct", 30),
            (0, "api", 2, "rss_mb", 40), (0, "api", 3, "rss_mb", 60),  # two workers, one tick
            (1, "api", 2, "rss_mb", 40), (1, "api", 3, "rss_mb", 40),
            (0, "api", 2, "num_fds", 12), (0, "api", 2, "connections", 5),
            (0, "system", "", "cpu_pct", 50), (1, "system", "", "cpu_pct", 70),
        ]
    )  # fmt: skip
    r = stats.resources(samples)
    assert list(r.index) == ["driver", "system", "api"]
    assert r.loc["driver", "peak_rss_mb"] == 200 and r.loc["driver", "avg_rss_mb"] == 150
    assert r.loc["driver", "avg_cpu_pct"] == 20 and r.loc["driver", "peak_cpu_pct"] == 30
    assert r.loc["api", "peak_rss_mb"] == 100 and r.loc["api", "avg_rss_mb"] == 90
    assert r.loc["api", "peak_num_fds"] == 12 and r.loc["api", "peak_connections"] == 5
    assert r.loc["system", "avg_cpu_pct"] == 60
    assert np.isnan(r.loc["system", "peak_rss_mb"])
    assert stats.resources(_samples([])).empty


def test_saturated_first_names_the_step_whose_latency_grew_most(tmp_path):
    # Synthetic steps take fixed shares of a flow (inference_poll the largest), and flows slow
    # down past 8 users: inference_poll grows most, so the personal server is named.
    staged = results.load_results(write_results_dir(tmp_path / "s", stages=[2, 4, 8, 12, 16]))
    first = stats.saturated_first(staged, stats.capacity_curve(staged))
    assert first is not None
    assert (first["step"], first["component"]) == (
        "inference_poll",
        step_component("inference_poll"),
    )
    assert (first["users_first"], first["users_last"]) == (2, 16)
    assert first["p50_last_s"] > 2 * first["p50_first_s"]
    weights = synthetic.STEP_WEIGHTS
    assert first["growth_share"] == pytest.approx(weights[-1] / weights.sum(), rel=1e-6)
    flat = results.load_results(write_results_dir(tmp_path / "f", n_flows=20))
    assert stats.saturated_first(flat, stats.capacity_curve(flat)) is None


def test_memory_trends_judge_every_process_apart():
    # The driver flat, the personal server leaking 2 MB/min, storage sampled too briefly.
    rows = [(float(s), "driver", 1, "rss_mb", 100.0) for s in range(0, 120, 2)]
    rows += [(float(s), "personal", 2, "rss_mb", 50 + 2 * s / 60) for s in range(0, 120, 2)]
    rows += [(float(s), "storage", 3, "rss_mb", 40.0) for s in range(0, 10, 2)]
    rows += [(float(s), "system", 0, "cpu_pct", 5.0) for s in range(0, 120, 2)]
    trends = stats.memory_trends(_samples(rows))
    assert list(trends) == ["driver", "storage", "personal"]  # the report's component order
    assert trends["driver"]["slope_mb_per_min"] == pytest.approx(0.0, abs=1e-9)
    assert trends["personal"]["slope_mb_per_min"] == pytest.approx(2.0, rel=1e-6)
    assert trends["storage"] is None


def test_memory_trend_recovers_a_planted_slope(tmp_path):
    loaded = results.load_results(
        write_results_dir(tmp_path / "r", n_flows=60, rss_slope_mb_per_min=3.0, seed=2)
    )
    trend = stats.memory_trend(loaded.samples)
    assert trend["slope_mb_per_min"] == pytest.approx(3.0, abs=0.1)
    assert trend["p_value"] < 1e-6 and trend["r"] > 0.9
    flat = results.load_results(write_results_dir(tmp_path / "flat", n_flows=60, seed=2))
    assert abs(stats.memory_trend(flat.samples)["slope_mb_per_min"]) < 0.1


def test_memory_trend_drops_the_warm_up():
    # Steep growth in the first 20% (imports, pools filling), then flat: no leak.
    t = np.arange(0, 100.0)
    rss = np.where(t < 20, 100 + 5 * t, 200.0)
    samples = _samples([(ti, "driver", 1, "rss_mb", v) for ti, v in zip(t, rss, strict=True)])
    trend = stats.memory_trend(samples)
    assert trend["slope_mb_per_min"] == 0.0 and trend["t_from"] == 20.0
    assert stats.memory_trend(samples.head(4)) is None  # too few points
    assert stats.memory_trend(samples, component="api") is None


def test_network_loop_lag_and_gauges(tmp_path):
    r = results.load_results(write_results_dir(tmp_path / "r", n_flows=5, spacing_s=1.0))
    span = r.samples.loc[r.samples["component"] == "system", "t"].agg(["min", "max"])
    seconds = span["max"] - span["min"]
    assert stats.network(r.samples) == {
        "sent_bytes": int(1000 * seconds),
        "recv_bytes": int(2000 * seconds),
        "total_bytes": int(3000 * seconds),
    }
    lag = stats.loop_lag(r.samples)
    assert lag["max_ms"] == 10.0 and 1.0 <= lag["p50_ms"] <= lag["p99_ms"] <= 10.0
    assert stats.gauge_peaks(r.samples) == {"personal": {"queue_depth": 4.0}}
    assert stats.loop_lag(_samples([])) is None
    assert stats.network(_samples([]))["total_bytes"] is None


# ----------------------------------------------------------------------------- capacity


def test_capacity_curve_and_knee_from_a_steps_run(tmp_path):
    r = results.load_results(write_results_dir(tmp_path / "r", stages=[2, 4, 8, 16, 32]))
    curve = stats.capacity_curve(r)
    assert curve["users"].tolist() == [2, 4, 8, 16, 32]
    assert curve["success_rate"].tolist() == [1.0] * 5
    assert (curve["p95_s"].iloc[:3] == 10.0).all() and curve["p95_s"].iloc[3] == 30.0
    assert stats.knee(curve) == 16  # p95 tripled at 16 users
    assert stats.capacity_curve(results.load_results(write_results_dir(tmp_path / "flat"))).empty


@pytest.mark.parametrize(
    "users,throughput,p95,expected",
    [
        ([10, 20, 30, 40], [10, 20, 30, 40], [5, 5, 5, 5], None),  # linear: no knee
        ([10, 20, 30, 40], [10, 20, 24, 25], [5, 5, 6, 7], 30),  # gain 0.4/user < 0.5 * 1.0
        ([10, 20, 30, 40], [10, 20, 25, 30], [5, 5, 6, 7], None),  # gain exactly 0.5: not below
        ([10, 20, 30], [10, 20, 30], [5, 10.01, 20], 20),  # p95 more than doubled
        ([10, 20], [10, 20], [5, 10], None),  # exactly 2x is not "more than"
        ([10], [10], [5], None),  # one level: no curve
    ],
)
def test_knee_rule(users, throughput, p95, expected):
    curve = pd.DataFrame({"users": users, "throughput_per_min": throughput, "p95_s": p95})
    assert stats.knee(curve) == expected


# ----------------------------------------------------------------------------- loading, summary


def test_load_results_tolerates_a_torn_last_line(tmp_path):
    path = write_results_dir(tmp_path / "r", n_flows=12, torn_tail=True)
    r = results.load_results(path)
    assert len(r.flows) == 12 and r.complete
    assert set(r.samples["component"]) == {
        "driver",
        "system",
        "anvil",
        "storage",
        "api",
        "personal",
    }


def test_a_run_without_an_end_event_is_incomplete(tmp_path):
    r = results.load_results(write_results_dir(tmp_path / "r", n_flows=10, complete=False))
    assert not r.complete and r.run_end == {}
    s = summary.summarize(r)
    assert s["complete"] is False and s["outcome"] == "INCOMPLETE" and s["verdict"] == "FAILED"
    assert s["wall_s"] == pytest.approx(r.samples["t"].max())  # the last thing seen


def test_an_interrupted_run_is_incomplete(tmp_path):
    path = write_results_dir(tmp_path / "r", n_flows=5)
    lines = (path / "events.jsonl").read_text().splitlines()
    end = json.loads(lines[-1])
    lines[-1] = json.dumps({**end, "reason": "interrupted"})
    (path / "events.jsonl").write_text("\n".join(lines) + "\n")
    s = summary.summarize(results.load_results(path))
    assert s["outcome"] == "INCOMPLETE" and s["end_reason"] == "interrupted"


def test_load_results_of_a_missing_dir_names_the_fix(tmp_path):
    with pytest.raises(WorkbenchError, match="events.jsonl"):
        results.load_results(tmp_path / "nope")


SUMMARY_KEYS = (
    "users flows_total flows_ok success_rate avg_s p50_s p95_s p99_s max_s throughput_per_min "
    "tx_total tx_ok tx_success_rate uploads_total uploads_ok upload_success_rate peak_rss_mb "
    "avg_cpu_pct memory_slope_mb_per_min verdict criteria complete run_id shape profile "
    "started_at wall_s step_stats error_classes faults_injected loop_lag network resources"
).split()


def test_summary_has_the_contracted_keys_and_is_strict_json(tmp_path):
    path = write_results_dir(tmp_path / "r", n_flows=40, fail_every=10, cancel_last=2)
    s = summary.analyze(path)
    assert set(SUMMARY_KEYS) <= set(s)
    assert json.loads((path / "summary.json").read_text()) == s  # NaN-free (allow_nan=False)
    assert (path / "criteria.csv").read_text().startswith("id,label,metric,op,value")
    assert (s["users"], s["flows_total"], s["flows_ok"], s["flows_cancelled"]) == (10, 38, 35, 2)
    assert s["success_rate"] == 35 / 38
    # Flows 9, 19, 29 fail at relay; 38 and 39 (39 would fail too) are cancelled after confirm.
    assert s["tx_total"] == 40 and s["tx_ok"] == 37
    assert s["error_classes"] == {"relay": 3, "cancelled": 2}
    assert s["started_at"].startswith("2025-06-15T")
    assert s["run_id"] == "synthetic" and s["shape"] == "staggered" and s["profile"] == "fast"
    assert s["step_stats"]["relay"]["failed"] == 3
    assert s["resources"]["driver"]["peak_rss_mb"] == s["peak_rss_mb"]
    assert {row["id"] for row in s["criteria"]} >= {"success_rate", "api_errors", "cpu"}
    assert s["verdict"] in ("PASSED", "FAILED") and s["faults_injected"] is None


def test_a_healthy_run_passes_and_a_bad_one_fails(tmp_path):
    good = summary.summarize(results.load_results(write_results_dir(tmp_path / "good", n_flows=30)))
    assert good["verdict"] == "PASSED" and good["outcome"] == "PASSED", good["criteria"]
    bad = summary.summarize(
        results.load_results(
            write_results_dir(tmp_path / "bad", n_flows=30, fail_every=5, fail_class="http")
        )
    )
    failed = {row["id"] for row in bad["criteria"] if row["status"] == "FAIL"}
    assert bad["verdict"] == "FAILED"
    assert {"success_rate", "tx_success_rate", "api_errors"} <= failed
    assert bad["api_errors"] == 6


def test_no_samples_fails_the_resource_rows_as_no_data(tmp_path):
    path = write_results_dir(tmp_path / "r", n_flows=10)
    (path / "samples.csv").unlink()
    s = summary.summarize(results.load_results(path))
    rows = {row["id"]: row for row in s["criteria"]}
    assert s["peak_rss_mb"] is None and s["memory_slope_mb_per_min"] is None
    assert rows["peak_memory"]["status"] == "FAIL" and rows["peak_memory"]["note"] == "no data"
    assert s["resources"] == {} and s["loop_lag"] is None


def test_faults_from_config(tmp_path):
    r = results.load_results(write_results_dir(tmp_path / "r", n_flows=3, faults="storage-flaky"))
    assert summary.summarize(r)["faults_injected"] == "storage-flaky"


def _wide_samples(rows):
    return pd.DataFrame(rows, columns=["t", "wall", "component", "pid", "metric", "value"])


def test_workbench_cpu_sums_processes_per_tick_and_ignores_the_neighbours():
    rows = []
    for t in (0.5, 1.0):
        rows += [
            (t, 0, "driver", 1, "cpu_pct", 60.0),
            (t, 0, "anvil", 2, "cpu_pct", 20.0),
            (t, 0, "system", None, "cpu_pct", 99.0),  # someone else is busy on the box
        ]
    rows.append((1.0, 0, "api", 3, "cpu_pct", 40.0))
    cpu = stats.workbench_cpu(_wide_samples(rows), cpu_count=2)
    assert cpu["avg"] == pytest.approx(((60 + 20) / 2 + (60 + 20 + 40) / 2) / 2)
    assert cpu["peak"] == pytest.approx(60.0)


def test_memory_trend_is_none_for_a_run_too_short_to_show_a_trend():
    rows = [(t / 2, 0, "driver", 1, "rss_mb", 100 + t) for t in range(20)]  # 10 s, steep
    assert stats.memory_trend(_wide_samples(rows)) is None
    assert stats.memory_trend(_wide_samples(rows), min_span_s=1.0)["slope_mb_per_min"] > 0
