"""What the notebooks call: setup, result display, the verdict gate, and `make run`'s wrapper."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.profiles import PROJECT_ROOT


def setup_notebook() -> None:
    """nest_asyncio, so the library's sync wrappers work inside Jupyter's running loop."""
    import nest_asyncio

    nest_asyncio.apply()


def show_results(results_dir: str | Path) -> dict[str, Any]:
    """Displays the milestone's output sections, criteria table, figures and verdict."""
    from IPython.display import HTML, Image, Markdown, display

    from workbench import report

    results_dir = Path(results_dir)
    summary = json.loads((results_dir / "summary.json").read_text(encoding="utf-8"))
    display(Markdown(f"```\n{report.console_text(results_dir)}\n```"))
    display(HTML(report.criteria_table_html(summary["criteria"])))
    for png in sorted((results_dir / "figures").glob("*.png")):
        display(Image(filename=str(png)))
    display(
        Markdown(f"**Verdict: {summary['verdict']}** — report: `{results_dir / 'report.html'}`")
    )
    return summary


class CriteriaFailed(AssertionError):
    """Raised (so papermill exits non-zero) when asked to fail on a FAILED verdict."""


def enforce_verdict(summary: dict[str, Any], fail_on_criteria: bool) -> None:
    if fail_on_criteria and summary["verdict"] != "PASSED":
        failed = [r["label"] for r in summary["criteria"] if r["status"] == "FAIL"]
        raise CriteriaFailed(f"verdict {summary['verdict']}: failed {', '.join(failed)}")


def show_capacity(results_dir: str | Path) -> Any:
    """Plots throughput and p95 against users with the knee marked; returns the curve."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    from workbench import analysis, plots

    results = analysis.load_results(results_dir)
    curve = analysis.capacity_curve(results)
    display(curve)
    fig = plots.capacity_curve(curve, analysis.knee(curve))
    png = Path(results_dir) / "figures" / "capacity_curve.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    display(Image(filename=str(png)))  # a PNG in the notebook, whatever the matplotlib backend
    return curve


def notebook_command(args: Namespace) -> int:
    """Executes a notebook with papermill into its results dir and prints where the report is."""
    import papermill as pm

    from workbench.config import RunConfig

    params: dict[str, Any] = {k: _literal(v) for k, v in args.param}
    for key in ("users", "profile", "output_dir"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    params.setdefault("run_id", RunConfig.new_run_id("nb", params.get("users", 0)))
    if Path(args.notebook).name == "run.ipynb":  # validate before anything is created
        RunConfig.from_params(**params)
    out_dir = RunConfig.from_params(
        run_id=params["run_id"], output_dir=params.get("output_dir", "outputs")
    ).results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise WorkbenchError("notebook", f"{notebook} not found", "pass notebooks/run.ipynb")
    print(f"▶ papermill {notebook} -> {out_dir / notebook.name}")
    # The notebook's own output (setup lines, per-user lines, results) streams to the terminal.
    pm.execute_notebook(
        str(notebook),
        str(out_dir / notebook.name),
        parameters=params,
        cwd=str(PROJECT_ROOT),
        progress_bar=False,
        log_output=True,
        stdout_file=sys.stdout,
        stderr_file=sys.stderr,
    )
    report = out_dir / "report.html"
    summary = (
        json.loads((out_dir / "summary.json").read_text())
        if (out_dir / "summary.json").exists()
        else {}
    )
    print(f"📄 Report: {report}  verdict: {summary.get('verdict', '?')}")
    return 0


def _literal(text: str) -> Any:
    """`-p users 25` gives 25, `-p profile fast` gives 'fast' (as papermill's CLI does)."""
    import yaml

    return yaml.safe_load(text)
