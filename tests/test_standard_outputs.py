"""Results in the formats the field uses, and exit codes for CI: Locust's stats.csv and
stats_history.csv, JUnit criteria.xml, the report's rate-limit section, `compare` as a gate,
0 / 99 / 1 / 2 from the CLI; end to end, a fault run whose 429s reach stats.csv and the report
while the notebook keeps its live panel's final state."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import papermill as pm
import pytest
from synthetic import STEP_REQUESTS, write_results_dir

from workbench.__main__ import main
from workbench.analysis import report, stats_csv
from workbench.analysis.junit import criteria_junit
from workbench.analysis.results import load_results
from workbench.analysis.summary import analyze
from workbench.errors import EXIT_BAD_INPUT, EXIT_BROKE, EXIT_FAILED, EXIT_OK
from workbench.params import PROJECT_ROOT
from workbench.steps import STEPS

# Locust's own column names, written out here so the test does not trust the module's copy.
LOCUST_STATS = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
).split(",")
LOCUST_HISTORY = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,"
    "Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
).split(",")
STRICT = (
    "name: strict\ncriteria:\n  - {id: impossible, label: Impossible, metric: avg_s, "
    "op: '<', target: 0.000001, unit: s}\n"
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def expected_limits(n_flows: int, every: int) -> dict[str, int]:
    """429s the synthetic writer plants: every `every`-th RPC call, in the flows' call order."""
    calls = [
        name
        for _ in range(n_flows)
        for s in STEPS
        if s in STEP_REQUESTS and STEP_REQUESTS[s][0] == "RPC"
        for name in [STEP_REQUESTS[s][1]] * STEP_REQUESTS[s][2]
    ]
    out: dict[str, int] = {}
    for k, name in enumerate(calls, start=1):
        if k % every == 0:
            out[name] = out.get(name, 0) + 1
    return out


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory) -> Path:
    path = write_results_dir(tmp_path_factory.mktemp("limited") / "run", n_flows=20, limit_every=4)
    analyze(path)
    return path


# --- stats.csv -------------------------------------------------------------------------------------


def test_stats_csv_has_locusts_columns_and_a_row_per_flow_step_and_request(limited_run):
    rows = read_csv(limited_run / "stats.csv")
    assert list(rows[0])[: len(LOCUST_STATS)] == LOCUST_STATS
    assert list(rows[0])[len(LOCUST_STATS) :] == ["Retry Count", "429 Count", "503 Count"]
    keys = [(r["Type"], r["Name"]) for r in rows]
    assert keys[0] == ("flow", "flow") and keys[-1] == ("", "Aggregated")
    assert [name for kind, name in keys if kind == "step"] == list(STEPS)
    requests = {(kind, name) for kind, name, _ in STEP_REQUESTS.values()}
    assert {k for k in keys if k[0] not in ("flow", "step", "")} == requests


def test_stats_csv_counts_429s_and_retries_per_rpc_method(limited_run):
    rows = {r["Name"]: r for r in read_csv(limited_run / "stats.csv")}
    planted = expected_limits(20, 4)
    for name, n in planted.items():
        row = rows[name]
        assert int(row["429 Count"]) == n == int(row["Retry Count"]) == int(row["Failure Count"])
        per_flow = sum(c for s, (k, m, c) in STEP_REQUESTS.items() if m == name)
        assert int(row["Request Count"]) == 20 * per_flow + n  # each 429 is one more attempt
    assert int(rows["Aggregated"]["429 Count"]) == sum(planted.values())
    assert rows["relay"]["429 Count"] == "N/A" and rows["/api/relay"]["429 Count"] == "0"


def test_stats_csv_latencies_are_the_ok_samples_in_ms(limited_run):
    results = load_results(limited_run)
    flows = results.flows[results.flows["ok"]]["duration_s"].to_numpy() * 1000
    row = next(r for r in read_csv(limited_run / "stats.csv") if r["Name"] == "flow")
    for p in (50, 90, 99.9, 100):
        assert float(row[f"{p:g}%"]) == pytest.approx(np.percentile(flows, p), abs=0.01)
    assert float(row["Average Response Time"]) == pytest.approx(flows.mean(), abs=0.01)
    assert int(row["Request Count"]) == len(flows) and row["Failure Count"] == "0"


def test_a_name_without_successes_shows_na_latencies(tmp_path):
    path = write_results_dir(tmp_path / "run", n_flows=6, fail_every=1)  # every relay fails
    table = stats_csv.stats_table(load_results(path)).set_index("Name")
    assert table.at["relay", "Failure Count"] == 6 and table.at["relay", "50%"] == "N/A"
    assert table.at["flow", "Median Response Time"] == "N/A"


def test_a_run_that_ended_before_any_flow_still_gets_both_files(tmp_path):
    path = write_results_dir(tmp_path / "run", n_flows=0)
    analyze(path)
    (aggregated,) = read_csv(path / "stats.csv")
    assert (aggregated["Name"], aggregated["Request Count"], aggregated["50%"]) == (
        "Aggregated",
        "0",
        "N/A",
    )
    assert [r["Name"] for r in read_csv(path / "stats_history.csv")] == ["Aggregated"]


def test_stats_history_rows_accumulate_to_the_totals(limited_run):
    rows = read_csv(limited_run / "stats_history.csv")
    assert list(rows[0]) == LOCUST_HISTORY
    stamps = [int(r["Timestamp"]) for r in rows]
    assert stamps == sorted(stamps) and stamps[0] >= 1_750_000_000  # Unix time
    final = {r["Name"]: r for r in read_csv(limited_run / "stats.csv")}
    for name, row in final.items():
        mine = [int(r["Total Request Count"]) for r in rows if r["Name"] == name]
        assert mine == sorted(mine) and mine[-1] == int(row["Request Count"]), name
    ticks = {r["Timestamp"] for r in rows}
    aggregated = [r for r in rows if r["Name"] == "Aggregated"]
    assert len(aggregated) == len(ticks)  # the Aggregated row at every tick
    assert max(int(r["User Count"]) for r in rows) > 0


# --- criteria.xml ----------------------------------------------------------------------------------


def test_criteria_xml_is_junit_with_one_case_per_criterion(tmp_path):
    path = write_results_dir(tmp_path / "run", n_flows=20, fail_every=4)
    summary = analyze(path)
    suite = ET.parse(path / "criteria.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(summary["criteria"]) + 1  # and "run completed"
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    expected = {f"{r['label']} ({r['id']})" for r in summary["criteria"] if r["status"] == "FAIL"}
    assert failed == expected and failed and int(suite.get("failures")) == len(failed)
    assert cases[-1].get("name") == "run completed" and cases[-1].find("failure") is None


def test_an_incomplete_run_fails_its_run_completed_case_and_na_is_skipped(tmp_path):
    path = write_results_dir(tmp_path / "run", n_flows=10, complete=False)
    summary = analyze(path)
    summary["criteria"][0]["status"] = "N/A"
    root = ET.fromstring(criteria_junit(summary).encode())
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["run completed"].find("failure").get("type") == "INCOMPLETE"
    first = summary["criteria"][0]
    assert cases[f"{first['label']} ({first['id']})"].find("skipped") is not None
    assert int(root.get("skipped")) == 1


# --- the report's rate-limit section ------------------------------------------------------------------


def test_the_report_warns_about_429s_per_method(tmp_path):
    path = write_results_dir(tmp_path / "run", n_flows=20, limit_every=4)
    html = report.render(path).read_text(encoding="utf-8")
    section = html[html.index("Rate limits and retries") :]
    planted = expected_limits(20, 4)
    assert "Rate limited: " in section and str(sum(planted.values())) in section
    for name, n in planted.items():
        assert f"RPC {name} {n}" in section
    assert all((path / f).is_file() for f in ("criteria.xml", "stats.csv", "stats_history.csv"))


def test_no_warning_without_429s(tmp_path):
    path = write_results_dir(tmp_path / "run", n_flows=6)
    html = report.render(path).read_text(encoding="utf-8")
    section = html[html.index("Rate limits and retries") :]
    assert "Rate limited" not in section and "RPC eth_call" in section


def test_a_results_dir_from_before_requests_csv_still_renders(tmp_path):
    path = write_results_dir(tmp_path / "run", n_flows=6)
    (path / "requests.csv").unlink()
    html = report.render(path).read_text(encoding="utf-8")
    assert "No per-request record" in html
    names = [r["Name"] for r in read_csv(path / "stats.csv")]
    assert names[0] == "flow" and names[-1] == "Aggregated" and "eth_call" not in names


# --- compare as a CI gate ------------------------------------------------------------------------------


def test_compare_exits_99_on_a_significant_slowdown_only_when_asked(tmp_path, capsys):
    base = np.random.default_rng(1).uniform(10, 20, 60)
    a = write_results_dir(tmp_path / "a", n_flows=60, durations=base)
    b = write_results_dir(tmp_path / "b", n_flows=60, durations=base * 1.5, seed=1)
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "regression: flows slower" in out and "flow" in out and "relay" in out
    assert main(["compare", str(a), str(b)]) == EXIT_OK  # the table, no gate
    assert main(["compare", str(a), str(b), "--fail-on-regression", "--tolerance", "0.6"]) == 0


def test_compare_passes_noise_and_fails_a_lower_success_rate(tmp_path):
    rng = np.random.default_rng(2)
    a = write_results_dir(tmp_path / "a", n_flows=60, durations=rng.uniform(10, 20, 60))
    b = write_results_dir(tmp_path / "b", n_flows=60, durations=rng.uniform(10, 20, 60), seed=3)
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == EXIT_OK
    worse = write_results_dir(tmp_path / "c", n_flows=60, fail_every=2, seed=4)
    assert main(["compare", str(a), str(worse), "--fail-on-regression"]) == EXIT_FAILED
    assert main(["compare", str(a), str(tmp_path / "nothing")]) == EXIT_BAD_INPUT


# --- exit codes of run and notebook ----------------------------------------------------------------


def fake_run(verdict: str | None, error: Exception | None = None):
    """Stands in for `runner.run`: writes a summary with `verdict`, or raises `error`."""

    async def run(config, report=True):
        if error is not None:
            raise error
        config.results_dir().mkdir(parents=True)
        summary = {"verdict": verdict, "criteria": [{"label": "P95", "status": "FAIL"}]}
        (config.results_dir() / "summary.json").write_text(json.dumps(summary))
        return SimpleNamespace(results_dir=config.results_dir())

    return run


@pytest.mark.parametrize(
    ("verdict", "error", "flags", "code"),
    [
        ("FAILED", None, ["--fail-on-criteria"], EXIT_FAILED),
        ("FAILED", None, [], EXIT_OK),
        ("PASSED", None, ["--fail-on-criteria"], EXIT_OK),
        (None, RuntimeError("the stack died"), ["--fail-on-criteria"], EXIT_BROKE),
    ],
)
def test_run_exit_codes(tmp_path, monkeypatch, verdict, error, flags, code):
    from workbench.cli import run as run_cli

    monkeypatch.setattr(run_cli, "run", fake_run(verdict, error))
    args = ["run", "--users", "2", "--profile", "fast", "--output-dir", str(tmp_path), *flags]
    assert main(args) == code


def test_bad_input_exits_2_before_anything_runs(tmp_path, capsys):
    assert main(["run", "--users", "0", "--output-dir", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "users" in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert main(["run", "--rpc-rate-limit", "-1", "--output-dir", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("ename", "code"),
    [("CriteriaFailed", EXIT_FAILED), ("WorkbenchError", EXIT_BAD_INPUT), ("KeyError", 1)],
)
def test_notebook_exit_codes_follow_what_the_notebook_raised(tmp_path, monkeypatch, ename, code):
    def execute(*args, **kwargs):
        raise pm.PapermillExecutionError(3, 3, "enforce_verdict(...)", ename, "why", [])

    monkeypatch.setattr(pm, "execute_notebook", execute)
    args = ["notebook", "notebooks/run.ipynb", "--profile", "fast", "--output-dir", str(tmp_path)]
    assert main(args) == code


# --- end to end ------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_rate_limited_run_through_papermill_reports_429s_per_method_and_keeps_its_panel(
    tmp_path,
):
    """The rpc fault plan's kind of fault, made frequent enough that every RPC method the flows
    call meets it: 429s reach requests.csv, stats.csv, summary.json and the report, and the
    executed notebook keeps the live panel's final state."""
    plan = tmp_path / "rpc-429.yaml"
    plan.write_text("name: rpc-429\nrpc: {error_rate: 0.3, statuses: [429]}\n")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / "run.ipynb"),
        str(out),
        parameters={
            "users": 20,
            "profile": "fast",
            "shape": "burst",
            "faults": str(plan),
            "output_dir": str(tmp_path),
            "run_id": "limited",
        },
        cwd=str(PROJECT_ROOT),
        progress_bar=False,
        kernel_name="python3",
    )
    results = tmp_path / "limited"
    summary = json.loads((results / "summary.json").read_text())
    rows = {r["Name"]: r for r in read_csv(results / "stats.csv") if r["Type"] == "RPC"}
    busy = {name for name, r in rows.items() if int(r["Request Count"]) >= 20}
    assert {"eth_call", "eth_getTransactionReceipt"} <= busy
    for name in busy:
        limited = int(rows[name]["429 Count"])
        assert (
            limited > 0 and limited == summary["requests"]["by_name"][f"RPC {name}"]["rate_limited"]
        )
    section = (results / "report.html").read_text()
    section = section[section.index("Rate limits and retries") :]
    assert "Rate limited: " in section
    assert all(f"RPC {name} " in section for name in busy)
    assert ET.parse(results / "criteria.xml").getroot().tag == "testsuites"
    # The panel: one display output, left in its final state.
    nb = nbformat.read(out, as_version=4)
    panels = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if o.output_type == "display_data" and "wb-live" in o.data.get("text/html", "")
    ]
    assert len(panels) == 1
    final = panels[0].data["text/plain"]
    ok, failed = summary["flows_ok"], summary["flows_failed"]
    assert f"20/20 started, 0 running, {ok} ok, {failed} failed" in final
    assert f"{summary['requests']['rate_limited']} rate-limited" in final


@pytest.mark.e2e
def test_the_cli_exits_99_when_criteria_fail(tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text(STRICT)
    args = ["--users", "2", "--profile", "fast", "--shape", "burst", "--criteria", str(strict)]
    args += ["--output-dir", str(tmp_path), "--fail-on-criteria"]
    done = subprocess.run(
        [sys.executable, "-m", "workbench", "run", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == EXIT_FAILED, done.stderr[-2000:]
    assert "Criteria failed: Impossible" in done.stderr
    (results,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    failure = ET.parse(results / "criteria.xml").getroot().find(".//failure")
    assert failure is not None and "avg_s" in failure.get("message")
