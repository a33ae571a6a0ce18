"""Test wallets: generate from one mnemonic, persist safely, fund, check and sweep.

The wallet file holds the mnemonic, so it is written atomically with 0600 permissions and lives
outside `outputs/` (default `.wallets/wallets.json`, or `$WORKBENCH_WALLET_FILE`). Keys are
derived on load (BIP-44, m/44'/60'/0'/0/i) and never printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.hdaccount import generate_mnemonic, key_from_seed, seed_from_mnemonic
from eth_account.types import Language

from workbench.driver.flow import Wallet
from workbench.errors import WorkbenchError
from workbench.params import PROJECT_ROOT
from workbench.secrets import FUNDER_KEY_ENV, WALLET_FILE_ENV
from workbench.vana import chain

PATH_TEMPLATE = "m/44'/60'/0'/0/{}"
DEFAULT_TARGET_WEI = 10**16  # 0.01 ETH: users only sign; the relayer pays gas
DIRECT_TARGET_WEI = 10**17  # 0.1 ETH: with relay direct each flow's tx (~0.4 M gas) is the user's
TRANSFER_GAS = 21_000


def default_wallet_file() -> Path:
    return Path(os.environ.get(WALLET_FILE_ENV) or PROJECT_ROOT / ".wallets" / "wallets.json")


@dataclass
class WalletSet:
    """The wallets of one wallet file; `wallets[i]` is test user i."""

    path: Path
    mnemonic: str
    wallets: list[Wallet]

    @property
    def addresses(self) -> list[str]:
        return [w.address for w in self.wallets]

    def private_keys(self) -> list[str]:
        """For the secret guard of reports; never print these."""
        return [w.private_key for w in self.wallets]

    def __repr__(self) -> str:
        return f"WalletSet(path={str(self.path)!r}, wallets={len(self.wallets)})"


def derive(mnemonic: str, count: int, only: Iterable[int] | None = None) -> list[Wallet]:
    """Wallets 0..count-1; with `only`, just those indices (a Dask worker's share: ~1.3 ms of
    key derivation per wallet)."""
    seed = seed_from_mnemonic(mnemonic, "")
    wallets = []
    for i in range(count) if only is None else only:
        key = "0x" + key_from_seed(seed, PATH_TEMPLATE.format(i)).hex()
        wallets.append(Wallet(i, Account.from_key(key).address, key))
    return wallets


def generate(count: int, path: Path | None = None) -> WalletSet:
    """Creates the wallet file, or extends an existing one to `count` (same mnemonic)."""
    if not isinstance(count, int) or count < 1:
        raise WorkbenchError("--generate", f"needs a positive count, got {count!r}", "pass e.g. 50")
    path = Path(path or default_wallet_file())
    mnemonic = _read(path)["mnemonic"] if path.exists() else generate_mnemonic(12, Language.ENGLISH)
    existing = _read(path)["count"] if path.exists() else 0
    count = max(count, existing)
    _write_atomic(path, {"version": 1, "kind": "bip44", "mnemonic": mnemonic, "count": count})
    return WalletSet(path, mnemonic, derive(mnemonic, count))


def load(path: Path | None = None, count: int | None = None) -> WalletSet:
    """Loads the wallet file; `count` asks for at least that many wallets."""
    path = Path(path or default_wallet_file())
    if not path.exists():
        raise WorkbenchError(
            "wallet file",
            f"{path} does not exist",
            "run: python -m workbench wallets --generate 50",
        )
    doc = _read(path)
    if count is not None and count > doc["count"]:
        raise WorkbenchError(
            "wallet file",
            f"{path} holds {doc['count']} wallets, the run needs {count}",
            f"run: python -m workbench wallets --generate {count}",
        )
    return WalletSet(path, doc["mnemonic"], derive(doc["mnemonic"], count or doc["count"]))


def load_share(path: Path, count: int, indices: Iterable[int]) -> WalletSet:
    """A Dask worker's wallets: `wallets[i]` is user i for the `indices` it runs, else None.

    Keys reach a worker only this way (the 0600 file, found by path or by
    `$WORKBENCH_WALLET_FILE`), never in a task's arguments, which Dask's dashboard can show."""
    held = _read(path)  # checks the file and its mode
    if count > held["count"]:
        raise WorkbenchError(
            "wallet file",
            f"{path} holds fewer than the run's {count} wallets on this worker",
            "give every worker the coordinator's wallet file ($WORKBENCH_WALLET_FILE)",
        )
    share: list[Any] = [None] * count
    for wallet in derive(held["mnemonic"], count, only=indices):
        share[wallet.index] = wallet
    return WalletSet(path, held["mnemonic"], share)


def load_or_generate(count: int, path: Path | None = None) -> WalletSet:
    """The first `count` wallets of the file, extending or creating it as needed."""
    path = Path(path or default_wallet_file())
    if not path.exists() or _read(path)["count"] < count:
        generate(count, path)
    return load(path, count)


def _read(path: Path) -> dict[str, Any]:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise WorkbenchError(
            "wallet file", f"{path} is readable by others (mode {mode:o})", f"run: chmod 600 {path}"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WorkbenchError(
            "wallet file", f"{path} is not valid JSON ({e})", "restore it or generate a new one"
        ) from e
    if not isinstance(doc, dict) or not isinstance(doc.get("mnemonic"), str):
        raise WorkbenchError(
            "wallet file.mnemonic", f"missing in {path}", "generate a new wallet file"
        )
    if not isinstance(doc.get("count"), int) or doc["count"] < 1:
        raise WorkbenchError(
            "wallet file.count", f"must be a positive integer in {path}", "fix the file"
        )
    return doc


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Writes to a 0600 temp file in the same folder, fsyncs, then renames over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def funder_key(local_default: str | None = None) -> str:
    """The funder's key from the environment; on the local stack, anvil's dev account 0."""
    key = os.environ.get(FUNDER_KEY_ENV) or local_default
    if not key:
        raise WorkbenchError(
            FUNDER_KEY_ENV, "not set", f"export {FUNDER_KEY_ENV}=<key of a funded account>"
        )
    return key


async def balances(w3: Any, addresses: list[str]) -> list[int]:
    return list(await asyncio.gather(*(w3.eth.get_balance(a) for a in addresses)))


async def fund(
    w3: Any,
    funder: str,
    addresses: list[str],
    target_wei: int = DEFAULT_TARGET_WEI,
    timeout_s: float = 120.0,
    batch: int = 200,
) -> dict[str, int]:
    """Tops each address up to `target_wei`; already-funded ones are skipped (idempotent).

    Transactions go out in batches with locally managed nonces, then receipts are awaited
    together, so 1000 wallets cost a few blocks, not 1000 sequential round trips.
    """
    have = await balances(w3, addresses)
    short = [(a, target_wei - b) for a, b in zip(addresses, have, strict=True) if b < target_wei]
    need = sum(amount for _, amount in short) + len(short) * TRANSFER_GAS * await _gas_price(w3)
    funder_address = Account.from_key(funder).address
    available = await w3.eth.get_balance(funder_address)
    if need > available:
        raise WorkbenchError(
            "funder",
            f"{funder_address} has {available / 1e18:.4f} ETH, funding needs {need / 1e18:.4f}",
            "top up the funder or lower the wallet count",
        )
    nonces = chain.NonceManager(w3, funder_address)
    for start in range(0, len(short), batch):
        part = short[start : start + batch]
        hashes = await asyncio.gather(
            *(
                chain.send_tx(w3, funder, {"to": a, "value": amount, "gas": TRANSFER_GAS}, nonces)
                for a, amount in part
            )
        )
        await asyncio.gather(*(chain.wait_receipt(w3, h, timeout_s, 0.2) for h in hashes))
    return {"funded": len(short), "already": len(addresses) - len(short)}


async def check(w3: Any, addresses: list[str], min_wei: int = DEFAULT_TARGET_WEI) -> list[str]:
    """Addresses below `min_wei` (empty when all are funded)."""
    have = await balances(w3, addresses)
    return [a for a, b in zip(addresses, have, strict=True) if b < min_wei]


async def require_funded(w3: Any, addresses: list[str], min_wei: int = DEFAULT_TARGET_WEI) -> None:
    """Refuses to start a run with short wallets, naming them and the fix."""
    short = await check(w3, addresses, min_wei)
    if short:
        shown = ", ".join(short[:5]) + (" …" if len(short) > 5 else "")
        raise WorkbenchError(
            "wallets",
            f"{len(short)} of {len(addresses)} wallets are short of funds ({shown})",
            "run: python -m workbench wallets --fund",
        )


async def sweep(
    w3: Any, wallets: list[Wallet], to: str, timeout_s: float = 120.0
) -> dict[str, int]:
    """Returns each wallet's balance (less the transfer's gas) to `to`."""
    price = await _gas_price(w3)
    fee = TRANSFER_GAS * price
    have = await balances(w3, [w.address for w in wallets])
    moves = [(w, b - fee) for w, b in zip(wallets, have, strict=True) if b > fee]

    async def one(w: Wallet, value: int) -> str:
        nonces = chain.NonceManager(w3, w.address)
        tx = {
            "to": to,
            "value": value,
            "gas": TRANSFER_GAS,
            "maxFeePerGas": price,
            "maxPriorityFeePerGas": price,
        }
        return await chain.send_tx(w3, w.private_key, tx, nonces)

    hashes = await asyncio.gather(*(one(w, v) for w, v in moves))
    await asyncio.gather(*(chain.wait_receipt(w3, h, timeout_s, 0.2) for h in hashes))
    return {"swept": len(moves), "wei": sum(v for _, v in moves)}


async def _gas_price(w3: Any) -> int:
    block = await w3.eth.get_block("latest")
    return int(block.get("baseFeePerGas", 0)) * 2 + 10**9


def file_secrets(config: Mapping[str, Any]) -> list[str]:
    """The keys and mnemonic of the wallet file a run used (its config's `wallet_file`, else
    `$WORKBENCH_WALLET_FILE`) when readable here: what a report must refuse to contain."""
    path = config.get("wallet_file") or os.environ.get(WALLET_FILE_ENV)
    if not path or not Path(path).is_file():
        return []  # rendered elsewhere: the heuristic and the runner's keys still apply
    users = config.get("users")
    try:
        try:
            ws = load(Path(path), count=users if isinstance(users, int) else None)
        except WorkbenchError:  # fewer wallets than users (open-model runs): take the file's
            ws = load(Path(path))
    except WorkbenchError:
        return []  # unreadable (e.g. bad mode): cannot check against it
    return [*ws.private_keys(), ws.mnemonic]
