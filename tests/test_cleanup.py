"""Storage hygiene: a run's uploads are counted in summary.json and removed by `cleanup`."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from workbench.__main__ import main
from workbench.analysis.results import flows_frame
from workbench.analysis.summary import _stored
from workbench.driver.cleanup import STACK_GONE, cleanup
from workbench.errors import WorkbenchError
from workbench.events import stored_objects
from workbench.stack.process import free_port


async def upload(storage_url: str, blobs: list[bytes]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        stored = []
        for blob in blobs:
            form = aiohttp.FormData()
            form.add_field("file", blob, filename="x", content_type="application/octet-stream")
            async with http.post(f"{storage_url}/api/v0/add", data=form) as resp:
                stored.append({"cid": (await resp.json())["Hash"], "bytes": len(blob)})
        return stored


async def exists(storage_url: str, cid: str) -> bool:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{storage_url}/api/v0/cat", params={"arg": cid}) as resp,
    ):
        return resp.status == 200


def results_dir(tmp_path: Path, storage_url: str, flows: list[list[dict]], kind="local") -> Path:
    """A minimal results dir: config.json with the storage URL, one flow event per upload list."""
    path = tmp_path / "run"
    path.mkdir(exist_ok=True)
    config = {"target_kind": kind, "endpoints": {"storage_url": storage_url}}
    (path / "config.json").write_text(json.dumps(config))
    lines = [
        json.dumps({"kind": "flow", "flow_id": i, "ok": True, "t": i, "duration_s": 1, "stored": s})
        for i, s in enumerate(flows)
    ]
    (path / "events.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_stored_objects_are_distinct_by_cid():
    grant = {"cid": "bafkgrant", "bytes": 220}
    events = [
        {"kind": "flow", "stored": [{"cid": "bafka", "bytes": 1000}, grant]},
        {"kind": "flow", "stored": [{"cid": "bafkb", "bytes": 10}, grant]},
        {"kind": "flow", "status": "failed"},  # failed before any upload
        {"kind": "flow", "stored": float("nan")},  # as pandas fills a missing column
    ]
    assert stored_objects(events) == {"bafka": 1000, "bafkb": 10, "bafkgrant": 220}
    flows = flows_frame([{**e, "t": 0, "duration_s": 1, "ok": True} for e in events])
    assert _stored(flows) == {"stored_objects": 3, "stored_bytes": 1230}
    assert _stored(flows_frame([])) == {"stored_objects": 0, "stored_bytes": 0}


@pytest.mark.e2e
def test_cleanup_removes_a_runs_objects_and_is_idempotent(local_stack, tmp_path, capsys):
    url = local_stack.endpoints.storage_url
    blobs = [os.urandom(n) for n in (1000, 2000, 3000)]
    stored = asyncio.run(upload(url, blobs))
    path = results_dir(tmp_path, url, [stored[:2], [stored[1], stored[2]]])  # one shared object

    first = asyncio.run(cleanup(path))
    assert first.removed == {s["cid"]: s["bytes"] for s in stored} and not first.failed
    assert not any(asyncio.run(exists(url, s["cid"])) for s in stored)

    assert main(["cleanup", str(path)]) == 0  # again: everything is already gone, no error
    out = capsys.readouterr().out
    assert "removed 0 objects" in out and "3 already gone" in out


def test_cleanup_explains_a_stopped_local_stack(tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    path = results_dir(
        tmp_path, dead, [[{"cid": "bafkx", "bytes": 5}, {"cid": "bafky", "bytes": 7}]]
    )
    leftover = path / "stack" / "storage"
    leftover.mkdir(parents=True)
    (leftover / "bafkx").write_bytes(b"12345")
    assert main(["cleanup", str(path)]) == 0
    out = capsys.readouterr().out
    assert STACK_GONE in out and "deleted 1 leftover object files" in out
    assert not (leftover / "bafkx").exists()


def test_cleanup_of_an_unreachable_remote_storage_is_an_error(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    path = results_dir(tmp_path, dead, [[{"cid": "bafkx", "bytes": 5}]], kind="remote")
    with pytest.raises(WorkbenchError, match="unreachable"):
        asyncio.run(cleanup(path))


def test_cleanup_needs_a_results_dir(tmp_path):
    with pytest.raises(WorkbenchError, match="results_dir"):
        asyncio.run(cleanup(tmp_path))


def test_uploads_of_a_flow_cut_short_still_count():
    events = [  # a killed flow: its upload step happened, its outcome never came
        {"kind": "step", "step": "upload_file", "stored": [{"cid": "bafyA", "bytes": 10}]},
        {"kind": "flow", "stored": [{"cid": "bafyB", "bytes": 20}, {"cid": "bafyA", "bytes": 10}]},
    ]
    assert stored_objects(events) == {"bafyA": 10, "bafyB": 20}
