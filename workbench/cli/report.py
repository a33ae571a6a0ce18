"""`python -m workbench report DIR`: renders report.html again from a results dir alone."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from workbench.analysis.report import render
from workbench.driver.wallets import file_secrets
from workbench.errors import WorkbenchError


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m workbench report DIR [--criteria FILE]`: renders again, prints the path."""
    p = argparse.ArgumentParser(prog="python -m workbench report", description=main.__doc__)
    p.add_argument("results_dir")
    p.add_argument("--criteria", help="judge against another criteria file")
    args = p.parse_args(argv)
    try:
        config_file = Path(args.results_dir) / "config.json"
        config = json.loads(config_file.read_text("utf-8")) if config_file.is_file() else {}
        path = render(args.results_dir, args.criteria, secrets=file_secrets(config))
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = json.loads((path.parent / "summary.json").read_text(encoding="utf-8"))
    print(path)  # stdout is just the path, for scripts; the verdict goes to stderr
    print(f"verdict: {summary['outcome']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
