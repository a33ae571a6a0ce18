"""Two runs side by side: did the change make flows faster, slower, or is it noise?

Each run is read from its results dir alone. Latency distributions are compared with the
Mann-Whitney U test (no normality assumption; load-test latencies are skewed), per flow and per
step, and the success rates with Fisher's exact test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from workbench.analysis.results import load_results
from workbench.steps import STEPS

ALPHA = 0.05


def latency_shift(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> dict[str, Any]:
    """Median ratio b/a and a two-sided Mann-Whitney U p-value; `verdict` says which way."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return {"n_a": len(a), "n_b": len(b), "ratio": None, "p_value": None, "verdict": "too few"}
    p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    ratio = float(np.median(b) / np.median(a)) if np.median(a) > 0 else None
    if p >= alpha or ratio is None or ratio == 1:
        verdict = "no significant change"
    else:
        verdict = "slower" if ratio > 1 else "faster"
    return {
        "n_a": len(a),
        "n_b": len(b),
        "median_a": float(np.median(a)),
        "median_b": float(np.median(b)),
        "ratio": ratio,
        "p_value": p,
        "verdict": verdict,
    }


def success_shift(ok_a: int, n_a: int, ok_b: int, n_b: int) -> dict[str, Any]:
    """Fisher's exact test on the two runs' ok / failed counts."""
    if n_a == 0 or n_b == 0:
        return {"rate_a": None, "rate_b": None, "p_value": None}
    table = np.array([[ok_a, n_a - ok_a], [ok_b, n_b - ok_b]])
    return {
        "rate_a": ok_a / n_a,
        "rate_b": ok_b / n_b,
        "p_value": float(stats.fisher_exact(table).pvalue),
    }


def compare(dir_a: str | Path, dir_b: str | Path) -> pd.DataFrame:
    """One row for the whole flow and one per step: medians, ratio b/a, p-value, verdict."""
    ra, rb = load_results(dir_a), load_results(dir_b)
    rows = [{"what": "flow", **latency_shift(_ok(ra.flows), _ok(rb.flows))}]
    for step in _steps_in_order(ra.steps, rb.steps):
        rows.append({"what": step, **latency_shift(_ok(ra.steps, step), _ok(rb.steps, step))})
    return pd.DataFrame(rows).set_index("what")


def success(dir_a: str | Path, dir_b: str | Path) -> dict[str, Any]:
    ra, rb = load_results(dir_a), load_results(dir_b)
    fa, fb = _decided(ra.flows), _decided(rb.flows)
    return success_shift(int(fa["ok"].sum()), len(fa), int(fb["ok"].sum()), len(fb))


def _decided(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].isin(["ok", "failed"])]


def _ok(df: pd.DataFrame, step: str | None = None) -> np.ndarray:
    rows = df[df["ok"].astype(bool)]
    if step is not None:
        rows = rows[rows["step"] == step]
    return rows["duration_s"].to_numpy(dtype=float)


def _steps_in_order(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    present = set(a.get("step", pd.Series(dtype=str))) | set(b.get("step", pd.Series(dtype=str)))
    return [s for s in STEPS if s in present]


def regressions(
    table: pd.DataFrame, success: dict[str, Any], alpha: float = ALPHA, tolerance: float = 0.0
) -> list[str]:
    """What got significantly worse from A to B: the whole flow's latency (Mann-Whitney U
    p < alpha and a median ratio above 1 + `tolerance`) and the success rate (Fisher's exact
    p < alpha, B lower). Steps are compared but not gated: thirteen tests at alpha 0.05 would
    flag noise in most comparisons."""
    found = []
    if "flow" in table.index:
        flow = table.loc["flow"]
        if flow["verdict"] == "slower" and flow["ratio"] > 1 + tolerance:
            found.append(
                f"flows slower: median {flow['median_a']:.3f}s -> {flow['median_b']:.3f}s "
                f"(x{flow['ratio']:.3f}, Mann-Whitney U p={flow['p_value']:.3g})"
            )
    p = success.get("p_value")
    if p is not None and p < alpha and success["rate_b"] < success["rate_a"]:
        found.append(
            f"success rate lower: {success['rate_a']:.1%} -> {success['rate_b']:.1%} "
            f"(Fisher's exact p={p:.3g})"
        )
    return found
