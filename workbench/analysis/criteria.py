"""Pass/fail criteria as data (k6 thresholds style), evaluated against a run's summary.

A criteria file (`params/criteria/*.yaml`) holds rows like

    - {id: p95, label: "P95 duration", metric: p95_s, op: "<", target: 90, acceptable: 120, unit: s}

`metric` is a key of `summary.json` (a dotted path reaches into nested dicts, e.g.
`resources.api.peak_rss_mb`). Each row gets a status:

- `TARGET`      the value meets the target threshold;
- `ACCEPTABLE`  it misses the target but meets the acceptable threshold;
- `FAIL`        it meets neither, or there is no value (no data proves nothing, so it cannot pass);
- `N/A`         no value, and the row says `optional: true` (e.g. server metrics of a remote target).

Comparisons are exact: with `op: "<"` a value equal to the threshold is not met.
The verdict is `PASSED` iff no row is `FAIL` and the run completed; otherwise `FAILED`.

An optional `driver_saturation:` mapping holds the thresholds of the driver's self-check
(`workbench.analysis.saturation.Thresholds`); a saturated driver adds a `WARN` row, which does not
change the verdict.
"""

from __future__ import annotations

import csv
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import params
from workbench.analysis.saturation import Thresholds
from workbench.errors import WorkbenchError

DEFAULT_CRITERIA = "ms03"

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
ROW_COLUMNS = (
    "id",
    "label",
    "metric",
    "op",
    "value",
    "target",
    "acceptable",
    "status",
    "unit",
    "note",
    "source",
)
_REQUIRED = ("id", "label", "metric", "op", "target")
_OPTIONAL = {"acceptable", "unit", "optional", "source"}


@dataclass(frozen=True)
class Criterion:
    id: str
    label: str
    metric: str
    op: str
    target: float
    acceptable: float
    unit: str = ""
    optional: bool = False
    source: str = ""


@dataclass(frozen=True)
class Criteria:
    name: str
    path: Path
    rows: tuple[Criterion, ...]
    title: str = ""
    next: str = ""  # what a PASSED run leads to (the seed's "Ready to proceed to ...")
    saturation: Thresholds = Thresholds()  # the driver's self-check (`driver_saturation:`)

    def __iter__(self) -> Iterator[Criterion]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def load_criteria(name_or_path: str | Path = DEFAULT_CRITERIA) -> Criteria:
    """Loads and validates a criteria file by name (`ms03`) or path; errors name file, row, key."""
    path, shown, doc = params.load(name_or_path, "criteria")
    if not isinstance(doc.get("criteria"), list) or not doc["criteria"]:
        raise WorkbenchError(
            f"{shown}: criteria", "missing or empty", "give a list of rows under `criteria:`"
        )
    rows = tuple(_criterion(shown, i, raw) for i, raw in enumerate(doc["criteria"]))
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if row.id in seen:
            raise WorkbenchError(_field(shown, i, row.id, "id"), "is used twice", "make ids unique")
        seen.add(row.id)
    name = str(doc.get("name") or path.stem)
    title, next_ = str(doc.get("title") or name), str(doc.get("next") or "")
    saturation = Thresholds.from_mapping(doc.get("driver_saturation"), shown)
    return Criteria(name=name, path=path, rows=rows, title=title, next=next_, saturation=saturation)


def _field(shown: str, i: int, row_id: Any, key: str) -> str:
    return f"{shown}: criteria[{i}] ({row_id}).{key}"


def _criterion(shown: str, i: int, raw: Any) -> Criterion:
    if not isinstance(raw, dict):
        raise WorkbenchError(
            f"{shown}: criteria[{i}]", "is not a mapping", "write `key: value` rows"
        )
    row_id = raw.get("id", "?")

    def bad(key: str, problem: str, fix: str) -> WorkbenchError:
        return WorkbenchError(_field(shown, i, row_id, key), problem, fix)

    for key in raw:
        if key not in _REQUIRED and key not in _OPTIONAL:
            raise bad(key, "is not a known key", f"use only {sorted({*_REQUIRED, *_OPTIONAL})}")
    for key in _REQUIRED:
        if key not in raw:
            raise bad(key, "is missing", "add it")
    for key in ("id", "label", "metric"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise bad(key, f"must be a non-empty string, not {raw[key]!r}", "quote a name")
    if raw["op"] not in OPS:
        raise bad("op", f"{raw['op']!r} is not an operator", f"use one of {list(OPS)}")
    target = _number(raw["target"], lambda p: bad("target", p, "give a number"))
    acceptable = _number(
        raw.get("acceptable", target), lambda p: bad("acceptable", p, "give a number")
    )
    if not _no_stricter(raw["op"], acceptable, target):
        raise bad(
            "acceptable",
            f"{acceptable} is stricter than target {target} for op {raw['op']!r}",
            "the acceptable threshold must be the looser one (equal when there is one threshold)",
        )
    for key in ("unit", "source"):
        if not isinstance(raw.get(key, ""), str):
            raise bad(key, f"must be a string, not {raw[key]!r}", "quote it")
    if not isinstance(raw.get("optional", False), bool):
        raise bad("optional", f"must be true or false, not {raw['optional']!r}", "use a boolean")
    return Criterion(
        id=raw["id"],
        label=raw["label"],
        metric=raw["metric"],
        op=raw["op"],
        target=target,
        acceptable=acceptable,
        unit=raw.get("unit", ""),
        optional=raw.get("optional", False),
        source=raw.get("source", ""),
    )


def _number(value: Any, error) -> float:
    # bool is an int subclass; `target: yes` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error(f"must be a finite number, not {value!r}")
    return value


def _no_stricter(op: str, acceptable: float, target: float) -> bool:
    if op in ("<", "<="):
        return acceptable >= target
    if op in (">", ">="):
        return acceptable <= target
    return acceptable == target


def metric_value(summary: Mapping[str, Any], metric: str) -> Any:
    """Looks a metric up in the summary; dots walk into nested dicts. Missing -> None."""
    value: Any = summary
    for part in metric.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def status_of(value: Any, criterion: Criterion) -> tuple[str, str]:
    """(status, note) of one value against one criterion."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        note = "no data" if value is None else f"not a finite number: {value!r}"
        return ("N/A" if criterion.optional else "FAIL"), note
    compare = OPS[criterion.op]
    if compare(value, criterion.target):
        return "TARGET", ""
    if compare(value, criterion.acceptable):
        return "ACCEPTABLE", ""
    return "FAIL", ""


def evaluate(criteria: Criteria, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per criterion: `{id, label, metric, op, value, target, acceptable, status, unit,
    note, source}`."""
    rows = []
    for c in criteria:
        value = metric_value(summary, c.metric)
        status, note = status_of(value, c)
        rows.append(
            {
                "id": c.id,
                "label": c.label,
                "metric": c.metric,
                "op": c.op,
                "value": value,
                "target": c.target,
                "acceptable": c.acceptable,
                "status": status,
                "unit": c.unit,
                "note": note,
                "source": c.source,
            }
        )
    return rows


def verdict(rows: Sequence[Mapping[str, Any]], complete: bool = True) -> str:
    """PASSED iff no row FAILs and the run completed (a killed run proves nothing)."""
    ok = complete and all(row["status"] != "FAIL" for row in rows)
    return "PASSED" if ok else "FAILED"


def to_csv(rows: list[Mapping[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(
            {k: ("" if row.get(k) is None else row.get(k)) for k in ROW_COLUMNS} for row in rows
        )
    return path


def format_value(value: Any, unit: str = "") -> str:
    """Display form: unit `%` holds a fraction (0.95 -> `95.0%`); `cpu%` is already a percent;
    `flag` is a yes/no finding (the driver's saturation)."""
    if unit == "flag":
        return "n/a" if value is None else ("saturated" if value else "not saturated")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a" if value is None else str(value)
    if not math.isfinite(value):
        return "n/a"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "cpu%":
        return f"{value:.1f}%"
    if unit == "s":
        return f"{value:.2f} s"
    if unit in ("MB", "MB/min"):
        return f"{value:.1f} {unit}"
    return f"{value:g}" if unit in ("", "count") else f"{value:g} {unit}"


def format_threshold(op: str, threshold: float, unit: str = "") -> str:
    """Compact threshold text as in the seed's table: `< 90 s`, `> 95%`, `== 0`."""
    if unit == "flag":
        return format_value(bool(threshold), unit)
    if unit == "%":
        text = f"{threshold * 100:g}%"
    elif unit == "cpu%":
        text = f"{threshold:g}%"
    elif unit in ("", "count"):
        text = f"{threshold:g}"
    else:
        text = f"{threshold:g} {unit}"
    return f"{op} {text}"
