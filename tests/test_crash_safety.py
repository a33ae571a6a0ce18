"""Nothing lost: a driver killed with SIGKILL keeps its events, leaves no stack process behind
and its partial results still render (marked INCOMPLETE); wallet files survive a crash mid-write;
test funds can be swept back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from eth_account import Account

from workbench.__main__ import main
from workbench.driver import wallets
from workbench.params import PROJECT_ROOT
from workbench.stack.anvil import dev_key
from workbench.vana.chain import close_web3, make_web3

SWEEP_FUNDER_INDEX = 17  # dev account of the session's local stack reserved for this module
FLOWS_BEFORE_KILL = 3
STACK_GRACE_S = 10.0


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def flow_count(path: Path) -> int:
    return sum('"kind":"flow"' in line for line in lines(path))


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(pids: list[int]) -> bool:
    """Every pid exited (a zombie waiting for a reaper counts as exited)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def start_mid_run(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[int], dict[str, str]]:
    """A driver running 20 staggered users, once a few flows have ended: the process, its
    events file, the pids of its stack and its environment."""
    out_dir = tmp_path / "out"
    env = {**os.environ, "WORKBENCH_WALLET_FILE": str(tmp_path / "wallets.json")}
    cmd = [sys.executable, "-m", "workbench", "run", "--users", "20", "--profile", "fast"]
    cmd += ["--shape", "staggered", "--ramp-s", "6", "--output-dir", str(out_dir), "--no-report"]
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_for(
            lambda: len(list(out_dir.glob("*/events.jsonl"))) == 1, 60, "a results dir", driver
        )
        [events] = list(out_dir.glob("*/events.jsonl"))
        wait_for(lambda: flow_count(events) >= FLOWS_BEFORE_KILL, 60, "flows", driver)
        stack = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
    except BaseException:
        driver.kill()
        raise
    return driver, events, stack, env


@pytest.mark.e2e
def test_kill_9_mid_run_keeps_events_leaves_no_stack_and_reports_incomplete(tmp_path):
    driver, events, stack, env = start_mid_run(tmp_path)
    requests = events.parent / "requests.csv"
    try:  # the request log writes once a second: wait for a flush, then kill
        wait_for(lambda: len(lines(requests)) > 10, 30, "request rows", driver)
        seen, seen_requests = len(lines(events)), len(lines(requests))
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL
    assert len(stack) >= 4, f"expected anvil, storage, personal, api; got {stack}"

    # Every event written before the kill is still there; only the last line may be torn.
    written = lines(events)
    assert len(written) >= seen
    for line in written[:-1]:
        json.loads(line)
    assert not any('"event":"end"' in line for line in written)  # killed: no end mark

    deadline = time.monotonic() + STACK_GRACE_S
    while not gone(stack) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in stack if psutil.pid_exists(pid) and not gone([pid])]
    assert not survivors, f"stack processes outlived the driver by {STACK_GRACE_S} s: {survivors}"

    # The partial results render, marked INCOMPLETE.
    results = events.parent
    rendered = subprocess.run(
        [sys.executable, "-m", "workbench", "report", str(results)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    summary = json.loads((results / "summary.json").read_text())
    assert summary["outcome"] == "INCOMPLETE" and summary["flows_total"] >= FLOWS_BEFORE_KILL
    assert summary["stored_objects"] >= 2 and summary["stored_bytes"] > 0
    assert "INCOMPLETE" in (results / "report.html").read_text(encoding="utf-8")
    # The request rows flushed before the kill are kept, and they are in stats.csv.
    assert len(lines(requests)) >= seen_requests
    assert summary["requests"]["total"] >= seen_requests - 2  # header and a torn last line
    aggregated = lines(results / "stats.csv")[-1].split(",")
    assert aggregated[1] == "Aggregated" and int(aggregated[2]) == summary["requests"]["total"]


def test_a_crash_mid_write_leaves_the_old_wallet_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "wallets.json"
    wallets.generate(2, path)
    before = path.read_bytes()

    def torn_dump(doc, f, **kwargs):  # half a document, then the "crash"
        f.write(json.dumps(doc)[:20])
        raise OSError("No space left on device")

    monkeypatch.setattr(wallets.json, "dump", torn_dump)
    with pytest.raises(OSError, match="No space"):
        wallets.generate(5, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["wallets.json"]  # no temp file left
    assert len(wallets.load(path).wallets) == 2


async def balance_of(rpc_url: str, addresses: list[str]) -> list[int]:
    w3 = make_web3(rpc_url)
    try:
        return await wallets.balances(w3, addresses)
    finally:
        await close_web3(w3)


@pytest.mark.e2e
def test_sweep_returns_test_funds_to_the_funder(local_stack, tmp_path, monkeypatch, capsys):
    rpc = local_stack.endpoints.rpc_url
    funder_key = dev_key(SWEEP_FUNDER_INDEX)
    funder = Account.from_key(funder_key).address
    monkeypatch.setenv(wallets.FUNDER_KEY_ENV, funder_key)
    common = ["--wallet-file", str(tmp_path / "w.json"), "--rpc-url", rpc]
    [start] = asyncio.run(balance_of(rpc, [funder]))

    assert main(["wallets", "--generate", "3", *common[:2]]) == 0
    assert main(["wallets", "--fund", "--amount-eth", "0.05", *common]) == 0
    ws = wallets.load(tmp_path / "w.json")
    assert all(b == 5 * 10**16 for b in asyncio.run(balance_of(rpc, ws.addresses)))

    assert main(["wallets", "--sweep", *common]) == 0
    assert "swept 3 wallets" in capsys.readouterr().out
    assert all(b < 10**14 for b in asyncio.run(balance_of(rpc, ws.addresses)))  # dust at most
    [end] = asyncio.run(balance_of(rpc, [funder]))
    assert 0 <= start - end < 10**15  # the funder lost only gas: 0.15 ETH came back


@pytest.mark.e2e
def test_sigterm_mid_run_records_every_started_flow_and_stops_the_stack(tmp_path):
    """SIGTERM (and Ctrl-C) end a run gracefully: each started flow gets an outcome."""
    driver, events, stack, _ = start_mid_run(tmp_path)
    try:
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(30) == 130
    finally:
        if driver.poll() is None:
            driver.kill()
    parsed = [json.loads(line) for line in lines(events)]
    started = {e["flow_id"] for e in parsed if e["kind"] == "step"}
    outcomes = [e["flow_id"] for e in parsed if e["kind"] == "flow"]
    assert sorted(outcomes) == sorted(set(outcomes)) and started <= set(outcomes)
    assert parsed[-1]["kind"] == "run" and parsed[-1]["reason"] == "interrupted"
    assert gone(stack)
