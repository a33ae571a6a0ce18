"""`python -m workbench compare RUN_A RUN_B [--fail-on-regression]`: the compare notebook's table
on the command line, and a CI gate (exit 99 on a significant regression of B against A)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from workbench.analysis import compare
from workbench.errors import EXIT_FAILED, EXIT_OK


def compare_command(
    run_a: str, run_b: str, fail_on_regression: bool = False, tolerance: float = 0.0
) -> int:
    """Prints the table and the verdict; 99 with `fail_on_regression` when B regressed."""
    table = compare.compare(run_a, run_b)
    success = compare.success(run_a, run_b)
    print(f"A: {run_a}\nB: {run_b}\n")
    print(_table_text(table))
    print(f"\nsuccess rate: {_success_text(success)}")
    found = compare.regressions(table, success, tolerance=tolerance)
    for problem in found:
        print(f"❌ regression: {problem}")
    if not found:
        print("✅ no significant regression (flow latency and success rate)")
    return EXIT_FAILED if found and fail_on_regression else EXIT_OK


def _table_text(table: pd.DataFrame) -> str:
    shown = table.reindex(
        columns=["n_a", "n_b", "median_a", "median_b", "ratio", "p_value", "verdict"]
    )
    formats = {
        "median_a": _fmt("{:.3f}s"),
        "median_b": _fmt("{:.3f}s"),
        "ratio": _fmt("x{:.3f}"),
        "p_value": _fmt("{:.3g}"),
    }
    return shown.to_string(formatters=formats, na_rep="–")


def _fmt(pattern: str) -> Any:
    return lambda v: "–" if v is None or pd.isna(v) else pattern.format(v)


def _success_text(s: dict[str, Any]) -> str:
    if s["p_value"] is None:
        return "n/a (a run has no finished flows)"
    return f"A {s['rate_a']:.1%}, B {s['rate_b']:.1%} (Fisher's exact p={s['p_value']:.3g})"
