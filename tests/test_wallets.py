"""Test wallets: generate, persist (0600, atomic), fund idempotently, check, sweep, and the CLI."""

from __future__ import annotations

import json
import os
import stat

import pytest
from eth_account import Account

from workbench.__main__ import main
from workbench.cli import wallets as wallets_cli
from workbench.driver import wallets
from workbench.errors import WorkbenchError
from workbench.stack.anvil import dev_key

FUNDER_INDEX = 18  # dev account reserved for this module on the shared anvil (see conftest)


def test_generate_writes_a_private_file_and_reloads_the_same_wallets(tmp_path):
    path = tmp_path / "w.json"
    ws = wallets.generate(5, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = wallets.load(path)
    assert again.addresses == ws.addresses and len(set(ws.addresses)) == 5
    for w in again.wallets:
        assert Account.from_key(w.private_key).address == w.address
    assert "private_key" not in repr(again.wallets[0]) and ws.wallets[0].private_key not in repr(ws)


def test_generate_extends_with_the_same_mnemonic(tmp_path):
    path = tmp_path / "w.json"
    first = wallets.generate(3, path).addresses
    more = wallets.generate(6, path).addresses
    assert more[:3] == first and len(more) == 6
    assert wallets.generate(2, path).addresses == more  # never shrinks


@pytest.mark.parametrize(
    "setup, field",
    [
        (lambda p: None, "wallet file"),  # missing
        (lambda p: (p.write_text("{not json"), p.chmod(0o600)), "wallet file"),
        (
            lambda p: (p.write_text(json.dumps({"count": 2})), p.chmod(0o600)),
            "wallet file.mnemonic",
        ),
    ],
)
def test_bad_wallet_files_name_the_problem(tmp_path, setup, field):
    path = tmp_path / "w.json"
    setup(path)
    with pytest.raises(WorkbenchError) as err:
        wallets.load(path)
    assert err.value.field == field and err.value.fix


def test_a_world_readable_wallet_file_is_refused(tmp_path):
    path = tmp_path / "w.json"
    wallets.generate(1, path)
    os.chmod(path, 0o644)
    with pytest.raises(WorkbenchError, match="chmod 600"):
        wallets.load(path)


def test_asking_for_more_wallets_than_the_file_holds_says_how_to_generate(tmp_path):
    path = tmp_path / "w.json"
    wallets.generate(2, path)
    with pytest.raises(WorkbenchError, match="--generate 4"):
        wallets.load(path, 4)


@pytest.mark.e2e
async def test_fund_is_idempotent_check_finds_short_ones_and_sweep_returns_funds(
    anvil, w3, tmp_path
):
    ws = wallets.generate(4, tmp_path / "w.json")
    funder = dev_key(FUNDER_INDEX)
    target = 10**16
    assert set(await wallets.check(w3, ws.addresses, target)) == set(ws.addresses)
    with pytest.raises(WorkbenchError, match="wallets --fund"):
        await wallets.require_funded(w3, ws.addresses, target)

    first = await wallets.fund(w3, funder, ws.addresses, target)
    assert first == {"funded": 4, "already": 0}
    assert await wallets.check(w3, ws.addresses, target) == []
    assert await wallets.fund(w3, funder, ws.addresses, target) == {"funded": 0, "already": 4}
    assert all(b == target for b in await wallets.balances(w3, ws.addresses))

    before = await w3.eth.get_balance(Account.from_key(funder).address)
    swept = await wallets.sweep(w3, ws.wallets, Account.from_key(funder).address)
    assert swept["swept"] == 4
    after = await w3.eth.get_balance(Account.from_key(funder).address)
    assert after - before == swept["wei"] > 0
    assert all(b < 10**15 for b in await wallets.balances(w3, ws.addresses))  # only dust left


@pytest.mark.e2e
async def test_funding_more_than_the_funder_has_fails_before_sending(w3, tmp_path):
    ws = wallets.generate(2, tmp_path / "w.json")
    poor = Account.create()
    with pytest.raises(WorkbenchError, match="funder"):
        await wallets.fund(w3, poor.key.hex(), ws.addresses, 10**16)


@pytest.mark.e2e
def test_cli_generate_then_check_prints_the_milestone_lines(anvil, tmp_path, capsys, monkeypatch):
    path = tmp_path / "w.json"
    monkeypatch.setenv(wallets.FUNDER_KEY_ENV, dev_key(FUNDER_INDEX))
    common = ["--wallet-file", str(path), "--rpc-url", anvil.rpc_url]
    assert main(["wallets", "--generate", "3"] + common[:2]) == 0
    assert main(["wallets", "--check", *common]) == 1
    assert "3 wallets are short of funds" in capsys.readouterr().out
    assert main(["wallets", "--fund", "--check", *common]) == 0
    out = capsys.readouterr().out
    assert "✅ 3 test wallets loaded and validated" in out
    assert "✅ All wallets have sufficient funding" in out
    assert dev_key(FUNDER_INDEX).removeprefix("0x") not in out


def test_cli_without_rpc_url_names_the_flag(tmp_path, capsys):
    assert main(["wallets", "--check", "--wallet-file", str(tmp_path / "w.json")]) == 2
    assert "--rpc-url" in capsys.readouterr().err


@pytest.mark.e2e
async def test_cli_funder_defaults_to_anvil_dev_key_only_on_a_local_chain(w3, monkeypatch):
    monkeypatch.delenv(wallets.FUNDER_KEY_ENV, raising=False)
    assert await wallets_cli._funder(w3) == dev_key(0)  # the anvil fixture: chain id 31337

    async def other_chain(_w3):
        return 14800

    monkeypatch.setattr("workbench.vana.chain.chain_id", other_chain)
    with pytest.raises(WorkbenchError, match=wallets.FUNDER_KEY_ENV):
        await wallets_cli._funder(w3)
