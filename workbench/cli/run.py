"""`python -m workbench run …`: one load run from flags or a params file, with its report."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from workbench.driver.config import RunConfig
from workbench.driver.runner import _until_signalled, run


def run_command(args: Any) -> int:
    """`python -m workbench run …`."""
    config = RunConfig.from_cli(args, params_file=args.params)
    try:
        outcome = asyncio.run(_until_signalled(run(config, report=not args.no_report)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        results = config.results_dir()
        print(f"\n⏹  Interrupted: in-flight flows recorded as cancelled in {results}")
        print(f"   Render the partial results: python -m workbench report {results}")
        return 130
    print(f"📁 Results: {outcome.results_dir}")
    if not args.no_report:
        summary = json.loads((outcome.results_dir / "summary.json").read_text())
        print(f"📄 Report: {outcome.results_dir / 'report.html'}  verdict: {summary['verdict']}")
        if config.fail_on_criteria and summary["verdict"] != "PASSED":
            return 1
    return 0
