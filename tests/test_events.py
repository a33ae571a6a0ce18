"""workbench.events: one constructor per event kind, results byte-compatible with what analysis
reads, and a real run whose every event matches the TypedDict schema."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any, get_args

import pytest

from workbench import events
from workbench.driver.config import RunConfig
from workbench.driver.runner import run
from workbench.steps import ERROR_CLASSES, STEPS

SCHEMAS: dict[str, Any] = {
    "step": events.StepEvent,
    "flow": events.FlowEvent,
    "run": events.RunMark,
    "fault": events.FaultEvent,
}
KEY: events.FlowKey = {"run_id": "r1", "flow_id": 7, "user": 2, "address": "0x" + "ab" * 20}


def schema_problems(event: dict[str, Any]) -> list[str]:
    """What in `event` its TypedDict does not allow: missing or unknown keys, bad enum values."""
    schema = SCHEMAS.get(event.get("kind"))
    if schema is None:
        return [f"unknown kind {event.get('kind')!r}"]
    keys = set(event)
    problems = [f"missing {k}" for k in sorted(schema.__required_keys__ - keys)]
    problems += [
        f"undeclared {k}"
        for k in sorted(keys - schema.__required_keys__ - schema.__optional_keys__)
    ]
    enums = {
        "status": get_args(events.FlowStatus),
        "action": get_args(events.FaultActionName),
        "error_class": (*ERROR_CLASSES, None),
        "step": STEPS,
    }
    if event["kind"] == "run":
        enums = {"event": get_args(events.RunMarkName)}
    problems += [
        f"{k}={event[k]!r}"
        for k, allowed in enums.items()
        if k in event and event[k] not in allowed
    ]
    return problems


def test_step_event_keys_keep_their_order_and_facts_come_last():
    event = events.step_event(
        KEY, "relay", 1.23456789, 0.5000004, error=None, error_class=None, attempts=2,
        facts={"tx_hash": "0x01", "stored": [{"cid": "bafy", "bytes": 3}]},
    )  # fmt: skip
    assert list(event) == [
        "kind", "run_id", "flow_id", "user", "address", "step", "t", "duration_s", "ok",
        "error", "error_class", "attempts", "wall", "tx_hash", "stored",
    ]  # fmt: skip
    assert (event["t"], event["duration_s"], event["ok"]) == (1.234568, 0.5, True)
    assert not schema_problems(dict(event))
    failed = events.step_event(
        KEY, "relay", 0, 1, error="HTTP 500", error_class="relay", attempts=1
    )
    assert failed["ok"] is False and "tx_hash" not in failed


def test_flow_event_derives_ok_and_reads_the_ids_known():
    event = events.flow_event(
        KEY, 3.0, 12.3456789, status="failed", error="boom", error_class="rpc",
        failed_step="confirm", data_size="small", nbytes=10, ids={"tx_hash": "0x02"},
        result=None, steps={"derive_key": 0.01234567}, facts={"stage": 1, "stage_users": 10},
    )  # fmt: skip
    assert list(event) == [
        "kind", "run_id", "flow_id", "user", "address", "t", "duration_s", "ok", "status",
        "error", "error_class", "failed_step", "data_size", "bytes", "tx_hash", "permission_id",
        "operation_id", "result", "steps", "wall", "stage", "stage_users",
    ]  # fmt: skip
    assert event["ok"] is False and event["permission_id"] is None
    assert event["steps"] == {"derive_key": 0.012346} and event["duration_s"] == 12.345679
    assert not schema_problems(dict(event))


def test_run_marks_and_fault_events():
    mark = events.run_mark("end", 9.1234567, "r1", reason="completed", flows=3, ok=3)
    assert list(mark) == ["kind", "event", "t", "wall", "run_id", "reason", "flows", "ok"]
    assert mark["t"] == 9.123457 and not schema_problems(dict(mark))
    fault = events.fault_event("kill", "api", 2.0, 0.0123456789, pid=42)
    assert list(fault) == ["kind", "t", "wall", "action", "component", "duration_s", "pid"]
    assert fault["duration_s"] == 0.012346 and not schema_problems(dict(fault))


def test_the_schema_check_catches_what_the_schema_forbids():
    mark = dict(events.run_mark("start", 0, "r1", users=1, shape="burst"))
    assert schema_problems({**mark, "event": "paused"}) == ["event='paused'"]
    assert schema_problems({**mark, "colour": "red"}) == ["undeclared colour"]
    del mark["wall"]
    assert schema_problems(mark) == ["missing wall"]
    assert schema_problems({"kind": "note"}) == ["unknown kind 'note'"]


def test_constructed_events_round_trip_through_the_writer(tmp_path: Path):
    written = [
        events.run_mark("start", 0, "r1", users=1, shape="burst"),
        events.step_event(KEY, "encrypt", 0.1, 0.2, error=None, error_class=None, attempts=1),
        events.fault_event("rpc_on", "rpc_proxy", 0.3, 0, rates={"error_rate": 0.1}),
    ]
    with events.EventWriter(tmp_path / "events.jsonl") as writer:
        for event in written:
            writer.write(event)
    assert events.read_events(tmp_path / "events.jsonl") == [dict(e) for e in written]


@pytest.mark.e2e
def test_every_event_of_a_real_run_matches_the_schema(tmp_path: Path):
    plan = tmp_path / "quiet-rpc.yaml"
    plan.write_text("name: quiet-rpc\nrpc: {error_rate: 0.0}\n", encoding="utf-8")
    config = RunConfig.from_params(
        users=3, profile="fast", shape="burst", data_size="small", faults=str(plan),
        criteria="params/criteria/ms03.yaml", output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    outcome = asyncio.run(run(config, progress=False, report=False, out=io.StringIO()))
    assert outcome.reason == "completed"
    lines = (outcome.results_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    written = [json.loads(line) for line in lines]
    assert {e["kind"] for e in written} == set(SCHEMAS)
    assert {e["action"] for e in written if e["kind"] == "fault"} == {"rpc_on", "rpc_off"}
    assert sum(e["kind"] == "step" for e in written) == 3 * len(STEPS)
    for event in written:
        assert not schema_problems(event), (event, schema_problems(event))
