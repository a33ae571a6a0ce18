"""Storage hygiene: remove what a run uploaded from the storage that holds it.

Every upload step event, and every flow event, lists the objects it stored
(`"stored": [{"cid", "bytes"}]`), so the uploads of a flow cut short by a crash count too; the
run's `config.json` says where (`endpoints.storage_url`). `python -m workbench cleanup DIR`
unpins each object (Kubo RPC `POST /api/v0/pin/rm?arg=CID`; the embedded storage deletes at
once) and is idempotent: an object already gone counts as such, not as an error.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from workbench.errors import WorkbenchError
from workbench.events import iter_events, stored_objects

CONCURRENCY = 16
TIMEOUT_S = 10.0
STACK_GONE = "the local stack of this run has stopped; its storage went with it"


@dataclass
class CleanupResult:
    storage_url: str
    removed: dict[str, int] = field(default_factory=dict)  # CID -> bytes
    already_gone: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # CID -> why
    local_files: int = 0  # files deleted from a stopped local stack's storage directory
    note: str = ""

    def lines(self) -> list[str]:
        out = [f"{self.note}" if self.note else f"🧹 storage {self.storage_url}"]
        out.append(
            f"   removed {len(self.removed)} objects ({_size(sum(self.removed.values()))}), "
            f"{len(self.already_gone)} already gone, {len(self.failed)} failed"
        )
        if self.local_files:
            out.append(f"   deleted {self.local_files} leftover object files under stack/storage/")
        out += [f"   ❌ {cid}: {why}" for cid, why in list(self.failed.items())[:10]]
        return out


async def cleanup(results_dir: str | Path, timeout_s: float = TIMEOUT_S) -> CleanupResult:
    """Removes the run's stored objects from its storage; see the module docstring."""
    results_dir = Path(results_dir)
    config = _config(results_dir)
    url = str(config.get("endpoints", {}).get("storage_url") or "").rstrip("/")
    if not url:
        raise WorkbenchError(
            "config.json", f"{results_dir} records no endpoints.storage_url", "nothing to clean"
        )
    kind = (config.get("storage") or {}).get("kind", "kubo")
    if kind != "kubo":  # only Kubo's RPC API unpins here
        raise WorkbenchError(
            "storage",
            f"the run stored its objects in {kind}, which cleanup does not unpin",
            "unpin them in that provider (the CIDs are the `stored` lists in events.jsonl)",
        )
    # Upload steps record their objects as they happen, so a flow cut short by a crash counts.
    objects = stored_objects(
        e for e in iter_events(results_dir / "events.jsonl") if e.get("kind") in ("flow", "step")
    )
    result = CleanupResult(url)
    if not objects:
        return result
    try:
        await _unpin_all(url, objects, result, timeout_s)
    except aiohttp.ClientConnectorError:
        if config.get("target_kind") != "local":
            raise WorkbenchError(
                "storage_url",
                f"{url} is unreachable; nothing was removed",
                "check the storage and your network, then run cleanup again",
            ) from None
        result.note = f"ℹ️  {STACK_GONE}: nothing to unpin."
        result.local_files = _remove_local_files(results_dir, objects)
    return result


async def _unpin_all(
    url: str, objects: dict[str, int], result: CleanupResult, timeout_s: float
) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await _unpin(http, url, next(iter(objects)), objects, result)  # fails fast if gone

        async def one(cid: str) -> None:
            async with gate:
                await _unpin(http, url, cid, objects, result)

        await asyncio.gather(*(one(cid) for cid in list(objects)[1:]))


async def _unpin(
    http: aiohttp.ClientSession, url: str, cid: str, objects: dict[str, int], result: CleanupResult
) -> None:
    try:
        async with http.post(f"{url}/api/v0/pin/rm", params={"arg": cid}) as resp:
            text = await resp.text()
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientError, TimeoutError) as e:
        result.failed[cid] = f"{type(e).__name__}: {e}"[:200]
        return
    if resp.status == 200:
        result.removed[cid] = objects[cid]
    elif resp.status == 404 or "not pinned" in text:  # ours: 404; Kubo: 500 "not pinned"
        result.already_gone[cid] = objects[cid]
    else:
        result.failed[cid] = f"HTTP {resp.status}: {text[:200]}"


def _remove_local_files(results_dir: Path, objects: dict[str, int]) -> int:
    """A stopped embedded stack keeps its storage directory inside the results dir."""
    storage = results_dir / "stack" / "storage"
    removed = 0
    for cid in objects:
        path = storage / cid
        if path.is_file():
            path.unlink()
            removed += 1
    return removed


def _config(results_dir: Path) -> dict[str, Any]:
    path = results_dir / "config.json"
    if not (results_dir / "events.jsonl").is_file() or not path.is_file():
        raise WorkbenchError(
            "results_dir",
            f"{results_dir} has no events.jsonl and config.json",
            "point at a run's outputs/<run-id>/ dir",
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise WorkbenchError(str(path), f"is not valid JSON ({e})", "restore it") from None


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"
