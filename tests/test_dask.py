"""Scale-out on Dask: the real Runner with `workers=2` (a LocalCluster of two worker processes)
on the embedded `fast` stack. Bounded: a 200-user burst, and a 40-user ramp and a 20-user hold
whose worker 1 is killed with SIGKILL mid-run. Nothing here asserts on elapsed time (see
benchmarks/driver.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import re
import signal
from collections import Counter

import psutil
import pytest
from test_events import schema_problems

from workbench.driver import wallets
from workbench.driver.cluster import Coordinator
from workbench.driver.config import RunConfig
from workbench.driver.runner import run
from workbench.events import read_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def wallet_file(tmp_path, monkeypatch):
    path = tmp_path / "wallets.json"
    monkeypatch.setenv("WORKBENCH_WALLET_FILE", str(path))
    return path


def outcomes(events: list[dict]) -> Counter:
    return Counter(e["flow_id"] for e in events if e["kind"] == "flow")


async def test_a_local_cluster_listens_on_loopback_only(tmp_path):
    config = RunConfig(users=2, workers=2, output_dir=str(tmp_path))
    async with Coordinator(config, lambda line: None) as coordinator:
        assert coordinator.dashboard.startswith("http://127.0.0.1:")
        me = psutil.Process()
        listening = [
            c.laddr.ip
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert len(listening) >= 5  # scheduler, dashboard, 2 nannies, 2 workers
        assert set(listening) == {"127.0.0.1"}
        assert len(coordinator.workers) == 2


def spy_on_shard_specs(monkeypatch) -> list:
    """Records what the coordinator hands Dask for each shard (what its dashboard could show)."""
    seen: list = []
    original = Coordinator._submit

    def spy(self, runner, target, ws):
        submit = self.client.submit

        def record(fn, *args, **kwargs):
            seen.append(args)
            return submit(fn, *args, **kwargs)

        self.client.submit = record
        try:
            original(self, runner, target, ws)
        finally:
            del self.client.submit

    monkeypatch.setattr(Coordinator, "_submit", spy)
    return seen


async def test_a_burst_on_two_workers_streams_every_event_into_one_run(
    tmp_path, wallet_file, monkeypatch
):
    specs = spy_on_shard_specs(monkeypatch)
    config = RunConfig.from_params(
        users=200,
        profile="fast",
        shape="burst",
        ramp_s=0,
        data_size="small",
        workers=2,
        output_dir=str(tmp_path),
    )
    out = io.StringIO()
    outcome = await run(config, progress=False, out=out)
    assert "dashboard: http://127.0.0.1:" in out.getvalue()

    events = read_events(outcome.results_dir / "events.jsonl")
    flows = [e for e in events if e["kind"] == "flow"]
    assert len(flows) == 200 and all(f["ok"] for f in flows)
    assert set(outcomes(events).values()) == {1}
    assert sorted(f["flow_id"] for f in flows) == list(range(200))
    by_worker = Counter(f["worker"] for f in flows)
    assert by_worker == {0: 100, 1: 100}
    assert all("worker" in e for e in events if e["kind"] in ("step", "flow"))
    assert [p for e in events for p in schema_problems(e)] == []
    assert all(e["user"] % 2 == e["worker"] for e in flows)  # users sharded u % N
    marks = [e for e in events if e["kind"] == "run" and e["event"] == "worker"]
    assert sorted(m["worker"] for m in marks) == [0, 1]
    assert all(abs(m["clock_offset_s"]) < 1 for m in marks)  # one machine: one clock

    requests = (outcome.results_dir / "requests.csv").read_text().splitlines()
    assert len(requests) > 200 * 10  # the workers' request rows reach the one requests.csv

    summary = json.loads((outcome.results_dir / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["flows_ok"] == 200
    assert {"worker0", "worker1"} <= set(summary["resources"])
    assert summary["driver_saturated"] in (True, False)
    assert set(summary["driver_saturation"]["processes"]) == {"worker0", "worker1"}
    html = (outcome.results_dir / "report.html").read_text(encoding="utf-8")
    assert "wb-workers" in html and "worker1" in html
    config_json = json.loads((outcome.results_dir / "config.json").read_text())
    assert config_json["workers"] == 2 and config_json["dask"]["local"] is True

    # Keys reach the workers through the 0600 wallet file only, never in a task's arguments.
    handed = json.dumps([dataclasses.asdict(args[0]) for args in specs])
    held = wallets.load(wallet_file)
    assert len(specs) == 2 and str(wallet_file) in handed
    assert not any(key[2:] in handed for key in held.private_keys())
    assert held.mnemonic not in handed
    assert not re.search(r"[0-9a-fA-F]{64}", handed)


async def _kill_worker_after(results_dir, worker: int, flows_done: int) -> int:
    """SIGKILLs `worker`'s process once it has reported `flows_done` outcomes; returns its pid."""
    path = results_dir / "events.jsonl"
    while True:
        await asyncio.sleep(0.2)
        if not path.exists():
            continue
        events = read_events(path)
        pids = [
            e["pid"]
            for e in events
            if e["kind"] == "run" and e["event"] == "worker" and e["worker"] == worker
        ]
        done = [e for e in events if e["kind"] == "flow" and e.get("worker") == worker]
        if pids and len(done) >= flows_done:
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]


def lost_worker_checks(events: list[dict]) -> dict:
    """What holds for any run whose worker 1 was killed: every flow that started has exactly
    one outcome, its flows in flight failed (class `driver`), nothing of it came after its loss,
    and the run went on. Returns the `worker_lost` mark."""
    started = {e["flow_id"] for e in events if e["kind"] == "step"}
    counts = outcomes(events)
    assert started <= set(counts)  # every flow that ran a step has an outcome ...
    assert set(counts.values()) == {1}  # ... and exactly one: no flow id twice
    assert [p for e in events for p in schema_problems(e)] == []
    lost = [e for e in events if e["kind"] == "run" and e["event"] == "worker_lost"]
    assert [m["worker"] for m in lost] == [1]
    driver_failures = [
        e for e in events if e["kind"] == "flow" and e.get("error_class") == "driver"
    ]
    assert len(driver_failures) == lost[0]["lost_flows"]
    assert all(e["worker"] == 1 and e["status"] == "failed" for e in driver_failures)
    after = [e for e in events if e["kind"] == "flow" and e["worker"] == 1]
    assert max(e["t"] for e in after) <= lost[0]["t"]  # nothing of worker 1 after its loss
    end = [e for e in events if e["kind"] == "run" and e["event"] == "end"][0]
    assert end["reason"] == "completed"  # the run went on with worker 0
    return lost[0]


async def test_a_worker_killed_mid_ramp_hands_its_unstarted_users_to_the_survivor(
    tmp_path, wallet_file
):
    """Worker 1 dies while users are still arriving: its flows in flight fail (never re-run),
    its users not yet started run on worker 0 at their planned times, and the run has exactly
    the flows the shape planned."""
    config = RunConfig.from_params(
        users=40,
        profile="fast",
        shape="staggered",
        ramp_s=6,
        data_size="small",
        workers=2,
        output_dir=str(tmp_path),
    )
    killer = asyncio.create_task(_kill_worker_after(config.results_dir(), 1, 3))
    out = io.StringIO()
    outcome = await run(config, progress=False, report=False, out=out)
    assert killer.done()

    events = read_events(outcome.results_dir / "events.jsonl")
    lost = lost_worker_checks(events)
    flows = [e for e in events if e["kind"] == "flow"]
    assert len(flows) == 40  # the shape's plan: one flow per user ...
    assert sorted(f["user"] for f in flows) == list(range(40))  # ... none twice, none missing
    moved = [f for f in flows if f["user"] % 2 == 1 and f["worker"] == 0]
    assert len(moved) == lost["moved_arrivals"] >= 1 and lost["moved_to"] == [0]
    assert all(f["ok"] for f in moved)  # the moved arrivals completed on worker 0
    assert all(f["flow_id"] % 2 == 0 for f in moved)  # under worker 0's flow ids
    t0 = [e for e in events if e["kind"] == "run" and e["event"] == "start"][0]["t"]
    assert all(f["t"] >= t0 + f["user"] * 6 / 40 - 0.05 for f in moved)  # not before planned
    assert f"{len(moved)} arrivals moved to workers 0" in out.getvalue()


async def test_a_worker_killed_mid_hold_has_its_users_loop_on_in_the_survivor(
    tmp_path, wallet_file
):
    """Hold: the lost worker's users, whose loops had all started, go on looping on worker 0
    until the hold's end, and the run still ends completed with one outcome per flow."""
    config = RunConfig.from_params(
        users=20,
        profile="fast",
        shape="hold",
        ramp_s=1,
        duration_s=8,
        data_size="small",
        workers=2,
        output_dir=str(tmp_path),
    )
    killer = asyncio.create_task(_kill_worker_after(config.results_dir(), 1, 5))
    outcome = await run(config, progress=False, out=io.StringIO())
    assert killer.done()

    events = read_events(outcome.results_dir / "events.jsonl")
    lost = lost_worker_checks(events)
    assert lost["lost_flows"] >= 1  # every user loops: some were in flight
    flows = [e for e in events if e["kind"] == "flow"]
    on_survivor = [f for f in flows if f["user"] % 2 == 1 and f["worker"] == 0]
    assert len({f["user"] for f in on_survivor}) == lost["moved_arrivals"] >= 1
    assert all(f["t"] >= lost["t"] for f in on_survivor)  # they moved at the loss
    assert all(f["ok"] for f in on_survivor)
    late = [f for f in flows if f["worker"] == 0 and f["t"] > lost["t"]]
    assert late and all(f["ok"] for f in late)

    summary = json.loads((outcome.results_dir / "summary.json").read_text())
    assert summary["error_classes"].get("driver") == lost["lost_flows"]
    assert summary["worker_stats"]["worker1"]["lost"] is True


async def test_a_run_joins_an_existing_cluster_by_its_scheduler_address(tmp_path, wallet_file):
    """`scheduler=tcp://...` uses a cluster started elsewhere (here: by the test, on loopback);
    `workers=0` takes all of its workers."""
    from distributed import LocalCluster

    async with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        asynchronous=True,
    ) as cluster:
        config = RunConfig.from_params(
            users=10,
            profile="fast",
            shape="burst",
            ramp_s=0,
            data_size="small",
            scheduler=cluster.scheduler_address,
            output_dir=str(tmp_path),
        )
        outcome = await run(config, progress=False, report=False, out=io.StringIO())
    events = read_events(outcome.results_dir / "events.jsonl")
    flows = [e for e in events if e["kind"] == "flow"]
    assert len(flows) == 10 and all(f["ok"] for f in flows)
    assert {f["worker"] for f in flows} == {0, 1}
    config_json = json.loads((outcome.results_dir / "config.json").read_text())
    assert config_json["scheduler"] == cluster.scheduler_address
    assert config_json["dask"]["local"] is False
