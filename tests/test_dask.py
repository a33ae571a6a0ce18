"""Scale-out on Dask: the real Runner with `workers=2` (a LocalCluster of two worker processes)
on the embedded `fast` stack. Bounded: a 200-user burst, and a 40-user hold whose worker 1 is
killed with SIGKILL mid-run. Nothing here asserts on elapsed time (see benchmarks/driver.py)."""

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


async def test_a_worker_killed_mid_run_leaves_every_flow_exactly_one_outcome(tmp_path, wallet_file):
    config = RunConfig.from_params(
        users=40,
        profile="fast",
        shape="hold",
        ramp_s=2,
        duration_s=15,
        data_size="small",
        workers=2,
        output_dir=str(tmp_path),
    )
    killer = asyncio.create_task(_kill_worker_after(config.results_dir(), 1, 10))
    outcome = await run(config, progress=False, out=io.StringIO())
    assert killer.done()

    events = read_events(outcome.results_dir / "events.jsonl")
    started = {e["flow_id"] for e in events if e["kind"] == "step"}
    counts = outcomes(events)
    assert started <= set(counts)  # every flow that ran a step has an outcome ...
    assert set(counts.values()) == {1}  # ... and exactly one
    assert [p for e in events for p in schema_problems(e)] == []
    lost = [e for e in events if e["kind"] == "run" and e["event"] == "worker_lost"]
    assert [m["worker"] for m in lost] == [1]
    driver_failures = [
        e for e in events if e["kind"] == "flow" and e.get("error_class") == "driver"
    ]
    assert len(driver_failures) == lost[0]["lost_flows"] >= 1
    assert all(e["worker"] == 1 and e["status"] == "failed" for e in driver_failures)
    after = [e for e in events if e["kind"] == "flow" and e["worker"] == 1]
    assert max(e["t"] for e in after) <= lost[0]["t"]  # nothing of worker 1 after its loss
    end = [e for e in events if e["kind"] == "run" and e["event"] == "end"][0]
    assert end["reason"] == "completed"  # the run went on with worker 0 ...
    late = [e for e in events if e["kind"] == "flow" and e["worker"] == 0 and e["t"] > lost[0]["t"]]
    assert late and all(e["ok"] for e in late)  # ... which kept finishing flows

    summary = json.loads((outcome.results_dir / "summary.json").read_text())
    assert summary["error_classes"].get("driver") == len(driver_failures)
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
