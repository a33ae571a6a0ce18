"""The notebooks end to end through papermill, as a user runs them headlessly."""

from __future__ import annotations

import json
import re

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
    return json.dumps([c.get("outputs", []) for c in nb.cells])


def test_run_notebook_five_users_fast_writes_a_judged_results_dir(tmp_path):
    nb = _execute(
        tmp_path,
        "run.ipynb",
        users=5,
        profile="fast",
        shape="burst",
        output_dir=str(tmp_path),
        run_id="nb-e2e",
    )
    results = tmp_path / "nb-e2e"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["users"] == 5 and summary["flows_total"] == 5
    assert summary["flows_ok"] == 5, summary["error_classes"]
    assert summary["verdict"] in ("PASSED", "FAILED")
    assert {r["status"] for r in summary["criteria"]} <= {"TARGET", "ACCEPTABLE", "FAIL", "N/A"}
    flows = [json.loads(line) for line in (results / "events.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "flow" for e in flows) == 5
    html = (results / "report.html").read_text()
    assert summary["verdict"] in html and '<script src="http' not in html
    text = _outputs_text(nb)
    assert "Flow completed" in text and summary["verdict"] in text
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
