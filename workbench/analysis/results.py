"""Loading a results dir into DataFrames: flows, steps, run marks, samples, requests, config."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench import request_log
from workbench.errors import WorkbenchError
from workbench.events import read_events

FLOW_COLUMNS = (
    "run_id",
    "flow_id",
    "user",
    "address",
    "t",
    "duration_s",
    "ok",
    "status",
    "error",
    "error_class",
    "failed_step",
    "data_size",
    "bytes",
    "wall",
)
STEP_COLUMNS = (
    "run_id",
    "flow_id",
    "user",
    "step",
    "t",
    "duration_s",
    "ok",
    "error",
    "error_class",
    "attempts",
    "wall",
)
SAMPLE_COLUMNS = ("t", "wall", "component", "pid", "metric", "value")
COMPONENT_ORDER = ("driver", "system", "anvil", "storage", "api", "personal", "stack")


@dataclass
class Results:
    """A results dir read into DataFrames. `complete`: see `_completed`."""

    path: Path
    flows: pd.DataFrame
    steps: pd.DataFrame
    runs: pd.DataFrame
    samples: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    requests: pd.DataFrame = field(default_factory=lambda: _empty_requests())

    @property
    def run_start(self) -> dict[str, Any]:
        return _first_mark(self.runs, "start")

    @property
    def run_end(self) -> dict[str, Any]:
        return _first_mark(self.runs, "end")


def _first_mark(runs: pd.DataFrame, event: str) -> dict[str, Any]:
    if runs.empty or "event" not in runs:
        return {}
    rows = runs[runs["event"] == event]
    return {} if rows.empty else {str(k): v for k, v in rows.iloc[0].items() if _present(v)}


def _present(v: Any) -> bool:
    return not (v is None or (isinstance(v, float) and math.isnan(v)))


# ----------------------------------------------------------------------------- loading


def load_results(results_dir: str | Path) -> Results:
    """Reads events.jsonl (torn lines skipped), samples.csv and config.json of a results dir."""
    path = Path(results_dir)
    events_path = path / "events.jsonl"
    if not events_path.is_file():
        raise WorkbenchError(
            "results_dir", f"{path} has no events.jsonl", "point at a run's outputs/<run-id>/ dir"
        )
    events = read_events(events_path)
    runs = pd.DataFrame([e for e in events if e.get("kind") == "run"])
    return Results(
        path=path,
        flows=flows_frame(events),
        steps=steps_frame(events),
        runs=runs,
        samples=load_samples(path / "samples.csv"),
        config=_load_config(path / "config.json"),
        complete=_completed(runs),
        requests=load_requests(path / request_log.FILE),
    )


def _completed(runs: pd.DataFrame) -> bool:
    """True iff a run-end event exists and says the shape ran to its end.

    No end event: the driver was killed. An end with reason `interrupted` or `error: ...` did not
    run the whole shape either; both are INCOMPLETE (the reason is kept in `end_reason`).
    """
    end = _first_mark(runs, "end")
    return bool(end) and end.get("reason", "completed") == "completed"


def _frame(events: list[dict], kind: str, columns: tuple[str, ...]) -> pd.DataFrame:
    df = pd.DataFrame([e for e in events if e.get("kind") == kind])
    df = df.reindex(columns=[*columns, *(c for c in df.columns if c not in columns)])
    for col in ("t", "duration_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["ok"] = df["ok"].fillna(False).astype(bool)
    df["t_end"] = df["t"] + df["duration_s"]
    return df.sort_values("t", kind="stable").reset_index(drop=True)


def flows_frame(events: list[dict]) -> pd.DataFrame:
    """Flow outcome events as a DataFrame (schema columns always present, plus `t_end`)."""
    df = _frame(events, "flow", FLOW_COLUMNS)
    derived = pd.Series(np.where(df["ok"], "ok", "failed"), index=df.index, dtype=object)
    df["status"] = df["status"].astype(object).where(df["status"].notna(), derived)
    return df


def steps_frame(events: list[dict]) -> pd.DataFrame:
    return _frame(events, "step", STEP_COLUMNS)


def load_samples(path: str | Path) -> pd.DataFrame:
    """samples.csv, long format; a torn last line (killed run) is dropped, not fatal."""
    path = Path(path)
    try:
        df = pd.read_csv(path, on_bad_lines="skip")
    except (FileNotFoundError, pd.errors.EmptyDataError):  # not sampled, or killed before a row
        df = pd.DataFrame(columns=list(SAMPLE_COLUMNS))
    df = df.reindex(columns=[*SAMPLE_COLUMNS, *(c for c in df.columns if c not in SAMPLE_COLUMNS)])
    for col in ("t", "value"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.dropna(subset=["t", "value", "component", "metric"]).reset_index(drop=True)


def load_requests(path: str | Path) -> pd.DataFrame:
    """requests.csv (see `workbench.request_log`); a torn last line is dropped, no file (a run
    from before it existed) gives no rows. `ok` and `rate_limited` are added."""
    try:
        df = pd.read_csv(path, on_bad_lines="skip", dtype={"type": str, "name": str, "error": str})
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return _empty_requests()
    df = df.reindex(columns=list(request_log.COLUMNS))
    for col in ("t", "ms", "status", "retry", "bytes", "wait_ms"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df = df.dropna(subset=["t", "ms"]).reset_index(drop=True)
    counts = ["status", "retry", "bytes", "wait_ms"]  # empty wait_ms: the throttle never held it
    df[counts] = df[counts].fillna(0)
    df["error"] = df["error"].fillna("").astype(str)
    df["ok"] = df["error"] == ""
    df["rate_limited"] = (df["status"] == 429) | (
        df["error"] == f"RPC {request_log.RATE_LIMIT_CODE}"
    )
    return df


def _empty_requests() -> pd.DataFrame:
    df = pd.DataFrame(columns=[*request_log.COLUMNS, "ok", "rate_limited"])
    return df.astype({"t": float, "ms": float, "ok": bool, "rate_limited": bool})


def _load_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise WorkbenchError(str(path), f"is not valid JSON ({e})", "restore or delete it") from e
