"""Criteria as data: statuses, exact boundaries, verdicts and file validation."""

from __future__ import annotations

import csv
import math

import pytest

from workbench.analysis import criteria as crit
from workbench.errors import WorkbenchError


def _criterion(op: str, target: float, acceptable: float | None = None, **kw) -> crit.Criterion:
    acc = target if acceptable is None else acceptable
    return crit.Criterion(id="x", label="X", metric="m", op=op, target=target, acceptable=acc, **kw)


def _status(value, op, target, acceptable=None, **kw) -> str:
    return crit.status_of(value, _criterion(op, target, acceptable, **kw))[0]


# ----------------------------------------------------------------------------- statuses


@pytest.mark.parametrize(
    "value,expected",
    [(45, "TARGET"), (60, "ACCEPTABLE"), (75, "ACCEPTABLE"), (90, "FAIL"), (200, "FAIL")],
)
def test_statuses_of_a_lower_is_better_row(value, expected):
    assert _status(value, "<", 60, 90) == expected  # Avg Duration <60s / <90s


@pytest.mark.parametrize(
    "value,expected",
    [(0.96, "TARGET"), (0.95, "ACCEPTABLE"), (0.91, "ACCEPTABLE"), (0.90, "FAIL"), (0.5, "FAIL")],
)
def test_statuses_of_a_higher_is_better_row(value, expected):
    assert _status(value, ">", 0.95, 0.90) == expected  # Success Rate >95% / >90%


# Every operator at, just below and just above its threshold (one-threshold rows).
BOUNDARIES = [
    ("<", 10, False), ("<", math.nextafter(10, 0), True), ("<", math.nextafter(10, 20), False),
    ("<=", 10, True), ("<=", math.nextafter(10, 0), True), ("<=", math.nextafter(10, 20), False),
    (">", 10, False), (">", math.nextafter(10, 0), False), (">", math.nextafter(10, 20), True),
    (">=", 10, True), (">=", math.nextafter(10, 0), False), (">=", math.nextafter(10, 20), True),
    ("==", 10, True), ("==", math.nextafter(10, 0), False), ("==", math.nextafter(10, 20), False),
]  # fmt: skip


@pytest.mark.parametrize("op,value,met", BOUNDARIES)
def test_boundaries_are_exact_for_every_operator(op, value, met):
    assert _status(value, op, 10) == ("TARGET" if met else "FAIL")


@pytest.mark.parametrize("op,target,acceptable", [("<", 60, 90), ("<=", 60, 90), (">", 0.95, 0.9)])
def test_boundaries_of_the_acceptable_threshold(op, target, acceptable):
    inclusive = op in ("<=", ">=")
    assert _status(acceptable, op, target, acceptable) == ("ACCEPTABLE" if inclusive else "FAIL")
    assert _status(target, op, target, acceptable) == ("TARGET" if inclusive else "ACCEPTABLE")


def test_rates_from_counts_meet_thresholds_exactly():
    # 19/20 is the same double as 0.95: "> 95%" is not met by exactly 95%.
    assert _status(19 / 20, ">", 0.95, 0.90) == "ACCEPTABLE"
    assert _status(49 / 50, ">", 0.98) == "FAIL"  # one failed upload in 50 misses "> 98%"


@pytest.mark.parametrize("value", [None, math.nan, math.inf, "12", True])
def test_missing_or_non_numeric_values_fail_unless_optional(value):
    status, note = crit.status_of(value, _criterion("<", 1))
    assert status == "FAIL" and note
    assert _status(value, "<", 1, optional=True) == "N/A"


def test_metric_paths_reach_into_nested_dicts():
    summary = {"a": 1, "resources": {"api": {"peak_rss_mb": 70.0}}}
    assert crit.metric_value(summary, "resources.api.peak_rss_mb") == 70.0
    assert crit.metric_value(summary, "resources.anvil.peak_rss_mb") is None
    assert crit.metric_value(summary, "a.b") is None


# ----------------------------------------------------------------------------- verdict


def _rows(*statuses: str) -> list[dict]:
    return [{"status": s} for s in statuses]


def test_verdict_passes_iff_no_row_fails_and_the_run_completed():
    assert crit.verdict(_rows("TARGET", "ACCEPTABLE", "N/A")) == "PASSED"
    assert crit.verdict(_rows("TARGET", "FAIL")) == "FAILED"
    assert crit.verdict(_rows("TARGET"), complete=False) == "FAILED"
    assert crit.verdict([]) == "PASSED"


def test_the_seeds_expected_output_passes_ms03():
    # The numbers of the seed's "Expected Output", which ends "Milestone 3 PASSED!".
    summary = {
        "success_rate": 24 / 25,
        "avg_s": 52.3,
        "p95_s": 68.1,
        "peak_rss_mb": 245,
        "memory_slope_mb_per_min": 0.2,
        "avg_cpu_pct": 34,
        "api_errors": 0,
        "tx_success_rate": 24 / 24,
        "upload_success_rate": 25 / 25,
    }
    rows = crit.evaluate(crit.load_criteria("ms03"), summary)
    status = {row["id"]: row["status"] for row in rows}
    assert status.pop("peak_memory") == "ACCEPTABLE"  # 245 MB: between 200 and 300
    assert set(status.values()) == {"TARGET"}
    assert crit.verdict(rows) == "PASSED"


def test_ms03_covers_every_success_criterion_and_the_benchmark_table():
    c = crit.load_criteria("ms03")
    by_metric = {row.metric: row for row in c}
    expected = {
        "success_rate": (">=", 0.95, 0.90),
        "avg_s": ("<", 60, 90),
        "p95_s": ("<", 90, 120),
        "peak_rss_mb": ("<", 200, 300),
        "memory_slope_mb_per_min": ("<", 1, 5),
        "avg_cpu_pct": ("<", 50, 80),
        "api_errors": ("==", 0, 0),
        "tx_success_rate": (">", 0.95, 0.95),
        "upload_success_rate": (">", 0.98, 0.98),
    }
    assert {m: (r.op, r.target, r.acceptable) for m, r in by_metric.items()} == expected
    assert all(row.source for row in c)


@pytest.mark.parametrize(
    ("ok", "total", "expected"),
    [(20, 20, "TARGET"), (19, 20, "TARGET"), (47, 50, "ACCEPTABLE"), (9, 10, "ACCEPTABLE"),
     (18, 20, "ACCEPTABLE"), (89, 100, "FAIL"), (22, 25, "FAIL")],
)  # fmt: skip
def test_ms03_success_rate_accepts_exactly_90_percent_as_the_seed_says(ok, total, expected):
    # "90%+ of flows complete successfully": 9 of 10 passes; the table's 95% is the target.
    rows = crit.evaluate(crit.load_criteria("ms03"), {"success_rate": ok / total})
    assert rows[0]["id"] == "success_rate" and rows[0]["status"] == expected


def test_ms03_names_the_milestone_a_pass_leads_to(tmp_path):
    assert crit.load_criteria("ms03").next == "Milestone 4: Load Pattern Testing"
    bare = tmp_path / "bare.yaml"
    bare.write_text("criteria:\n  - {id: a, label: A, metric: m, op: '<', target: 1}\n")
    assert crit.load_criteria(bare).next == ""


def test_evaluate_rows_and_csv(tmp_path):
    c = crit.load_criteria("ms03")
    rows = crit.evaluate(c, {"success_rate": 0.92, "avg_s": 30})
    first = rows[0]
    assert set(first) == set(crit.ROW_COLUMNS)
    assert (first["id"], first["value"], first["status"], first["unit"]) == (
        "success_rate",
        0.92,
        "ACCEPTABLE",
        "%",
    )
    assert rows[2]["status"] == "FAIL" and rows[2]["note"] == "no data"  # p95_s missing
    path = crit.to_csv(rows, tmp_path / "criteria.csv")
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["status"] for r in back] == [r["status"] for r in rows]
    assert back[2]["value"] == "" and back[0]["value"] == "0.92"


def test_formatting_for_the_report():
    assert crit.format_value(0.96, "%") == "96.0%"
    assert crit.format_value(34.2, "cpu%") == "34.2%"
    assert crit.format_value(52.25, "s") == "52.25 s"
    assert crit.format_value(None, "s") == "n/a"
    assert crit.format_value(0, "count") == "0"
    assert crit.format_threshold(">", 0.95, "%") == "> 95%"
    assert crit.format_threshold("<", 90, "s") == "< 90 s"
    assert crit.format_threshold("==", 0, "count") == "== 0"


# ----------------------------------------------------------------------------- bad files

GOOD_ROW = (
    "  - {id: p95, label: P95, metric: p95_s, op: '<', target: 90, acceptable: 120, unit: s}\n"
)


def _write(tmp_path, body: str):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    "body,key",
    [
        ("criteria:\n  - {id: a, label: A, metric: m, op: '<>', target: 1}\n", "(a).op"),
        ("criteria:\n  - {id: a, label: A, metric: m, op: '<'}\n", "(a).target"),
        ("criteria:\n  - {id: a, label: A, op: '<', target: 1}\n", "(a).metric"),
        ("criteria:\n  - {id: a, label: A, metric: m, op: '<', target: '1'}\n", "(a).target"),
        ("criteria:\n  - {id: a, label: A, metric: m, op: '<', target: yes}\n", "(a).target"),
        ("criteria:\n  - {id: a, label: A, metric: m, op: '<', target: .nan}\n", "(a).target"),
        (
            "criteria:\n  - {id: a, label: A, metric: m, op: '<', target: 1, acceptable: x}\n",
            "(a).acceptable",
        ),
        (
            "criteria:\n  - {id: a, label: A, metric: m, op: '<', target: 90, acceptable: 60}\n",
            "(a).acceptable",
        ),
        (
            "criteria:\n  - {id: a, label: A, metric: m, op: '>', target: 0.9, acceptable: 0.95}\n",
            "(a).acceptable",
        ),
        (
            "criteria:\n  - {id: a, label: A, metric: m, op: '==', target: 0, acceptable: 1}\n",
            "(a).acceptable",
        ),
        (
            "criteria:\n  - {id: a, label: A, metric: m, op: '<', target: 1, acceptible: 2}\n",
            "(a).acceptible",
        ),
        (
            "criteria:\n  - {id: a, label: A, metric: m, op: '<', target: 1, optional: 1}\n",
            "(a).optional",
        ),
        ("criteria:\n  - {id: '', label: A, metric: m, op: '<', target: 1}\n", "().id"),
        ("criteria:\n" + GOOD_ROW + GOOD_ROW, "criteria[1] (p95).id"),
        ("criteria:\n" + GOOD_ROW + "  - just a string\n", "criteria[1]"),
        ("criteria: []\n", "criteria"),
        ("name: x\n", "criteria"),
        ("criteria: [unclosed\n", "bad.yaml"),
    ],
)
def test_bad_criteria_files_name_the_file_row_and_key(tmp_path, body, key):
    path = _write(tmp_path, body)
    with pytest.raises(WorkbenchError) as err:
        crit.load_criteria(path)
    assert str(path) in err.value.field and key in err.value.field
    assert "Fix:" in str(err.value)


def test_row_index_is_named(tmp_path):
    path = _write(tmp_path, "criteria:\n" + GOOD_ROW + "  - {id: b, label: B, metric: m}\n")
    with pytest.raises(WorkbenchError, match=r"criteria\[1\] \(b\)\.op"):
        crit.load_criteria(path)


def test_unknown_criteria_name_lists_the_known_ones():
    with pytest.raises(WorkbenchError, match="ms03"):
        crit.load_criteria("no-such-criteria")


def test_one_threshold_rows_default_acceptable_to_target(tmp_path):
    c = crit.load_criteria(
        _write(tmp_path, "criteria:\n  - {id: a, label: A, metric: m, op: '>=', target: 3}\n")
    )
    assert c.rows[0].acceptable == 3 and c.name == "bad" and len(c) == 1


def test_relative_paths_resolve_from_the_project_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # as from notebooks/: config.json stores root-relative paths
    assert crit.load_criteria("params/criteria/ms03.yaml").name == "ms03"
