"""`python -m workbench wallets --generate N | --fund | --check | --sweep`."""

from __future__ import annotations

import asyncio
from argparse import Namespace

from eth_account import Account

from workbench.driver import wallets
from workbench.errors import WorkbenchError
from workbench.stack.anvil import CHAIN_ID, dev_key
from workbench.vana import chain


def wallets_command(args: Namespace) -> int:
    if not (args.generate or args.fund or args.check or args.sweep):
        raise WorkbenchError(
            "wallets", "nothing to do", "pass --generate N, --fund, --check or --sweep"
        )
    if args.generate:
        ws = wallets.generate(args.generate, args.wallet_file)
        print(f"✅ {len(ws.wallets)} test wallets in {ws.path} (mode 600)")
    if args.fund or args.check or args.sweep:
        if not args.rpc_url:
            raise WorkbenchError(
                "--rpc-url",
                "needed to fund, check or sweep",
                "pass the chain's RPC URL (e.g. rpc_url from `python -m workbench stack up --json`)",
            )
        return asyncio.run(_on_chain(args))
    return 0


async def _on_chain(args: Namespace) -> int:
    ws = wallets.load(args.wallet_file, args.count)
    target_wei = int(args.amount_eth * 10**18)
    w3 = chain.make_web3(args.rpc_url)
    try:
        funder = await _funder(w3) if (args.fund or args.sweep) else None
        if args.fund:
            assert funder is not None  # fetched above for --fund
            done = await wallets.fund(w3, funder, ws.addresses, target_wei)
            print(f"💸 funded {done['funded']} wallets, {done['already']} already had enough")
        if args.check:
            print(f"✅ {len(ws.wallets)} test wallets loaded and validated")
            short = await wallets.check(w3, ws.addresses, target_wei)
            if short:
                print(f"❌ {len(short)} wallets are short of funds:")
                for a in short:
                    print(f"   {a}")
                return 1
            print("✅ All wallets have sufficient funding")
        if args.sweep:
            to = Account.from_key(funder).address
            done = await wallets.sweep(w3, ws.wallets, to)
            print(f"🧹 swept {done['swept']} wallets, {done['wei'] / 1e18:.6f} ETH back to {to}")
    finally:
        await chain.close_web3(w3)
    return 0


async def _funder(w3) -> str:
    """The environment's funder key; on a local anvil chain, anvil's public dev account 0."""
    local = dev_key(0) if await chain.chain_id(w3) == CHAIN_ID else None
    return wallets.funder_key(local)
