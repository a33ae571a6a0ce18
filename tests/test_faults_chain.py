"""Fault plans: loading and validation, and small fast-profile runs under each fault kind of the
chain side (RPC faults, component restarts, chain stalls): the run finishes, every flow has one
outcome, failures carry the class of the injected fault, and the faults are on record."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from workbench.analysis.results import load_results
from workbench.analysis.summary import summarize, write_summary
from workbench.driver.config import RunConfig
from workbench.driver.runner import Runner, run
from workbench.errors import WorkbenchError
from workbench.events import read_events
from workbench.params import load_profile, names
from workbench.stack.faults import load_faults

PLANS = ("chaos", "rpc", "storage", "inference", "restarts", "chain_stall")


# --- plans as data ------------------------------------------------------------------------------


def write_plan(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", PLANS)
def test_every_shipped_plan_loads_and_describes_itself(name):
    plan = load_faults(name)
    described = plan.describe()
    assert described["name"] == name and described["file"] == f"params/faults/{name}.yaml"
    assert set(described) - {"name", "description", "file"}, "a plan injects something"
    json.dumps(described)  # goes into config.json as is


def test_none_means_no_plan():
    assert load_faults("none") is None and load_faults(None) is None


def test_sections_are_completed_with_defaults_and_the_timeline_is_ordered(tmp_path):
    plan = load_faults(
        write_plan(
            tmp_path,
            "rpc: {error_rate: 0.1}\n"
            "restarts: [{component: personal, at_s: 5, down_s: 1}, "
            "{component: api, at_s: 1, down_s: 2}]\n"
            "chain_stall: [{at_s: 2, duration_s: 4}]\n",
        )
    )
    assert plan.describe()["rpc"] == {
        "error_rate": 0.1,
        "statuses": [429, 503],
        "timeout_rate": 0.0,
        "timeout_s": 5.0,
        "drop_rate": 0.0,
    }
    assert [(a.at_s, a.action, a.component) for a in plan.timeline()] == [
        (1, "kill", "api"),
        (2, "stall", "anvil"),
        (3, "restart", "api"),
        (5, "kill", "personal"),
        (6, "restart", "personal"),  # ties keep the file's order: restarts first
        (6, "resume", "anvil"),
    ]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("rpcs: {}\n", "rpcs", "unknown key"),
        ("rpc: {error_rate: 0.1, eror: 1}\n", "rpc.eror", "unknown key"),
        ("rpc: {error_rate: 1.5}\n", "rpc.error_rate", "rate from 0 to 1"),
        ("rpc: {error_rate: -0.1}\n", "rpc.error_rate", "at least 0"),
        ("rpc: {error_rate: 0.6, drop_rate: 0.6}\n", "rpc", "exceeds 1"),
        ("rpc: {statuses: [200]}\n", "rpc.statuses", "HTTP error statuses"),
        ("rpc: {timeout_s: 0}\n", "rpc.timeout_s", "greater than 0"),
        ("storage: {slow_ms: [3000, 1000]}\n", "storage.slow_ms", "lo <= hi"),
        ("inference: {max_queue: 2.5}\n", "inference.max_queue", "whole number"),
        ("rpc: [1]\n", "rpc", "mapping"),
        ("restarts: {component: api}\n", "restarts", "list"),
        ("restarts: [{component: anvil, at_s: 1, down_s: 1}]\n", "restarts[0].component", "api"),
        ("restarts: [{component: api, at_s: 1}]\n", "restarts[0].down_s", "missing"),
        (
            "restarts: [{component: api, at_s: 1, down_s: 1, when: 2}]\n",
            "restarts[0].when",
            "unknown",
        ),
        (
            "restarts: [{component: api, at_s: 1, down_s: 3}, {component: api, at_s: 2, down_s: 1}]\n",
            "restarts",
            "overlap",
        ),
        (
            "chain_stall: [{at_s: 1, duration_s: 0}]\n",
            "chain_stall[0].duration_s",
            "greater than 0",
        ),
        ("chain_stall: [{at_s: true, duration_s: 1}]\n", "chain_stall[0].at_s", "number"),
        ("name: 5\n", "name", "text"),
        ("- just a list\n", "", "mapping"),
        ("# nothing but a comment\n", "", "empty"),
        ("rpc: {error_rate: [\n", "", "YAML"),
    ],
)
def test_bad_plans_name_the_file_and_the_key(tmp_path, text, key, words):
    path = write_plan(tmp_path, text)
    with pytest.raises(WorkbenchError) as raised:
        load_faults(str(path))
    message = str(raised.value)
    assert str(path) in message and f": {key}" in message and words in message, message
    assert "Fix:" in message


def test_an_unknown_plan_name_lists_the_known_ones():
    with pytest.raises(WorkbenchError, match="chaos"):
        load_faults("nosuch")
    assert set(names("faults")) >= set(PLANS)


def test_faults_need_the_local_stack(tmp_path):
    target = tmp_path / "remote.yaml"
    target.write_text("kind: remote\n")
    config = RunConfig(users=1, profile="fast", target=str(target), faults="rpc")
    with pytest.raises(WorkbenchError, match="faults need the local stack"):
        Runner(config, progress=False)


# --- runs under faults (each starts its own stack; fast profile) --------------------------------


def fault_run(tmp_path: Path, plan: str | Path, users: int, ramp_s: float, **params: Any):
    """Runs a small staggered fast-profile run; returns (events, results dir)."""
    config = RunConfig.from_params(
        users=users,
        shape="staggered",
        ramp_s=ramp_s,
        faults=str(plan),
        output_dir=str(tmp_path / "out"),
        **{"profile": "fast", **params},
    )
    outcome = asyncio.run(run(config, progress=False, report=False, out=io.StringIO()))
    assert outcome.reason == "completed"
    summary = summarize(load_results(outcome.results_dir))
    write_summary(outcome.results_dir, summary)
    events = read_events(outcome.results_dir / "events.jsonl")
    check_counts(events, users)
    on_disk = json.loads((outcome.results_dir / "summary.json").read_text())
    assert on_disk["faults_injected"] == load_faults(str(plan)).describe()
    return events, outcome.results_dir


def check_counts(events: list[dict[str, Any]], users: int) -> None:
    """Flows started = flow outcomes, one each; every step belongs to a flow with an outcome."""
    flows = [e for e in events if e["kind"] == "flow"]
    ids = [f["flow_id"] for f in flows]
    assert len(ids) == len(set(ids)) == users
    assert {e["flow_id"] for e in events if e["kind"] == "step"} <= set(ids)
    end = next(e for e in events if e["kind"] == "run" and e["event"] == "end")
    assert end["flows"] == users and end["ok"] == sum(f["ok"] for f in flows)


def faults_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fault events by the time each action began (they are written when it is done)."""
    return sorted((e for e in events if e["kind"] == "fault"), key=lambda e: e["t"])


def failed_classes(events: list[dict[str, Any]]) -> set[str]:
    return {e["error_class"] for e in events if e["kind"] == "flow" and not e["ok"]}


@pytest.mark.e2e
def test_rpc_faults_are_ridden_out_or_classed_as_rpc(tmp_path):
    plan = write_plan(
        tmp_path,
        "name: rpc-heavy\n"
        "rpc: {error_rate: 0.15, statuses: [429, 503], timeout_rate: 0.02, timeout_s: 1,"
        " drop_rate: 0.05}\n",
    )
    events, run_dir = fault_run(tmp_path, plan, users=10, ramp_s=2)
    on, off = faults_of(events)
    assert (on["action"], off["action"]) == ("rpc_on", "rpc_off")
    counts = off["counts"]
    assert counts["injected_error"] > 0 and counts["injected_drop"] > 0
    assert counts["forwarded"] > 50
    # Retries with backoff absorb most faults; what gets through is blamed on the RPC path.
    assert failed_classes(events) <= {"rpc", "timeout", "relay"}
    assert sum(e["ok"] for e in events if e["kind"] == "flow") >= 8


@pytest.mark.e2e
def test_killed_servers_come_back_on_their_ports_and_later_flows_succeed(tmp_path):
    plan = write_plan(
        tmp_path,
        "name: restart-both\n"
        "restarts: [{component: api, at_s: 0.5, down_s: 0.5},"
        " {component: personal, at_s: 2.5, down_s: 0.5}]\n",
    )
    events, run_dir = fault_run(tmp_path, plan, users=10, ramp_s=8)
    actions = [(f["action"], f["component"]) for f in faults_of(events)]
    assert actions == [
        ("kill", "api"),
        ("restart", "api"),
        ("kill", "personal"),
        ("restart", "personal"),
    ]
    kills = {f["component"]: f["pid"] for f in faults_of(events) if f["action"] == "kill"}
    restarts = [f for f in faults_of(events) if f["action"] == "restart"]
    assert all(f["pid"] not in kills.values() and "error" not in f for f in restarts)
    back = max(f["t"] + f["duration_s"] for f in restarts)
    flows = [e for e in events if e["kind"] == "flow"]
    later = [f for f in flows if f["t"] > back + 0.5]
    seen = [(round(f["t"], 1), f["error_class"], f["error"]) for f in flows]
    assert later and all(f["ok"] for f in later), (back, seen)
    # A flow caught by a restart fails as the component it needed: the one whose port refused
    # or reset its connection (api, personal), or the step's when an answer said so.
    assert failed_classes(events) <= {"api", "personal", "relay", "inference", "http"}, seen


@pytest.mark.e2e
def test_a_chain_stall_with_a_relayer_crash_in_it(tmp_path):
    """No blocks for 6 s, and the API server (the relayer) is SIGKILLed while its txs sit in
    the pool. The restarted relayer takes its nonces from the chain's pending counts (no clash
    with the pooled txs). A stall mines no blocks, so no tx counts as stuck, however long past
    the relayer's clock floor (1.5 s here) it waits: nothing is replaced, all mine on resume."""
    plan = write_plan(
        tmp_path,
        "name: stall-crash\n"
        "chain_stall: [{at_s: 0.5, duration_s: 6}]\n"
        "restarts: [{component: api, at_s: 1.0, down_s: 0.2}]\n",
    )
    profile = load_profile("fast")
    profile["api"] = {"relayer": {"stuck_after_s": 1.5}}
    profile_path = write_plan(tmp_path, yaml.safe_dump(profile), "profile.yaml")
    events, run_dir = fault_run(tmp_path, plan, users=8, ramp_s=3, profile=str(profile_path))
    actions = [f["action"] for f in faults_of(events)]
    assert actions == ["stall", "kill", "restart", "resume"]
    flows = [e for e in events if e["kind"] == "flow"]
    seen = [(round(f["t"], 1), f["error_class"], f["error"]) for f in flows]
    # Only a relay in flight at the kill may fail (its connection reset by the API server: `api`);
    # everything else waits for blocks and lands.
    assert failed_classes(events) <= {"relay", "api"}, seen
    assert sum(f["ok"] for f in flows) >= 6, seen
    assert any(f["ok"] and f["steps"]["confirm"] > 2 for f in flows), "flows waited for blocks"
    assert not [f for f in flows if f.get("relayed_tx_hash")]  # each mined under its own hash
    restarted = next(f["pid"] for f in faults_of(events) if f["action"] == "restart")
    gauges = api_gauges(run_dir, restarted)
    assert gauges["relay_retries"] == 0  # nonces resynced from the pool: no stale-nonce resend
    assert gauges["relay_replaced"] == 0 and gauges["relay_replace_failed"] == 0


def api_gauges(run_dir: Path, pid: int) -> dict[str, float]:
    """The last /metrics gauges the sampler read from the API server process `pid`."""
    out: dict[str, float] = {}
    with open(run_dir / "samples.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["component"] == "api" and row["pid"] == str(pid):
                out[row["metric"]] = float(row["value"])
    return out


@pytest.mark.e2e
def test_a_stall_longer_than_the_flow_timeout_fails_flows_as_timeouts(tmp_path):
    plan = write_plan(tmp_path, "name: long-stall\nchain_stall: [{at_s: 0, duration_s: 30}]\n")
    events, run_dir = fault_run(tmp_path, plan, users=3, ramp_s=0, flow_timeout_s=2.5)
    flows = [e for e in events if e["kind"] == "flow"]
    assert [(f["status"], f["error_class"], f["failed_step"]) for f in flows] == [
        ("failed", "timeout", "confirm")
    ] * 3
    assert all(f["duration_s"] < 2.5 + 1 for f in flows)  # the run's timeout, not a library's
    end = next(e for e in events if e["kind"] == "run" and e["event"] == "end")
    assert end["t"] - next(e["t"] for e in events if e.get("event") == "start") < 2.5 + 2
