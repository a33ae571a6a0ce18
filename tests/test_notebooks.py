"""The notebooks end to end through papermill, as a user runs them headlessly."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import papermill as pm
import pytest

from workbench.params import PROJECT_ROOT

pytestmark = pytest.mark.e2e
KEY_SHAPED = re.compile(r"0x[0-9a-fA-F]{64}\b")


def _execute(tmp_path, notebook, **params):
    out = tmp_path / f"out-{notebook}"
    pm.execute_notebook(
        str(PROJECT_ROOT / "notebooks" / notebook),
        str(out),
        parameters=params,
        cwd=str(PROJECT_ROOT),
        progress_bar=False,
        kernel_name="python3",
    )
    return nbformat.read(out, as_version=4)


def _outputs_text(nb) -> str:
    return json.dumps([c.get("outputs", []) for c in nb.cells], ensure_ascii=False)


def test_run_notebook_five_users_fast_writes_a_judged_results_dir(tmp_path):
    nb = _execute(
        tmp_path,
        "run.ipynb",
        users=5,
        profile="fast",
        shape="burst",
        output_dir=str(tmp_path),
        run_id="nb-e2e",
        flow_timeout_s=120,  # RunConfig fields the notebook once ignored
        max_connections=50,
    )
    results = tmp_path / "nb-e2e"
    config = json.loads((results / "config.json").read_text())
    assert (config["flow_timeout_s"], config["max_connections"]) == (120, 50)
    assert {"web3", "aiohttp", "numpy", "eth-account", "yarl"} <= set(config["versions"])
    summary = json.loads((results / "summary.json").read_text())
    assert summary["users"] == 5 and summary["flows_total"] == 5
    assert summary["flows_ok"] == 5, summary["error_classes"]
    assert summary["verdict"] in ("PASSED", "FAILED")
    # WARN: the driver's self-check row, present when it was saturated (a busy machine).
    statuses = {"TARGET", "ACCEPTABLE", "FAIL", "N/A", "WARN"}
    assert {r["status"] for r in summary["criteria"]} <= statuses
    assert summary["driver_saturated"] in (True, False)
    flows = [json.loads(line) for line in (results / "events.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "flow" for e in flows) == 5
    html = (results / "report.html").read_text()
    assert summary["verdict"] in html and '<script src="http' not in html
    text = _outputs_text(nb)
    assert "Flow completed" in text and summary["verdict"] in text
    passed = summary["verdict"] == "PASSED"
    assert ("🚀 Ready to proceed to Milestone 4: Load Pattern Testing" in text) == passed
    # Nothing key-shaped in what the notebook shows except public tx hashes.
    hashes = {e.get("tx_hash") for e in flows if e.get("tx_hash")}
    assert set(KEY_SHAPED.findall(text)) <= hashes


def test_fail_on_criteria_makes_papermill_fail_on_a_failed_verdict(tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "name: strict\ncriteria:\n  - {id: impossible, label: Impossible, metric: avg_s, "
        "op: '<', target: 0.000001, unit: s}\n"
    )
    with pytest.raises(pm.PapermillExecutionError, match="CriteriaFailed"):
        _execute(
            tmp_path,
            "run.ipynb",
            users=2,
            profile="fast",
            shape="burst",
            criteria=str(strict),
            fail_on_criteria=True,
            output_dir=str(tmp_path),
            run_id="nb-strict",
        )
    assert json.loads((tmp_path / "nb-strict" / "summary.json").read_text())["verdict"] == "FAILED"


def test_a_bad_parameter_fails_before_anything_starts(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="users"):
        _execute(
            tmp_path,
            "run.ipynb",
            users="ten",
            profile="fast",
            output_dir=str(tmp_path),
            run_id="nb-bad",
        )
    assert not (tmp_path / "nb-bad").exists()


def test_plain_papermill_fails_on_an_unknown_parameter_naming_it(tmp_path):
    # papermill itself only warns "Passed unknown parameter"; the notebook refuses it.
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/run.ipynb", str(tmp_path / "out.ipynb")]
        + ["-p", "no_such_param", "1", "-p", "output_dir", str(tmp_path), "-p", "run_id", "x"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "no_such_param: not a parameter of this notebook" in output
    assert "rate_per_s" in output  # the list of valid ones
    assert not (tmp_path / "x").exists()  # refused before anything started


def test_rampup_notebook_renders_its_capacity_curve(tmp_path):
    # papermill -p passes text: the notebook must take "2,4" as well as a list
    nb = _execute(
        tmp_path,
        "rampup.ipynb",
        profile="fast",
        steps="[2, 4]",
        step_hold_s=3,
        ramp_s=1,
        output_dir=str(tmp_path),
        run_id="nb-ramp",
    )
    results = tmp_path / "nb-ramp"
    summary = json.loads((results / "summary.json").read_text())
    assert [row["users"] for row in summary["capacity"]] == [2, 4]
    assert (results / "figures" / "capacity_curve.png").stat().st_size > 0
    assert "image/png" in _outputs_text(nb)
