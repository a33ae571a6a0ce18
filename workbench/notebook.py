"""What the notebooks call: setup, parameters, result display, the verdict gate."""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import nest_asyncio
from IPython.display import HTML, Image, Markdown, display

from workbench.analysis.console import console_text
from workbench.driver.config import RunConfig
from workbench.errors import WorkbenchError

# The run notebooks' parameters cells list exactly these (tests/test_notebook_params.py checks).
RUN_PARAMETERS = tuple(f.name for f in fields(RunConfig))
# The first line of the cell papermill injects after the parameters cell (its Python translator).
_INJECTED_HEADER = "# Parameters"


def setup_notebook() -> None:
    """nest_asyncio, so the library's sync wrappers work inside Jupyter's running loop."""
    nest_asyncio.apply()


def run_config(namespace: Mapping[str, Any], **overrides: Any) -> RunConfig:
    """The run's RunConfig from a notebook's parameters (`globals()`), validated; `overrides` win.

    papermill only warns about a `-p NAME` the parameters cell lacks, and the run would go on
    without it; so a name papermill injected that is not a RunConfig field is refused first.
    """
    check_parameters(injected_parameters(), RUN_PARAMETERS, "this notebook")
    params = {name: namespace[name] for name in RUN_PARAMETERS if name in namespace}
    params.update(overrides)
    params["run_id"] = params.get("run_id") or None  # "" (the old default) means generate one
    return RunConfig.from_params(**params)


def injected_parameters() -> list[str]:
    """Names assigned by the cell papermill injected into this kernel; [] when not run by papermill.

    The kernel never sees the notebook file, only the sources it ran: the latest one that opens
    with papermill's header is that cell.
    """
    from IPython import get_ipython

    shell = get_ipython()
    history = shell.history_manager.input_hist_raw if shell is not None else []
    for source in reversed(history):
        if source.partition("\n")[0].strip() == _INJECTED_HEADER:
            try:
                body = ast.parse(source).body
            except SyntaxError:
                continue
            return [
                target.id
                for node in body
                if isinstance(node, ast.Assign)
                for target in node.targets
                if isinstance(target, ast.Name)
            ]
    return []


def check_parameters(given: Iterable[str], valid: Iterable[str], where: str) -> None:
    """A WorkbenchError for the first name in `given` not in `valid`, listing the valid ones."""
    valid = list(valid)
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise WorkbenchError(
                name,
                f"not a parameter of {where}",
                f"{hint}pass -p with one of: {', '.join(valid)}",
            )


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


def enforce_verdict(summary: Mapping[str, Any] | str | Path, fail_on_criteria: bool) -> None:
    """Raises CriteriaFailed on a FAILED verdict when asked to; `summary` or its results dir."""
    s: Mapping[str, Any] = (
        summary
        if isinstance(summary, Mapping)
        else json.loads((Path(summary) / "summary.json").read_text(encoding="utf-8"))
    )
    if fail_on_criteria and s["verdict"] != "PASSED":
        failed = [r["label"] for r in s["criteria"] if r["status"] == "FAIL"]
        raise CriteriaFailed(f"verdict {s['verdict']}: failed {', '.join(failed)}")


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
