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

import papermill as pm
import yaml

from workbench.driver.config import RunConfig
from workbench.errors import EXIT_BAD_INPUT, EXIT_BROKE, EXIT_FAILED, WorkbenchError
from workbench.params import PROJECT_ROOT, load


def notebook_command(args: Namespace) -> int:
    """Executes a notebook with papermill into its results dir and prints where the report is."""
    # Lazy: workbench.notebook imports IPython and the analysis, which `--help` must not pay.
    from workbench.notebook import check_parameters

    notebook = Path(args.notebook)
    if not notebook.is_file():
        raise WorkbenchError("notebook", f"{notebook} not found", "pass notebooks/run.ipynb")
    from_file = load(args.params, "params").data if getattr(args, "params", None) else {}
    params: dict[str, Any] = dict(from_file)
    params.update({k: _literal(v) for k, v in args.param})
    for key in ("users", "profile"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    output_dir = getattr(args, "output_dir", None) or params.get("output_dir") or "outputs"
    # papermill would only warn about a name its parameters cell lacks, and run without it.
    declared = pm.inspect_notebook(str(notebook))
    check_parameters(params, declared, notebook.as_posix())
    run_id = params.get("run_id") or RunConfig.new_run_id("nb", params.get("users", 0))
    params.update(
        {k: v for k, v in (("output_dir", output_dir), ("run_id", run_id)) if k in declared}
    )
    if notebook.name == "run.ipynb":  # validate before anything is created
        RunConfig.from_params(**params)
    out_dir = RunConfig.from_params(run_id=run_id, output_dir=output_dir).results_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
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
    return yaml.safe_load(text)
