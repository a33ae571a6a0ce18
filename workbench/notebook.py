"""What the notebooks call: setup, result display, the verdict gate, and `make run`'s wrapper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nest_asyncio
from IPython.display import HTML, Image, Markdown, display

from workbench.analysis.console import console_text


def setup_notebook() -> None:
    """nest_asyncio, so the library's sync wrappers work inside Jupyter's running loop."""
    nest_asyncio.apply()


def show_results(results_dir: str | Path) -> dict[str, Any]:
    """Displays the milestone's output sections, criteria table, figures and verdict."""
    # Lazy, here and in show_capacity: the run notebook imports this module before the driver
    # runs in its kernel, and the analysis would add ~150 MB (89 -> 239 MB, measured) to its RSS.
    from workbench.analysis.report_html import criteria_table_html

    results_dir = Path(results_dir)
    summary = json.loads((results_dir / "summary.json").read_text(encoding="utf-8"))
    display(Markdown(f"```\n{console_text(results_dir)}\n```"))
    display(HTML(criteria_table_html(summary["criteria"])))
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

    from workbench.analysis import plots
    from workbench.analysis.results import load_results
    from workbench.analysis.stats import capacity_curve, knee

    results = load_results(results_dir)
    curve = capacity_curve(results)
    display(curve)
    fig = plots.capacity_curve(curve, knee(curve))
    png = Path(results_dir) / "figures" / "capacity_curve.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    display(Image(filename=str(png)))  # a PNG in the notebook, whatever the matplotlib backend
    return curve
