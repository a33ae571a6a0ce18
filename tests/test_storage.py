"""The storage server as a real process: Kubo-shaped add/cat/gateway, CIDs, limits, bad input."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import urllib.request

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.stack.components import (
    ComponentStartError,
    astart_component,
    start_component,
    stop_component,
)
from workbench.stack.storage import cid_for, parse_cid

MAX_UPLOAD = 4096


def cid_by_hand(data: bytes) -> str:
    """CIDv1 from the specs, written out: multibase 'b' (base32 lower, no padding) of
    <varint version 1><varint codec raw 0x55><multihash: 0x12 sha2-256, 0x20 length, digest>."""
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode("ascii").lower().replace("=", "")


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("storage")
    config = {"data_dir": str(tmp / "data"), "max_upload_bytes": MAX_UPLOAD}
    proc, url = start_component("workbench.stack.storage", config, log_path=tmp / "storage.log")
    yield url
    assert stop_component(proc) == 0  # SIGTERM is a clean exit


async def add(session, url, data: bytes, field="file", filename="blob.bin"):
    form = aiohttp.FormData()
    form.add_field(field, data, filename=filename, content_type="application/octet-stream")
    async with session.post(f"{url}/api/v0/add", data=form) as resp:
        return resp.status, await resp.json()


async def test_cid_matches_known_vector():
    # The well-known CIDv1 raw of "hello world", as `ipfs add --cid-version=1` prints it.
    expected = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert cid_by_hand(b"hello world") == expected
    assert cid_for(b"hello world") == expected
    assert parse_cid(f"/ipfs/{expected}") == expected


@given(st.binary(max_size=256))
def test_cid_roundtrip_for_any_bytes(data):
    assert parse_cid(cid_for(data)) == cid_for(data) == cid_by_hand(data)


@given(st.text(max_size=80))
def test_parse_cid_rejects_garbage_with_value_error_only(text):
    try:
        parse_cid(text)
    except ValueError:
        pass


@pytest.mark.e2e
async def test_add_cat_gateway_roundtrip(storage):
    data = b'{"name": "alice", "bytes": "' + bytes(range(32, 127)) + b'"}'
    async with aiohttp.ClientSession() as s:
        status, added = await add(s, storage, data)
        assert status == 200
        assert added == {"Name": "blob.bin", "Hash": cid_by_hand(data), "Size": str(len(data))}
        cid = added["Hash"]
        for arg in (cid, f"/ipfs/{cid}"):
            async with s.post(f"{storage}/api/v0/cat", params={"arg": arg}) as resp:
                assert resp.status == 200 and await resp.read() == data
        async with s.get(f"{storage}/ipfs/{cid}") as resp:
            assert resp.status == 200 and await resp.read() == data


@pytest.mark.e2e
async def test_concurrent_identical_uploads_store_one_object(storage):
    data = b"same bytes from many clients"
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(add(s, storage, data) for _ in range(8)))
        assert {r[1]["Hash"] for r in results} == {cid_by_hand(data)}
        assert all(status == 200 for status, _ in results)
        async with s.get(f"{storage}/ipfs/{cid_by_hand(data)}") as resp:
            assert await resp.read() == data


@pytest.mark.e2e
async def test_remove_deletes_and_updates_gauges(storage):
    data = b"to be removed"
    async with aiohttp.ClientSession() as s:
        _, added = await add(s, storage, data)
        before = await (await s.get(f"{storage}/metrics")).json()
        async with s.post(f"{storage}/api/v0/pin/rm", params={"arg": added["Hash"]}) as resp:
            freed = {"Pins": [added["Hash"]], "BytesFreed": len(data)}
            assert resp.status == 200 and await resp.json() == freed
        after = await (await s.get(f"{storage}/metrics")).json()
        assert after["objects"] == before["objects"] - 1
        assert after["bytes"] == before["bytes"] - len(data)
        async with s.get(f"{storage}/ipfs/{added['Hash']}") as resp:
            assert resp.status == 404


@pytest.mark.e2e
async def test_oversize_upload_is_413_and_server_keeps_serving(storage):
    async with aiohttp.ClientSession() as s:
        errors_before = (await (await s.get(f"{storage}/metrics")).json())["upload_errors"]
        status, body = await add(s, storage, b"x" * (MAX_UPLOAD + 1))
        assert status == 413 and body["success"] is False
        status, _ = await add(s, storage, b"x" * MAX_UPLOAD)  # exactly the limit is fine
        assert status == 200
        metrics = await (await s.get(f"{storage}/metrics")).json()
        assert metrics["upload_errors"] == errors_before + 1
        assert (await (await s.get(f"{storage}/health")).json())["status"] == "ok"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "arg, status",
    [
        (cid_by_hand(b"never uploaded"), 404),
        ("bafy-not-a-cid", 400),
        ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", 400),  # CIDv0: not what we store
        ("b" + "a" * 58, 400),  # base32, but not a raw sha2-256 CIDv1
    ],
)
async def test_unknown_or_malformed_cid_is_4xx_json(storage, arg, status):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{storage}/api/v0/cat", params={"arg": arg}) as resp:
            assert resp.status == status
            assert (await resp.json())["success"] is False
        async with s.get(f"{storage}/ipfs/{arg}") as resp:
            assert resp.status == status


@pytest.mark.e2e
async def test_malformed_requests_are_4xx_json(storage):
    async with aiohttp.ClientSession() as s:
        # Not multipart at all: a media type storage does not take.
        async with s.post(f"{storage}/api/v0/add", data=b"plain") as resp:
            assert resp.status == 415 and "multipart/form-data" in (await resp.json())["error"]
        # Multipart without a boundary parameter.
        headers = {"Content-Type": "multipart/form-data"}
        async with s.post(f"{storage}/api/v0/add", data=b"--x\r\n", headers=headers) as resp:
            assert resp.status == 400
        # Multipart with the wrong field name.
        status, body = await add(s, storage, b"data", field="upload")
        assert status == 400 and "'file'" in body["error"]
        # cat without arg.
        async with s.post(f"{storage}/api/v0/cat") as resp:
            assert resp.status == 400
        async with s.get(f"{storage}/no/such/route") as resp:
            assert resp.status == 404 and (await resp.json())["success"] is False
        async with s.get(f"{storage}/api/v0/add") as resp:
            assert resp.status == 405 and (await resp.json())["success"] is False
        status, _ = await add(s, storage, b"still serving")
        assert status == 200


@pytest.mark.e2e
def test_start_component_reports_a_dying_process(tmp_path):
    config = {"max_upload_bytes": "not a number"}
    with pytest.raises(ComponentStartError, match="exited with code") as err:
        start_component("workbench.stack.storage", config, log_path=tmp_path / "bad.log")
    assert "ValueError" in str(err.value)  # the log tail is in the message


@pytest.mark.e2e
def test_start_component_times_out_with_the_log(tmp_path):
    # An RPC endpoint that accepts connections and never answers keeps the server from READY.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = {
            "rpc_url": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "storage_url": "http://127.0.0.1:9",
            "contracts": {
                name: "0x" + "11" * 20
                for name in (
                    "DataPortabilityPermissions",
                    "DataPortabilityGrantees",
                    "DataRegistry",
                )
            },
        }
        with pytest.raises(ComponentStartError, match="not ready after 1 s"):
            start_component(
                "workbench.stack.personal_server",
                config,
                {"server_seed": "ab" * 32},
                log_path=tmp_path / "slow.log",
                timeout_s=1,
            )


@pytest.mark.e2e
def test_astart_component_outlives_the_event_loop_that_started_it(tmp_path):
    # PR_SET_PDEATHSIG follows the forking thread: a fork on an executor thread would kill the
    # server as soon as asyncio.run() shuts its executor down.
    proc, url = asyncio.run(
        astart_component("workbench.stack.storage", log_path=tmp_path / "s.log")
    )
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
            assert resp.status == 200
        assert proc.poll() is None
    finally:
        assert stop_component(proc) == 0
