"""`python -m workbench run …`: one load run from flags or a params file, with its report.

Exit codes (`workbench.errors`): 0 done (and PASSED, with --fail-on-criteria), 99 FAILED with
--fail-on-criteria, 1 the run broke, 2 bad input (raised as WorkbenchError), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from typing import Any

from workbench.driver.config import RunConfig
from workbench.driver.runner import _until_signalled, run
from workbench.errors import EXIT_BROKE, EXIT_FAILED, EXIT_OK, WorkbenchError


def run_command(args: Any) -> int:
    """`python -m workbench run …`."""
    config = RunConfig.from_cli(args, params_file=args.params)
    results = config.results_dir()
    try:
        outcome = asyncio.run(_until_signalled(run(config, report=not args.no_report)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\n⏹  Interrupted: in-flight flows recorded as cancelled in {results}")
        print(f"   Render the partial results: python -m workbench report {results}")
        return 130
    except WorkbenchError:
        raise  # bad input found on the way (a target's preflight, short funds): exit 2
    except Exception as e:
        traceback.print_exc()
        print(f"❌ The run broke ({type(e).__name__}: {e}); what it wrote is in {results}")
        print(f"   Render the partial results: python -m workbench report {results}")
        return EXIT_BROKE
    print(f"📁 Results: {outcome.results_dir}")
    if not args.no_report:
        summary = json.loads((outcome.results_dir / "summary.json").read_text())
        print(f"📄 Report: {outcome.results_dir / 'report.html'}  verdict: {summary['verdict']}")
        if config.fail_on_criteria and summary["verdict"] != "PASSED":
            failed = [r["label"] for r in summary["criteria"] if r["status"] == "FAIL"]
            print(f"❌ Criteria failed: {', '.join(failed) or 'incomplete run'}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK
