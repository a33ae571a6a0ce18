"""The driver's self-check: each signal against its threshold, per flow-running process, and what
summary.json and the report make of it (synthetic results dirs: no stack, no process)."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
from synthetic import WALL0, write_results_dir

from workbench.analysis import criteria as crit
from workbench.analysis import saturation
from workbench.analysis.report import render
from workbench.analysis.results import load_results
from workbench.analysis.summary import summarize
from workbench.errors import WorkbenchError


def samples(comp: str = "driver", lag: float = 5.0, control: float = 4.0, cpu: float = 30.0):
    """60 samples (30 s at 0.5 s) of one process: loop lag, its control, loop-thread CPU."""
    rows = []
    for i in range(60):
        t = i * 0.5
        rows += [
            (t, WALL0 + t, comp, 1, "loop_lag_ms", lag),
            (t, WALL0 + t, comp, 1, "control_lag_ms", control),
            (t, WALL0 + t, comp, 1, "loop_cpu_pct", cpu),
        ]
    return pd.DataFrame(rows, columns=["t", "wall", "component", "pid", "metric", "value"])


def flows_and_steps(queued_s: float = 0.0, worker: int | None = None, n: int = 10):
    flows = pd.DataFrame({"flow_id": range(n), "duration_s": [10.0] * n})
    steps = pd.DataFrame({"flow_id": range(n), "step": ["encrypt"] * n, "queued_s": [queued_s] * n})
    if worker is not None:
        flows["worker"], steps["worker"] = worker, worker
    return flows, steps


def test_an_idle_driver_on_a_quiet_machine_is_not_saturated():
    flows, steps = flows_and_steps(queued_s=0.001)
    judged = saturation.judge(flows, steps, samples())
    assert judged["saturated"] is False and judged["reasons"] == []
    assert judged["processes"]["driver"]["loop_lag_p99_ms"] == pytest.approx(5.0)


def test_lag_the_control_shares_is_the_machines_not_the_drivers():
    flows, steps = flows_and_steps()
    busy_box = saturation.judge(flows, steps, samples(lag=120.0, control=100.0))
    assert busy_box["saturated"] is False  # 1.2x the control: the machine was slow, not the loop
    own = saturation.judge(flows, steps, samples(lag=120.0, control=10.0))
    assert own["saturated"] is True
    assert "12.0x the idle control" in own["reasons"][0]


def test_small_lag_never_counts_however_large_the_ratio():
    flows, steps = flows_and_steps()
    judged = saturation.judge(flows, steps, samples(lag=30.0, control=1.0))
    assert judged["saturated"] is False  # under loop_lag_min_ms (50)


def test_a_busy_loop_thread_and_a_crypto_queue_each_saturate():
    flows, steps = flows_and_steps()
    hot = saturation.judge(flows, steps, samples(cpu=95.0))
    assert hot["saturated"] and "event-loop thread at 95%" in hot["reasons"][0]
    flows, steps = flows_and_steps(queued_s=1.0)  # 1 s of 10 s: 10% > 5%
    queued = saturation.judge(flows, steps, samples())
    assert queued["saturated"] and "10.0% of their time queued" in queued["reasons"][0]


def test_short_crypto_waits_do_not_count_however_large_their_share():
    flows = pd.DataFrame({"flow_id": range(5), "duration_s": [0.3] * 5})
    steps = pd.DataFrame({"flow_id": range(5), "step": ["encrypt"] * 5, "queued_s": [0.05] * 5})
    judged = saturation.judge(flows, steps, samples())  # 17% of the time, but 50 ms waits
    assert judged["saturated"] is False
    assert judged["processes"]["driver"]["crypto_queue_share"] == pytest.approx(0.05 / 0.3)


def test_workers_are_judged_each_on_their_own_evidence():
    flows0, steps0 = flows_and_steps(worker=0)
    flows1, steps1 = flows_and_steps(worker=1)
    both = pd.concat([samples("worker0"), samples("worker1", lag=300.0, control=5.0)])
    judged = saturation.judge(pd.concat([flows0, flows1]), pd.concat([steps0, steps1]), both)
    assert set(judged["processes"]) == {"worker0", "worker1"}
    assert judged["processes"]["worker0"]["saturated"] is False
    assert judged["processes"]["worker1"]["saturated"] is True
    assert judged["saturated"] and judged["reasons"][0].startswith("worker1: ")


def test_no_evidence_is_none_not_false():
    flows, steps = flows_and_steps()
    empty = samples().iloc[0:0]
    judged = saturation.judge(flows, steps.drop(columns="queued_s"), empty)
    assert judged["saturated"] is None


def test_thresholds_come_from_the_criteria_file_and_bad_ones_name_the_key(tmp_path):
    assert crit.load_criteria("ms03").saturation.loop_lag_ratio == 2
    path = tmp_path / "c.yaml"
    rows = "criteria:\n  - {id: a, label: A, metric: p95_s, op: '<', target: 1}\n"
    path.write_text(rows + "driver_saturation:\n  loop_lag_min_ms: 10\n", encoding="utf-8")
    assert crit.load_criteria(path).saturation.loop_lag_min_ms == 10
    path.write_text(rows + "driver_saturation:\n  loop_lag_min: 10\n", encoding="utf-8")
    with pytest.raises(WorkbenchError, match=r"driver_saturation\.loop_lag_min"):
        crit.load_criteria(path)
    path.write_text(rows + "driver_saturation:\n  loop_cpu_pct: -1\n", encoding="utf-8")
    with pytest.raises(WorkbenchError, match="positive number"):
        crit.load_criteria(path)


def _saturate(path):
    """Adds a lagging loop and a quiet control to a synthetic run's driver samples."""
    with open(path / "samples.csv", "a", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        for i in range(100):
            w.writerow([i, WALL0 + i, "driver", 100, "control_lag_ms", 2.0])
            w.writerow([i, WALL0 + i, "driver", 100, "loop_lag_ms", 250.0])


def test_a_saturated_run_warns_in_summary_criteria_and_report_without_changing_the_verdict(
    tmp_path,
):
    healthy = write_results_dir(tmp_path / "ok", n_flows=20, durations=[10.0] * 20)
    base = summarize(load_results(healthy))
    assert base["driver_saturated"] is False
    assert all(r["id"] != "driver_saturated" for r in base["criteria"])

    path = write_results_dir(tmp_path / "hot", n_flows=20, durations=[10.0] * 20)
    _saturate(path)
    summary = summarize(load_results(path))
    assert summary["driver_saturated"] is True
    assert summary["driver_saturation"]["processes"]["driver"]["loop_lag_p99_ms"] == 250.0
    row = summary["criteria"][-1]
    assert row["id"] == "driver_saturated" and row["status"] == "WARN"
    assert summary["verdict"] == base["verdict"]  # a warning, not a failure

    render(path)
    html = (path / "report.html").read_text(encoding="utf-8")
    assert html.index("The driver was saturated") < html.index("Run output")
    assert "🚩 WARN" in html and "wb-warn" in html
    assert json.loads((path / "summary.json").read_text())["driver_saturated"] is True
    csv_rows = (path / "criteria.csv").read_text(encoding="utf-8")
    assert "driver_saturated" in csv_rows
