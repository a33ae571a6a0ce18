"""`python -m workbench notebook NB`: executes a notebook with papermill, prints the report path.

Exit codes as `run`'s: 99 when the notebook raised CriteriaFailed (fail_on_criteria), 2 when it
raised a WorkbenchError (a bad parameter), 1 when anything else failed in it.
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

from workbench.errors import EXIT_BAD_INPUT, EXIT_BROKE, EXIT_FAILED, WorkbenchError
from workbench.params import PROJECT_ROOT


def notebook_command(args: Namespace) -> int:
    """Executes a notebook with papermill into its results dir and prints where the report is."""
    import papermill as pm

    from workbench.driver.config import RunConfig

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
    try:
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
    except pm.PapermillExecutionError as e:
        print(f"❌ {e.ename}: {e.evalue}  (executed notebook: {out_dir / notebook.name})")
        return _EXIT_BY_ERROR.get(e.ename, EXIT_BROKE)
    report = out_dir / "report.html"
    summary = (
        json.loads((out_dir / "summary.json").read_text())
        if (out_dir / "summary.json").exists()
        else {}
    )
    print(f"📄 Report: {report}  verdict: {summary.get('verdict', '?')}")
    return 0


_EXIT_BY_ERROR = {"CriteriaFailed": EXIT_FAILED, "WorkbenchError": EXIT_BAD_INPUT}


def _literal(text: str) -> Any:
    """`-p users 25` gives 25, `-p profile fast` gives 'fast' (as papermill's CLI does)."""
    import yaml

    return yaml.safe_load(text)
