"""Preflight: does every endpoint of a target answer as its file says?

Runs before any wallet is funded or any flow starts, and reports every problem at once (one
`WorkbenchError` listing each wrong item with its fix), so one edit of the target file fixes
them all. Checks: each RPC URL answers `eth_chainId` = `chain_id`; code at each contract
address; `eip712Domain()` of DataPortabilityPermissions is Vana's (name, version, chain id,
address); grantee `grantee_id` exists; the API server's `/health`, and its `/api/relay` answers
an invalid signed request with `{"type": "error"}` (the SDK's unified relayer protocol); the
personal server's `/identity` (under its base URL, which may carry a path); the storage takes an
upload and its gateway serves those bytes back. That probe (a few bytes, the same CID every time)
is the one thing preflight leaves behind. Placeholders (`REPLACE_ME…`) are problems too.

    python -m workbench preflight moksha
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from workbench.errors import WorkbenchError
from workbench.vana import contracts
from workbench.vana.chain import close_web3, make_web3
from workbench.vana.ipfs import IpfsProvider
from workbench.vana.permission import DOMAIN_NAME, DOMAIN_VERSION
from workbench.vana.relay import ADD_SERVER_FILES_AND_PERMISSIONS
from workbench.vana.target import CONTRACT_NAMES, ZERO_ADDRESS, Target, load_target

PROBE_ADDRESS = "0x000000000000000000000000000000000000dEaD"  # any user works for /identity
DEFAULT_TIMEOUT_S = 10.0
# A signed request no relayer can accept: an app speaking the unified protocol says {type: error}.
INVALID_RELAY = {
    "type": "signed",
    "operation": ADD_SERVER_FILES_AND_PERMISSIONS,
    "typedData": {},
    "signature": "0x",
}
STORAGE_PROBE = b"workbench preflight probe: the gateway must serve these bytes back\n"


@dataclass(frozen=True)
class Check:
    """One fact about the target. `item` is the target file's key it concerns."""

    item: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a failed optional check is a warning, not a problem


@dataclass
class PreflightReport:
    target: str
    source: str | None
    checks: list[Check] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.required]

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per check, for people: ✅, ⚠️ (optional) or ❌ with the fix."""
        out = []
        for c in self.checks:
            icon = "✅" if c.ok else ("❌" if c.required else "⚠️")
            out.append(f"{icon} {c.item}: {c.detail}" + (f" Fix: {c.fix}" if not c.ok else ""))
        return out

    def raise_for_problems(self) -> None:
        """One WorkbenchError naming every wrong item and its fix."""
        if self.ok:
            return
        listed = "\n".join(f"  - {c.item}: {c.detail} Fix: {c.fix}" for c in self.problems)
        raise WorkbenchError(
            f"target {self.target}" + (f" ({self.source})" if self.source else ""),
            f"{len(self.problems)} preflight check(s) failed:\n{listed}\n",
            f"correct the items above, then check again: python -m workbench preflight "
            f"{self.source or self.target}",
        )


async def preflight(target: Target, timeout_s: float = DEFAULT_TIMEOUT_S) -> PreflightReport:
    """Checks every endpoint of `target` concurrently; never raises for what it finds."""
    t0 = time.perf_counter()
    report = PreflightReport(target.name, target.source)
    report.checks += [_placeholder(key, hint) for key, hint in target.placeholders.items()]
    skip = set(target.placeholders)
    ep = target.endpoints
    rpc_urls = {
        f"rpc_urls[{i}]": url
        for i, url in enumerate(target.rpc_urls or (ep.rpc_url,))
        if f"rpc_urls[{i}]" not in skip
    }
    services = [
        (item, url, probe)
        for item, url, probe in (
            ("api_url", ep.api_url, _api),
            ("personal_server_url", ep.personal_server_url, _personal),
        )
        if item not in skip
    ]
    storage = not {"storage_url", "gateway_url"} & skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        rpc_checks, service_checks, storage_checks = await asyncio.gather(
            asyncio.gather(
                *(_rpc(http, i, u, ep.chain_id, timeout_s) for i, u in rpc_urls.items())
            ),
            asyncio.gather(*(_guarded(i, u, p(http, u), timeout_s) for i, u, p in services)),
            _storage(http, target.ipfs, timeout_s) if storage else asyncio.sleep(0, []),
        )
    report.checks += [*rpc_checks, *service_checks, *storage_checks]
    working = [rpc_urls[c.item] for c in rpc_checks if c.ok]
    report.checks += await _chain(target, working[0] if working else None, skip, timeout_s)
    report.checks.append(_funder(target))
    report.duration_s = time.perf_counter() - t0
    return report


async def checked_target(
    name_or_path: str, say: Callable[[str], None] = print, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Target:
    """`load_target` + `preflight`, printing one line per check; raises on any problem."""
    target = load_target(name_or_path)
    say(f"🔎 Preflight of target {target.name} ({target.source})...")
    report = await preflight(target, timeout_s)
    for line in report.lines():
        say(f"   {line}")
    report.raise_for_problems()
    say(f"✅ Target {target.name} ready ({report.duration_s:.1f} s)")
    return target


# --------------------------------------------------------------------------- the checks


def _placeholder(key: str, hint: str) -> Check:
    return Check(
        key,
        False,
        f"still a placeholder ({hint.strip()!r}).",
        "put the real value in the target file",
    )


async def _guarded(item: str, url: str, probe: Awaitable[Check], timeout_s: float) -> Check:
    """A probe's Check, or one that says why the URL could not be reached."""
    try:
        return await probe
    except TimeoutError:
        return _unreachable(item, url, f"no answer within {timeout_s:g} s")
    except aiohttp.ClientError as e:
        return _unreachable(item, url, _describe(e))
    except (ValueError, KeyError, TypeError) as e:  # an answer, but not the expected JSON
        return Check(
            item,
            False,
            f"{url} gave an unexpected answer ({e!r:.120}).",
            _FIXES.get(item, _RPC_FIX),
        )


def _unreachable(item: str, url: str, why: str) -> Check:
    return Check(
        item,
        False,
        f"{url} is unreachable ({why}).",
        "check the URL, that the service runs, and your network or VPN",
    )


def _describe(e: BaseException) -> str:
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or e.os_error}"
    return f"{type(e).__name__}: {e}"[:200]


async def _rpc(
    http: aiohttp.ClientSession, item: str, url: str, chain_id: int, timeout_s: float
) -> Check:
    """`eth_chainId`; a wrong chain id is filed under `chain_id`, the key most likely wrong."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}

    async def ask() -> Check:
        async with http.post(url, json=body) as resp:
            if resp.status != 200:
                return Check(item, False, f"{url} answered HTTP {resp.status}.", _RPC_FIX)
            answered = int((await resp.json(content_type=None))["result"], 16)
        if answered != chain_id:
            return Check(
                "chain_id",
                False,
                f"the file says {chain_id}, {url} ({item}) answers {answered}.",
                f"point {item} at a node of chain {chain_id}, or set chain_id: {answered} if "
                "that is the network you mean",
            )
        return Check(item, True, f"{url} answers chain id {answered}.")

    return await _guarded(item, url, ask(), timeout_s)


async def _api(http: aiohttp.ClientSession, url: str) -> Check:
    async with http.get(f"{url}/health") as resp:
        body = await resp.json(content_type=None) if resp.status == 200 else None
    if not isinstance(body, dict) or body.get("status") != "ok":
        return Check(
            "api_url",
            False,
            f"{url}/health answered HTTP {resp.status}, not {{'status': 'ok'}}.",
            _FIXES["api_url"],
        )
    async with http.post(f"{url}/api/relay", json=INVALID_RELAY) as resp:
        try:
            answer = await resp.json(content_type=None)
        except ValueError:  # not JSON at all
            answer = None
    if not isinstance(answer, dict) or answer.get("type") != "error":
        return Check(
            "api_url",
            False,
            f"{url}/api/relay answered an invalid signed request with HTTP {resp.status} and no "
            "{'type': 'error'}: it does not speak the SDK's unified relayer protocol.",
            _FIXES["api_url"],
        )
    return Check("api_url", True, f"{url}/health is ok; /api/relay speaks the unified protocol.")


async def _personal(http: aiohttp.ClientSession, url: str) -> Check:
    async with http.get(f"{url}/identity", params={"address": PROBE_ADDRESS}) as resp:
        body = await resp.json(content_type=None) if resp.status == 200 else None
    server = body.get("personal_server") if isinstance(body, dict) else None
    if not isinstance(server, dict) or not server.get("public_key"):
        return Check(
            "personal_server_url",
            False,
            f"{url}/identity answered HTTP {resp.status} without a personal_server.public_key.",
            _FIXES["personal_server_url"],
        )
    return Check("personal_server_url", True, f"{url}/identity gives a server key.")


async def _storage(http: aiohttp.ClientSession, ipfs: IpfsProvider, timeout_s: float) -> list:
    """An upload of STORAGE_PROBE (item storage_url), then the gateway serving those bytes."""
    try:
        headers = ipfs.headers()
    except WorkbenchError as e:  # pinata without its JWT in the environment
        return [Check("storage_url", False, f"${e.field} is {e.problem}.", e.fix)]
    cids: list[str] = []

    async def upload() -> Check:
        form = ipfs.form(STORAGE_PROBE, "workbench-preflight-probe.txt")
        async with http.post(ipfs.add_url, data=form, headers=headers) as resp:
            answer = await resp.json(content_type=None) if resp.status == 200 else None
        if answer is None:
            detail = f"{ipfs.add_url} answered HTTP {resp.status} to an upload."
            return Check("storage_url", False, detail, _FIXES["storage_url"])
        cids.append(ipfs.cid(answer))
        return Check("storage_url", True, f"{ipfs.add_url} stored a probe ({ipfs.kind}).")

    async def fetch(url: str) -> Check:
        async with http.get(url) as resp:
            data = await resp.read() if resp.status == 200 else None
        if data != STORAGE_PROBE:
            what = f"HTTP {resp.status}" if data is None else "other bytes"
            detail = f"{url} answered {what}, not the probe just stored."
            return Check("gateway_url", False, detail, _FIXES["gateway_url"])
        return Check("gateway_url", True, f"{ipfs.gateway_url} serves what the storage stored.")

    stored = await _guarded("storage_url", ipfs.add_url, upload(), timeout_s)
    if not cids:
        return [stored]
    url = ipfs.gateway(cids[0])
    return [stored, await _guarded("gateway_url", url, fetch(url), timeout_s)]


_FIXES = {
    "api_url": "point api_url at the app's API server (it serves /health, and the SDK's "
    "unified relayer protocol on /api/relay)",
    "personal_server_url": "point personal_server_url at a Vana personal server's base URL "
    "(e.g. https://test.server.vana.com/api/v1)",
    "storage_url": "point storage_url at a Kubo RPC API (storage_kind kubo, e.g. "
    "http://127.0.0.1:5001) or Pinata's API (storage_kind pinata, https://api.pinata.cloud)",
    "gateway_url": "set gateway_url to the gateway serving the storage's objects as "
    "<gateway_url>/<cid> (kubo default: <storage_url>/ipfs)",
}
_RPC_FIX = "use the JSON-RPC URL of a node of this chain"


async def _chain(
    target: Target, rpc_url: str | None, skip: set[str], timeout_s: float
) -> list[Check]:
    """Contract code, the EIP-712 domain and the grantee, read through a working RPC URL."""
    if rpc_url is None:
        return [
            Check(
                "contracts",
                False,
                "not checked: no RPC URL answered with the right chain id.",
                "fix the RPC items above first",
            )
        ]
    w3 = make_web3(rpc_url, timeout_s=timeout_s)
    try:
        return await asyncio.wait_for(_chain_checks(w3, target, skip), timeout_s * 3)
    except TimeoutError:
        return [_unreachable("contracts", rpc_url, "reads timed out")]
    except Exception as e:  # the node failed a read: say which and go on
        return [_unreachable("contracts", rpc_url, _describe(e))]
    finally:
        await close_web3(w3)


async def _chain_checks(w3: Any, target: Target, skip: set[str]) -> list[Check]:
    ep = target.endpoints
    names = [n for n in CONTRACT_NAMES if f"contracts.{n}" not in skip]
    codes = await asyncio.gather(*(w3.eth.get_code(ep.contracts[n]) for n in names))
    checks, deployed = [], set()
    for name, code in zip(names, codes, strict=True):
        if len(code) == 0:
            checks.append(
                Check(
                    f"contracts.{name}",
                    False,
                    f"no contract code at {ep.contracts[name]} on chain {ep.chain_id}.",
                    "copy the address again for this network",
                )
            )
        else:
            deployed.add(name)
            checks.append(Check(f"contracts.{name}", True, f"code at {ep.contracts[name]}."))
    if "DataPortabilityPermissions" in deployed:
        checks.append(await _domain(w3, ep.contracts["DataPortabilityPermissions"], ep.chain_id))
    if "DataPortabilityGrantees" in deployed and "grantee_id" not in skip:
        checks.append(await _grantee(w3, ep.contracts["DataPortabilityGrantees"], ep.grantee_id))
    return checks


async def _domain(w3: Any, address: str, chain_id: int) -> Check:
    item = "contracts.DataPortabilityPermissions"
    want = (DOMAIN_NAME, DOMAIN_VERSION, chain_id, address)
    try:
        got = (
            await w3.eth.contract(address=address, abi=contracts.abi("DataPortabilityPermissions"))
            .functions.eip712Domain()
            .call()
        )
    except Exception as e:  # any failure to read it is the finding
        return Check(item, False, f"eip712Domain() failed ({_describe(e)}).", _DOMAIN_FIX)
    seen = (got[1], got[2], int(got[3]), got[4])
    if seen != want:
        return Check(
            item,
            False,
            f"eip712Domain() is (name, version, chainId, verifyingContract) = {seen}, "
            f"expected {want}.",
            _DOMAIN_FIX,
        )
    return Check(item, True, f"eip712Domain() is {DOMAIN_NAME} v{DOMAIN_VERSION} on {chain_id}.")


_DOMAIN_FIX = "use the address of Vana's DataPortabilityPermissions on this chain"


async def _grantee(w3: Any, address: str, grantee_id: int) -> Check:
    try:
        info = (
            await w3.eth.contract(address=address, abi=contracts.abi("DataPortabilityGrantees"))
            .functions.grantees(grantee_id)
            .call()
        )
        grantee_address = info[1]
    except Exception as e:  # a revert (GranteeNotFound) or a bad answer
        grantee_address, why = None, _describe(e)
    else:
        why = "its granteeAddress is zero"
    if grantee_address in (None, ZERO_ADDRESS):
        return Check(
            "grantee_id",
            False,
            f"grantee {grantee_id} does not exist ({why}).",
            "register the app with registerGrantee(owner, granteeAddress, publicKey) and put "
            "the id it returns here",
        )
    return Check("grantee_id", True, f"grantee {grantee_id} is {grantee_address}.")


def _funder(target: Target) -> Check:
    """Optional: the funder's key is only needed to fund wallets (`wallets --fund`)."""
    name = target.funder_key_env
    if os.environ.get(name):
        return Check("funder_key_env", True, f"${name} is set.", required=False)
    return Check(
        "funder_key_env",
        False,
        f"${name} is not set; runs need wallets funded beforehand.",
        f"export {name}=<key of a funded account> to fund with `python -m workbench wallets "
        "--fund`",
        required=False,
    )
