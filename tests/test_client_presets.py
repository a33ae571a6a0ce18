"""Relay modes (`relay`: app | direct) and client timing presets (`client`: tight | sdk |
upstream): the settings each gives a flow, a flow that sends its own transaction, and a run whose
client's own timeout failed its flows (named in summary.json and the report)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import yaml
from eth_account import Account

from workbench.analysis.summary import analyze
from workbench.driver import clients, wallets
from workbench.driver.config import RunConfig
from workbench.driver.flow import FlowSettings, Wallet, flow_context, run_flow
from workbench.driver.runner import run
from workbench.params import load_profile
from workbench.stack import anvil
from workbench.vana import chain

FAST = load_profile("fast")


# --- presets: what each client's settings are ---------------------------------------------------


def test_tight_keeps_the_profiles_flow_settings():
    s = FlowSettings.from_profile(FAST)
    flow = FAST["flow"]
    assert (s.client, s.relay) == ("tight", "app")
    assert (s.poll_interval_s, s.receipt_poll_s) == (
        flow["poll_interval_s"],
        flow["receipt_poll_s"],
    )
    assert s.attempts("upload_file") == flow["retry_attempts"] and s.operation_timeout_s is None


def test_sdk_preset_is_viem_and_wait_for_operation_defaults_without_retries():
    s = FlowSettings.from_profile(FAST, client="sdk")
    assert (s.receipt_poll_s, s.receipt_timeout_s) == (4.0, 180.0)
    assert (s.poll_interval_s, s.operation_timeout_s) == (0.5, 30.0)
    assert all(s.attempts(step) == 1 for step in ("upload_file", "inference_submit"))
    assert s.wait_out_restarts is False
    assert s.flow_timeout_s == FAST["flow"]["flow_timeout_s"]  # not the preset's to change


def test_upstream_preset_is_the_upstream_clients_polling_and_retries():
    s = FlowSettings.from_profile(FAST, client="upstream", relay="direct")
    assert (s.poll_interval_s, s.operation_timeout_s) == (5.0, 150.0)
    assert (s.attempts("upload_file"), s.attempts("server_identity")) == (1, 1)
    assert (s.attempts("inference_submit"), s.attempts("inference_poll")) == (3, 5)
    assert (s.retry_base_s, s.retry_cap_s, s.retry_jitter) == (1.0, 5.0, False)
    assert s.relay == "direct"


def test_explicit_overrides_win_and_presets_are_copies():
    s = FlowSettings.from_profile(FAST, client="sdk", poll_interval_s=0.1)
    assert s.poll_interval_s == 0.1
    clients.preset("upstream")["step_attempts"]["inference_submit"] = 99
    assert clients.preset("upstream")["step_attempts"]["inference_submit"] == 3
    with pytest.raises(ValueError, match="tight, sdk, upstream"):
        clients.preset("viem")


# --- relay direct: the user's wallet sends and pays -----------------------------------------


async def funded_wallet(rpc_url: str) -> Wallet:
    acct = Account.create()
    w3 = chain.make_web3(rpc_url, timeout_s=10)
    try:
        await wallets.fund(w3, anvil.dev_key(0), [acct.address], wallets.DIRECT_TARGET_WEI)
    finally:
        await chain.close_web3(w3)
    return Wallet(0, acct.address, acct.key.to_0x_hex())


async def relayed_count(api_url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{api_url}/metrics") as resp:
        return (await resp.json())["relayed"]


@pytest.mark.e2e
async def test_a_direct_flow_sends_the_users_own_transaction(local_stack):
    ep = local_stack.endpoints
    wallet = await funded_wallet(ep.rpc_url)
    settings = FlowSettings.from_profile(local_stack.profile, relay="direct")
    before = await relayed_count(ep.api_url)
    async with flow_context(ep, lambda e: None, settings) as ctx:
        outcome = await run_flow(ctx, wallet, b'{"a": 1}', flow_id=0, data_size="small")
        tx = await ctx.w3.eth.get_transaction(outcome["tx_hash"])
        balance = await ctx.w3.eth.get_balance(wallet.address)
    assert outcome["ok"], outcome
    assert tx["from"] == wallet.address and tx["to"] == ep.contracts["DataPortabilityPermissions"]
    assert balance < wallets.DIRECT_TARGET_WEI  # the user paid the gas
    assert await relayed_count(ep.api_url) == before  # the app's relayer sent nothing


@pytest.mark.e2e
async def test_a_direct_flow_with_a_spent_nonce_fails_as_nonce_without_sending(local_stack):
    ep = local_stack.endpoints
    wallet = await funded_wallet(ep.rpc_url)
    settings = FlowSettings.from_profile(local_stack.profile, relay="direct")
    async with flow_context(ep, lambda e: None, settings) as ctx:
        first = await run_flow(ctx, wallet, b"{}", flow_id=0, data_size="small")
        real = ctx.contract("DataPortabilityPermissions").functions.userNonce
        # The next flow reads a stale nonce (0, already used): the contract would revert.
        ctx._views[("DataPortabilityPermissions", "userNonce")] = lambda *a: asyncio.sleep(0, 0)
        second = await run_flow(ctx, wallet, b"{}", flow_id=1, data_size="small")
        sent = await ctx.w3.eth.get_transaction_count(wallet.address)
        assert await real(wallet.address).call() == 1
    assert first["ok"], first
    assert not second["ok"] and second["failed_step"] == "relay"
    assert second["error_class"] == "nonce", second
    assert sent == 1  # the refused tx was never sent


# --- a whole run whose client's own limit fails the flows --------------------------------------


@pytest.mark.e2e
async def test_a_run_names_relay_and_client_and_notes_client_timeouts(tmp_path, monkeypatch):
    monkeypatch.setenv(wallets.WALLET_FILE_ENV, str(tmp_path / "wallets.json"))
    profile = load_profile("fast")
    profile["inference"]["latency_s"] = [0.5, 0.6]
    profile["flow"]["operation_timeout_s"] = 0.1  # the client gives up before inference ends
    path = tmp_path / "impatient.yaml"
    path.write_text(yaml.safe_dump(profile))
    config = RunConfig.from_params(
        users=2,
        profile=str(path),
        shape="burst",
        relay="direct",
        client="tight",
        output_dir=str(tmp_path / "out"),
    )
    outcome = await run(config, progress=False)
    summary = analyze(outcome.results_dir)
    assert (summary["relay"], summary["client"]) == ("direct", "tight")
    assert summary["flows_failed"] == 2 and summary["error_classes"] == {"timeout": 2}
    assert summary["client_timeouts"] == {"tight: operation_timeout_s": 2}
    written = json.loads((outcome.results_dir / "config.json").read_text())
    assert (written["relay"], written["client"]) == ("direct", "tight")
    report = (outcome.results_dir / "report.html").read_text()
    assert "relay <b>direct</b>" in report and "client <b>tight</b>" in report
    assert "client preset&#39;s own" in report or "client preset's own" in report
