"""The runner's own bookkeeping, with the stack, wallets and flows replaced by fakes (fast)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import papermill
import pytest

from workbench.__main__ import parser
from workbench.analysis import console, results
from workbench.cli.notebook import notebook_command
from workbench.driver import runner
from workbench.driver.config import RunConfig
from workbench.driver.flow import Wallet
from workbench.events import read_events
from workbench.vana.ipfs import IpfsProvider


class FakeWallets:
    path = Path("/nonexistent/wallets.json")
    mnemonic = "not a real mnemonic"

    def __init__(self, n: int):
        self.wallets = [Wallet(i, f"0x{i:040x}", "0x" + f"{i + 1:064x}") for i in range(n)]
        self.addresses = [w.address for w in self.wallets]

    def private_keys(self) -> list[str]:
        return [w.private_key for w in self.wallets]


async def test_an_interrupted_run_cancels_its_flows_before_closing_their_clients(
    tmp_path, monkeypatch
) -> None:
    """Ctrl-C during a staggered ramp: in-flight flows must be cancelled (and recorded as such)
    while the flow context and the stack are still open, not fail against closed clients."""
    closed: list[str] = []
    seen_at_cancel: list[list[str]] = []
    started = asyncio.Event()

    @contextlib.asynccontextmanager
    async def fake_flow_context(*args, **kwargs):
        async def cpu(fn, *a, **k):
            return b"data"

        try:
            yield SimpleNamespace(cpu=cpu)
        finally:
            closed.append("flow_context")

    async def fake_run_flow(ctx, wallet, data, **kwargs):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen_at_cancel.append(list(closed))
            raise

    async def fake_wallets(self, target):
        return FakeWallets(self.cfg.users)

    monkeypatch.setattr(runner, "flow_context", fake_flow_context)
    monkeypatch.setattr(runner, "run_flow", fake_run_flow)
    monkeypatch.setattr(runner.Runner, "_wallets", fake_wallets)
    monkeypatch.setattr(runner.Runner, "_write_config", lambda self, target, ws: None)
    monkeypatch.setattr(runner.Runner, "_sampler", lambda self, target: contextlib.nullcontext())
    target = SimpleNamespace(
        kind="local", endpoints=None, pids={}, ipfs=IpfsProvider.kubo("http://127.0.0.1:1")
    )
    config = RunConfig(
        users=2, profile="fast", shape="staggered", ramp_s=100, output_dir=str(tmp_path)
    )
    run = runner.Runner(config, target, progress=False, out=io.StringIO())  # type: ignore[arg-type]
    task = asyncio.create_task(run.execute())
    await asyncio.wait_for(started.wait(), 5)  # user 0 is in flight, user 1 is 50 s away
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert seen_at_cancel == [[]], "the flow was cancelled only after its clients closed"
    marks = [e for e in read_events(run.dir / "events.jsonl") if e["kind"] == "run"]
    assert marks[-1]["event"] == "end" and marks[-1]["reason"] == "interrupted"


def test_notebook_command_keeps_an_output_dir_given_with_p(tmp_path, monkeypatch) -> None:
    """`python -m workbench notebook -p output_dir X` runs into X: the `--output-dir` flag's
    default must not silently override it."""
    calls: list[dict] = []
    monkeypatch.setattr(
        papermill, "execute_notebook", lambda src, dst, **kw: calls.append({"dst": dst, **kw})
    )
    out = tmp_path / "runs"
    args = parser().parse_args(
        ["notebook", "notebooks/run.ipynb", "-p", "output_dir", str(out), "-p", "profile", "fast"]
    )
    assert notebook_command(args) == 0
    assert calls[0]["parameters"]["output_dir"] == str(out)
    assert Path(calls[0]["dst"]).parent.parent == out


async def test_a_driver_bug_in_a_user_task_ends_the_run_as_an_error(tmp_path, monkeypatch):
    """run_flow records every flow failure as an outcome; an exception escaping a user task is
    a driver bug and must end the run as an error, not as "completed" with flows missing."""

    @contextlib.asynccontextmanager
    async def fake_flow_context(*args, **kwargs):
        async def cpu(fn, *a, **k):
            return b"data"

        yield SimpleNamespace(cpu=cpu)

    async def buggy_run_flow(ctx, wallet, data, **kwargs):
        raise KeyError("a bug, not a flow failure")

    async def fake_wallets(self, target):
        return FakeWallets(self.cfg.users)

    monkeypatch.setattr(runner, "flow_context", fake_flow_context)
    monkeypatch.setattr(runner, "run_flow", buggy_run_flow)
    monkeypatch.setattr(runner.Runner, "_wallets", fake_wallets)
    monkeypatch.setattr(runner.Runner, "_write_config", lambda self, target, ws: None)
    monkeypatch.setattr(runner.Runner, "_sampler", lambda self, target: contextlib.nullcontext())
    target = SimpleNamespace(
        kind="local", endpoints=None, pids={}, ipfs=IpfsProvider.kubo("http://127.0.0.1:1")
    )
    config = RunConfig(users=2, profile="fast", shape="burst", output_dir=str(tmp_path))
    run = runner.Runner(config, target, progress=False, out=io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        await run.execute()
    end = [e for e in read_events(run.dir / "events.jsonl") if e["kind"] == "run"][-1]
    assert end["reason"] == "error: KeyError"


def test_live_per_user_lines_are_the_ones_the_report_replays() -> None:
    """One text for each flow outcome: the runner prints `analysis.console.user_line` of the flow
    event, and the report replays it from the same event read back as a row."""
    events = [
        {"kind": "flow", "user": 2, "ok": True, "status": "ok", "duration_s": 43.81, "t": 0},
        {"kind": "flow", "user": 6, "ok": False, "status": "failed", "failed_step": "relay",
         "error_class": "nonce", "duration_s": 12.34, "t": 1},
        {"kind": "flow", "user": 9, "ok": False, "status": "cancelled", "failed_step": "confirm",
         "error_class": "cancelled", "duration_s": 3.0, "t": 2},
    ]  # fmt: skip
    out = io.StringIO()
    live = runner.Console(out, users=3, progress=False)
    for event in events:
        live.flow_done(event)
    assert out.getvalue().splitlines() == [
        "  [User 03] ✅ Flow completed in 43.8s",
        "  [User 07] ❌ Flow failed at relay (nonce) after 12.3s",
        "  [User 10] ⏹️ Flow cancelled at confirm (cancelled) after 3.0s",
    ]
    rows = results.flows_frame(events).sort_values("t")
    assert [console.user_line(row) for _, row in rows.iterrows()] == out.getvalue().splitlines()
