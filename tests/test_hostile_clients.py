"""Hostile and careless clients against every stack server: each category answered with 4xx
JSON (never a 5xx), `/health` answering throughout and every server's memory bounded.

Samples each category of the red-team pass of issue 11 (the longer run is
`benchmarks/hostile.py`): malformed request lines, huge headers and bodies, invalid UTF-8 and
lone surrogates, deep JSON, wrong content types and encodings, slowloris, 2,000 concurrent
connections, relay semantics abuse, storage traversal and invalid CIDs, and storage memory under
concurrent 10 MiB uploads. All traffic goes to 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.stack.api_server import _abi_floor
from workbench.stack.components import start_component, stop_component
from workbench.vana import crypto, permission

pytestmark = pytest.mark.e2e
TIMEOUT_S = 20.0
RSS_LIMIT_MB = 300  # every server, under everything here (the storage target of issue 11)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
JSON_ROUTES = {
    "api": ["/api/relay", "/api/trusted-server", "/api/trusted-server/poll"],
    "personal": ["/operations"],
    "rpc_proxy": ["/faults"],
}


# --- the servers, watched ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(local_stack) -> Iterator[dict[str, tuple[str, int]]]:
    """name -> (base URL, pid): the shared stack's servers plus an unarmed RPC proxy."""
    ep = local_stack.endpoints
    pids = local_stack.pids
    config = {"upstream": ep.rpc_url, "armed": False}
    log_path = local_stack.logs_dir / "hostile_rpc_proxy.log"
    proc, proxy = start_component("workbench.stack.rpc_proxy", config, log_path=log_path)
    try:
        yield {
            "storage": (ep.storage_url, pids["storage"]),
            "api": (ep.api_url, pids["api"]),
            "personal": (ep.personal_server_url, pids["personal"]),
            "rpc_proxy": (proxy, proc.pid),
        }
    finally:
        stop_component(proc)


LOG_NAMES = {
    "storage": "storage",
    "api": "api",
    "personal": "personal",
    "rpc_proxy": "hostile_rpc_proxy",
}


@pytest.fixture(scope="module", autouse=True)
def log_offsets(servers, local_stack) -> dict[str, tuple[Path, int]]:
    """Where each server's log stood before this module: what it logs afterwards is ours."""
    paths = {name: local_stack.logs_dir / f"{log}.log" for name, log in LOG_NAMES.items()}
    return {name: (path, path.stat().st_size) for name, path in paths.items()}


@contextmanager
def watched(servers: dict[str, tuple[str, int]]) -> Iterator[dict[str, Any]]:
    """Polls every server's /health and RSS while the block runs; afterwards asserts each one
    always answered 200 and stayed under RSS_LIMIT_MB. Yields the record (worst latency, peaks)."""
    record: dict[str, Any] = {"worst_health_s": {}, "peak_rss_mb": {}, "health_failures": []}
    stop = threading.Event()

    def poll() -> None:
        procs = {name: psutil.Process(pid) for name, (_, pid) in servers.items()}
        while not stop.is_set():
            for name, (url, _) in servers.items():
                t0 = time.perf_counter()
                try:
                    status, body = call(url, "GET", "/health")
                    if status != 200 or body.get("status") != "ok":
                        record["health_failures"].append((name, status))
                except OSError as e:
                    record["health_failures"].append((name, repr(e)))
                took = time.perf_counter() - t0
                worst = record["worst_health_s"]
                worst[name] = max(worst.get(name, 0.0), took)
                rss = procs[name].memory_info().rss / 2**20
                record["peak_rss_mb"][name] = max(record["peak_rss_mb"].get(name, 0.0), rss)
            stop.wait(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        yield record
    finally:
        stop.set()
        watcher.join(TIMEOUT_S)
    assert not record["health_failures"], record
    assert all(mb < RSS_LIMIT_MB for mb in record["peak_rss_mb"].values()), record


# --- plain HTTP, and raw bytes -----------------------------------------------------------------


def address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port


def call(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, Any]:
    """(status, JSON body or None) of one request on its own connection."""
    conn = http.client.HTTPConnection(*address(url), timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, None


def post_json(url: str, path: str, body: Any, headers: dict | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return call(url, "POST", path, data, {"Content-Type": "application/json", **(headers or {})})


def exchange(url: str, raw: bytes) -> tuple[int, Any]:
    """Sends `raw` on a fresh connection and reads the answer until the server closes."""
    with socket.create_connection(address(url), timeout=TIMEOUT_S) as sock:
        try:
            sock.sendall(raw)
        except OSError:  # the server answered and closed before taking it all: read the answer
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), json.loads(body)
    except (IndexError, ValueError):
        return 0, answer[:200]


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_4xx_json(status: int, body: Any, context: Any = None, *, expect: int | None = None):
    assert 400 <= status < 500, (status, body, context)
    assert expect is None or status == expect, (status, body, context)
    assert isinstance(body, dict) and body.get("success") is False, (body, context)
    assert isinstance(body.get("error"), str) and body["error"], (body, context)


# --- malformed request lines, huge headers ------------------------------------------------------

BROKEN = [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello
    b"GET /health HTTP/9.9\r\n\r\n",
    b"GET /health\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\xc3\xa9T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20_000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
    b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


@pytest.mark.parametrize("name", ["storage", "api", "personal", "rpc_proxy"])
def test_malformed_request_lines_and_huge_headers(servers, name):
    url = servers[name][0]
    with watched(servers):
        for raw in BROKEN:
            status, body = exchange(url, raw)
            assert_4xx_json(status, body, raw[:60])
        # A request line or header over aiohttp's 8 KiB is a size refusal, as bodies are.
        assert exchange(url, BROKEN[5])[0] == 413 and exchange(url, BROKEN[6])[0] == 413


# --- huge bodies --------------------------------------------------------------------------------


def chunked(data: bytes, size: int = 1 << 20) -> bytes:
    out = b"".join(
        f"{len(data[i : i + size]):x}\r\n".encode() + data[i : i + size] + b"\r\n"
        for i in range(0, len(data), size)
    )
    return out + b"0\r\n\r\n"


def test_huge_bodies_are_413(servers):
    big = b'{"pad": "' + b"x" * (2 << 20) + b'"}'
    with watched(servers):
        for name, paths in JSON_ROUTES.items():
            for path in paths:
                status, body = post_json(servers[name][0], path, big)
                assert_4xx_json(status, body, path, expect=413)
                # Chunked: no Content-Length to refuse up front; cut at the limit while read.
                headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
                raw = request_bytes("POST", path, headers, chunked(big))
                assert_4xx_json(*exchange(servers[name][0], raw), path, expect=413)
        storage = servers["storage"][0]
        # 50 MB chunked upload and a multipart line of 1 MiB (once a 500: LineTooLong).
        form = {"Content-Type": "multipart/form-data; boundary=b", "Transfer-Encoding": "chunked"}
        part = b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n"
        raw = request_bytes("POST", "/api/v0/add", form, chunked(part + b"x" * (50 << 20)))
        assert_4xx_json(*exchange(storage, raw), "50 MB chunked", expect=413)
        line = b"--b\r\nContent-Disposition: form-data; name=" + b"f" * (1 << 20) + b"\r\n\r\nx"
        raw = request_bytes("POST", "/api/v0/add", form, chunked(line))
        assert_4xx_json(*exchange(storage, raw), "long multipart line", expect=413)


# --- invalid UTF-8 and lone surrogates ----------------------------------------------------------


def test_invalid_utf8_and_lone_surrogates_are_400(servers, local_stack):
    api, personal = servers["api"][0], servers["personal"][0]
    chain_id = local_stack.endpoints.chain_id
    with watched(servers):
        # Once a 500: the surrogate reached urllib.parse.quote in the poll's proxying.
        body = b'{"operationId": "\\udfff", "chainId": %d}' % chain_id
        assert_4xx_json(*post_json(api, "/api/trusted-server/poll", body), expect=400)
        for path in JSON_ROUTES["api"]:
            assert_4xx_json(*post_json(api, path, b'{"operationId": "\xff\xfe"}'), expect=400)
            assert_4xx_json(*post_json(api, path, b'{"a": "\\ud800x"}'), expect=400)
        surrogate = b'{"app_signature": "0x", "operation_request_json": "\\udc00"}'
        assert_4xx_json(*post_json(personal, "/operations", surrogate), expect=400)
        # Undecodable percent-escapes in paths and queries are text, not errors.
        for path in ("/identity?address=%ED%B3%BF", "/operations/%ED%B3%BF%FF"):
            assert_4xx_json(*call(personal, "GET", path))
        assert_4xx_json(*call(servers["storage"][0], "POST", "/api/v0/cat?arg=%ED%B3%BF%FF"))


# --- deep JSON ----------------------------------------------------------------------------------


def test_deep_json_is_400(servers):
    deep = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000]
    with watched(servers):
        for name, paths in JSON_ROUTES.items():
            for path in paths:
                for body in deep:
                    assert_4xx_json(*post_json(servers[name][0], path, body), path, expect=400)
        proxy = servers["rpc_proxy"][0]
        status, body = post_json(proxy, "/", deep[0])
        assert status == 400 and body["error"]["code"] == -32700


# --- wrong content types and encodings ----------------------------------------------------------


def test_wrong_content_types_and_encodings_are_415_or_413(servers, local_stack):
    api = servers["api"][0]
    poll = json.dumps({"operationId": "nope", "chainId": local_stack.endpoints.chain_id}).encode()
    cases = [
        ({"Content-Type": "text/plain"}, poll, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, poll, 415),
        ({"Content-Type": "application/json; charset=klingon"}, poll, 415),
        ({"Content-Encoding": "gzip"}, b"not gzip at all", 415),  # once a 500
        ({"Content-Encoding": "gzip"}, gzip.compress(poll)[:-6], 415),
        ({"Content-Encoding": "br"}, poll, 415),
        ({"Content-Encoding": "compress"}, poll, 415),
        ({"Content-Encoding": "gzip"}, gzip.compress(b" " * (64 << 20)), 413),  # a bomb
    ]
    with watched(servers):
        for headers, body, expected in cases:
            status, answer = post_json(api, "/api/trusted-server/poll", body, headers)
            assert_4xx_json(status, answer, headers, expect=expected)
        # A well-formed gzip body is read: the unknown operation is a plain 404.
        status, answer = post_json(
            api, "/api/trusted-server/poll", gzip.compress(poll), {"Content-Encoding": "gzip"}
        )
        assert status == 404, answer
        storage = servers["storage"][0]
        form = b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\nx\r\n--b--\r\n"
        for headers in (
            {"Content-Type": "application/json"},
            {"Content-Type": "multipart/form-data; boundary=b", "Content-Encoding": "gzip"},
        ):
            status, answer = call(storage, "POST", "/api/v0/add", gzip.compress(form), headers)
            assert_4xx_json(status, answer, headers, expect=415)


# --- slowloris ----------------------------------------------------------------------------------


def test_slow_clients_are_dropped_and_idle_keepalive_is_kept(servers, tmp_path):
    """Silent mid-request (half a request line, half a body) -> closed after the 10 s read
    timeout; a client dripping a byte a second -> closed at the request deadline, and one that
    never sends -> at the idle timeout (on a server started here with short ones); an idle
    keep-alive connection -> kept, and reusable."""
    config = {"request_timeout_s": 3, "idle_timeout_s": 6, "max_upload_bytes": 1 << 20}
    proc, drip_url = start_component("workbench.stack.storage", config, log_path=tmp_path / "s.log")
    try:
        with watched(servers):
            asyncio.run(_slowloris(servers, drip_url))
    finally:
        stop_component(proc)


HALF_BODY = {  # a request whose body stops short: the server waits for the rest
    "storage": ("/api/v0/add", "multipart/form-data; boundary=b", b"--b\r\nContent-Dispo"),
    "api": ("/api/relay", "application/json", b'{"typedData": {'),
    "personal": ("/operations", "application/json", b'{"app_sig'),
    "rpc_proxy": ("/", "application/json", b'{"jsonrpc": '),
}


async def _slowloris(servers: dict[str, tuple[str, int]], drip_url: str) -> None:
    silent = []
    for name, (url, _) in servers.items():
        path, kind, part = HALF_BODY[name]
        half = request_bytes("POST", path, {"Content-Type": kind, "Content-Length": "1000"}, part)
        silent += [(url, start) for start in (b"GET /hea", half) for _ in range(10)]
    keep = [await _keepalive(url) for url, _ in servers.values()]
    t0 = time.monotonic()
    closed = await asyncio.gather(
        *(_silent(url, start) for url, start in silent),
        *(_drip(drip_url) for _ in range(10)),
        *(_silent(drip_url, b"") for _ in range(10)),
    )
    silent_s, drip_s, idle_s = closed[: len(silent)], closed[-20:-10], closed[-10:]
    assert all(9 <= s <= 14 for s in silent_s), sorted(silent_s)  # 10 s, swept once a second
    assert all(2.5 <= s <= 6 for s in drip_s), sorted(drip_s)  # 3 s deadline despite the drip
    assert all(5 <= s <= 9 for s in idle_s), sorted(idle_s)  # 6 s idle timeout
    assert time.monotonic() - t0 >= 9
    for reader, writer in keep:  # idle all along, then reused: still served
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), TIMEOUT_S)).startswith(b"HTTP/1.1 200")
        writer.close()


async def _keepalive(url: str):
    reader, writer = await asyncio.open_connection(*address(url))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return reader, writer


async def _silent(url: str, start: bytes) -> float:
    """Seconds until the server closes a connection that sent `start` and then nothing."""
    reader, writer = await asyncio.open_connection(*address(url))
    t0 = time.monotonic()
    writer.write(start)
    await asyncio.wait_for(reader.read(), TIMEOUT_S)  # b"" (or a 408 answer) when closed
    writer.close()
    return time.monotonic() - t0


async def _drip(url: str) -> float:
    reader, writer = await asyncio.open_connection(*address(url))
    t0 = time.monotonic()
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100
    for byte in request:
        writer.write(bytes([byte]))
        try:
            await asyncio.wait_for(reader.read(), 1.0)
            break  # closed by the server
        except TimeoutError:
            continue
    writer.close()
    return time.monotonic() - t0


# --- 2,000 concurrent connections ---------------------------------------------------------------


def test_two_thousand_concurrent_connections(servers):
    with watched(servers) as record:
        answered = asyncio.run(_crowd(servers["api"][0], 2000))
    assert answered == 2000
    assert record["peak_rss_mb"]["api"] < RSS_LIMIT_MB


async def _crowd(url: str, n: int) -> int:
    """Opens `n` connections at once, then sends /health on each: how many got a 200."""
    sem = asyncio.Semaphore(500)  # connects in flight; all `n` stay open together

    async def connect():
        async with sem:
            return await asyncio.wait_for(asyncio.open_connection(*address(url)), TIMEOUT_S)

    conns = await asyncio.gather(*(connect() for _ in range(n)))
    try:
        for _, writer in conns:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), TIMEOUT_S) for reader, _ in conns)
        )
    finally:
        for _, writer in conns:
            writer.close()
    return sum(a.startswith(b"HTTP/1.1 200") for a in answers)


# --- relay semantics abuse ----------------------------------------------------------------------

ZERO_ADDRESS = "0x" + "00" * 20


def relay_body(stack, key: str, **message: Any) -> dict[str, Any]:
    ep = stack.endpoints
    base = {
        "nonce": 0,
        "granteeId": ep.grantee_id,
        "grant": "ipfs://grant",
        "fileUrls": ["ipfs://f"],
        "schemaIds": [0],
        "serverAddress": ZERO_ADDRESS,
        "serverUrl": "",
        "serverPublicKey": "",
        "filePermissions": [[]],
    }
    typed = permission.typed_data(
        ep.chain_id, ep.contracts["DataPortabilityPermissions"], {**base, **message}
    )
    return {
        "typedData": typed,
        "signature": permission.sign(key, typed),
        "expectedUserAddress": Account.from_key(key).address,
    }


def malleated(signature: str) -> tuple[str, str]:
    """(the high-s twin of `signature`, the same with v as 0/1): both recover the same signer."""
    raw = bytes.fromhex(signature[2:])
    s = int.from_bytes(raw[32:64], "big")
    high = raw[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    return "0x" + high.hex(), signature[:-2] + f"{raw[64] - 27:02x}"


def test_relay_semantics_abuse_is_4xx_before_any_send(servers, local_stack):
    api = servers["api"][0]
    key = Account.create().key.to_0x_hex()
    server = Account.create().address
    many = [[{"account": server, "key": "00"} for _ in range(10_000)]]
    cases = {
        # (body, status, what the error must name)
        "grant of 200 KB": (relay_body(local_stack, key, grant="g" * 200_000), 413, "grant"),
        "grant of 100 KB": (relay_body(local_stack, key, grant="g" * 100_000), 413, "grant"),
        "10,000 file permissions": (
            relay_body(local_stack, key, filePermissions=many),
            413,
            "filePermissions",
        ),
        # Under every bound judged up front, over the block in the simulation (once a 502).
        "grant of 45 KB": (relay_body(local_stack, key, grant="g" * 45_000), 413, "grant"),
        # Out of gas inside the registry's calls: a bare revert to the simulation, still a 4xx.
        "400 files": (
            relay_body(
                local_stack,
                key,
                fileUrls=[f"ipfs://abuse-{i}" for i in range(400)],
                schemaIds=[0] * 400,
                filePermissions=[[]] * 400,
            ),
            None,
            "",
        ),
        "lengths disagree": (relay_body(local_stack, key, schemaIds=[0, 0]), 422, "SchemaIds"),
    }
    genuine = relay_body(local_stack, key, nonce=5)
    high_s, low_v = malleated(genuine["signature"])
    cases["high s"] = ({**genuine, "signature": high_s}, 400, "upper half")
    cases["v = 0/1"] = ({**genuine, "signature": low_v}, 400, "not 27 or 28")
    foreign = json.loads(json.dumps(genuine))
    foreign["typedData"]["domain"]["chainId"] = 1
    cases["foreign chain"] = (foreign, 400, "chainId")
    with watched(servers):
        before = call(api, "GET", "/metrics")[1]
        for name, (body, status, names) in cases.items():
            code, answer = post_json(api, "/api/relay", body)
            assert_4xx_json(code, answer, name, expect=status)
            assert names in answer["error"], (name, answer)
        after = call(api, "GET", "/metrics")[1]
    assert after["relayed"] == before["relayed"]  # nothing was sent
    assert after["relay_errors"] == before["relay_errors"]  # and no RPC is blamed


@settings(max_examples=30, deadline=None)
@given(
    files=st.integers(0, 4),
    readers=st.integers(0, 5),
    text=st.text(max_size=70),
)
def test_the_up_front_calldata_bound_never_exceeds_the_encoding(files, readers, text):
    """The API server refuses a relay whose calldata bound is over the limit without encoding
    it: the bound must never be more than the real encoding."""
    reader = {"account": "0x" + "ab" * 20, "key": text}
    message = {
        "nonce": 1,
        "granteeId": 2,
        "grant": text or "g",
        "fileUrls": [text] * files,
        "schemaIds": [7] * files,
        "serverAddress": "0x" + "cd" * 20,
        "serverUrl": text,
        "serverPublicKey": text,
        "filePermissions": [[reader] * readers] * files,
    }
    valid = permission.Validated.of(permission.typed_data(1, "0x" + "ef" * 20, message))
    struct = valid.contract_input()
    encoded = abi_encode([STRUCT_TYPE], [struct])
    assert _abi_floor(struct) <= len(encoded)


STRUCT_TYPE = (
    "(uint256,uint256,string,string[],uint256[],address,string,string,(address,string)[][])"
)


def test_personal_server_refuses_malleated_app_signatures(servers, fuzz_operation):
    url = servers["personal"][0]
    genuine = fuzz_operation
    high_s, low_v = malleated(genuine["app_signature"])
    for signature, names in ((high_s, "upper half"), (low_v, "not 27 or 28")):
        status, answer = post_json(url, "/operations", {**genuine, "app_signature": signature})
        assert_4xx_json(status, answer, expect=400)
        assert names in answer["error"], answer


@pytest.fixture
def fuzz_operation() -> dict[str, str]:
    """The app's genuine signed request for a permission that does not exist (a 404 if valid)."""
    from workbench.stack.anvil import dev_key

    text = json.dumps({"permission_id": 10**12})
    return {"app_signature": crypto.personal_sign(dev_key(1), text), "operation_request_json": text}


# --- storage traversal and invalid CIDs ---------------------------------------------------------

TRAVERSALS = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "/etc/passwd",
    "bafkrei../../storage.log",
    "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
    "BAFKREIFZJUT3TE2NHYEKKLSS27NH3K72YSCO7Y32KOAO5EEI66WOF36N5E",
    "b" + "a" * 5000,
    ".tmp-0123",
    "",
]


def test_storage_traversal_and_invalid_cids(servers):
    storage = servers["storage"][0]
    with watched(servers):
        for arg in TRAVERSALS:
            quoted = urllib.parse.quote(arg, safe="")
            for method, path in (
                ("POST", f"/api/v0/cat?arg={quoted}"),
                ("POST", f"/api/v0/pin/rm?arg={quoted}"),
                ("GET", f"/ipfs/{quoted}"),
                ("GET", f"/ipfs/{arg}"),
            ):
                status, answer = call(storage, method, path)
                assert 400 <= status < 500 and b"root:" not in json.dumps(answer).encode(), (
                    path,
                    status,
                )


# --- storage memory under concurrent 10 MiB uploads ---------------------------------------------


def test_storage_memory_is_bounded_under_concurrent_big_uploads(servers):
    url, pid = servers["storage"]
    proc = psutil.Process(pid)
    start_mb = proc.memory_info().rss / 2**20
    with watched(servers) as record:
        cids = asyncio.run(_uploads(url, 40, 10 << 20))
    assert len(set(cids)) == 40
    assert record["peak_rss_mb"]["storage"] < start_mb + 150, (start_mb, record["peak_rss_mb"])
    query = "&".join(f"arg={cid}" for cid in cids)
    status, answer = call(url, "POST", f"/api/v0/pin/rm?{query}")
    assert status == 200 and answer["BytesFreed"] == 40 * (10 << 20)
    assert proc.memory_info().rss / 2**20 < start_mb + 50


async def _uploads(url: str, n: int, size: int) -> list[str]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(i: int) -> str:
            data = i.to_bytes(4, "big") + bytes(size - 4)
            form = aiohttp.FormData()
            form.add_field("file", data, filename="big", content_type="application/octet-stream")
            async with session.post(f"{url}/api/v0/add", data=form) as resp:
                assert resp.status == 200, await resp.text()
                return (await resp.json())["Hash"]

        return await asyncio.gather(*(one(i) for i in range(n)))


# --- last: what all of the above left in the servers' logs ---------------------------------------


def test_refusals_log_one_line_and_never_a_traceback(servers, log_offsets):
    marker = f"hostile-{uuid.uuid4().hex}"
    for url, _ in servers.values():
        assert_4xx_json(*call(url, "GET", f"/{marker}"), expect=404)
    for name, (path, offset) in log_offsets.items():
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
        assert "Traceback" not in text, (name, text[text.index("Traceback") - 500 :][:3000])
        assert text.count(marker) == 1, (name, text[-2000:])
        assert "refused an unparsable request" in text and "dropped a slow client" in text, name
