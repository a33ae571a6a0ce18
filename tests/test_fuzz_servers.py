"""Bad input everywhere: every stack server answers malformed, mistyped, oversize, forged or
random requests with a 4xx JSON error and keeps serving.

Property-based (hypothesis: arbitrary JSON values and mutations of a valid body) and a raw-bytes
loop, all against the one shared `local_stack`. Requests are plain blocking `http.client` calls
(one connection each), so a server that hangs fails the test by timeout instead of hanging it.
Example counts are bounded: the whole module takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import os
import random
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_utils import is_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.driver.flow import FlowSettings, Wallet, flow_context, run_flow
from workbench.stack.anvil import dev_key, start_anvil, wait_ready
from workbench.stack.components import start_component, stop_component
from workbench.stack.process import free_port, terminate
from workbench.stack.storage import cid_for
from workbench.vana import crypto, permission

pytestmark = pytest.mark.e2e
TIMEOUT_S = 15.0
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RAW_REQUESTS = int(os.environ.get("FUZZ_RAW", 150))  # per server, in the raw-bytes loop
STALE_NONCE = 7  # the relay bodies' nonce: a fresh user's is 0, so even a valid one is refused


# --- plain HTTP ---------------------------------------------------------------------------------


def call(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON or None if the body is not JSON)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT_S)
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


def post_json(base: str, path: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    return call(base, "POST", path, data, {"Content-Type": "application/json"})


def get(base: str, path: str, query: dict[str, str] | None = None) -> tuple[int, Any]:
    return call(base, "GET", path + ("?" + urllib.parse.urlencode(query) if query else ""))


def assert_4xx_json(status: int, body: Any, context: Any = None) -> None:
    assert 400 <= status < 500, (status, body, context)
    assert isinstance(body, dict) and body.get("success") is False, (body, context)
    assert isinstance(body.get("error"), str) and body["error"], (body, context)


def assert_serving(base: str) -> None:
    status, body = get(base, "/health")
    assert status == 200 and body["status"] == "ok"


# --- strategies ---------------------------------------------------------------------------------

# Values that broke servers before, or sit on a boundary: ids past uint256, digits int() refuses,
# digit strings longer than int() converts, brackets that look like JSON.
EDGE_STRINGS = ["²", "١٢", "1" * 5000, " 7 ", "0x10", "", "\x00", "[" * 3000, "-0", "1e3"]
EDGE_VALUES = [10**100, 2**256, 2**256 - 1, 2**255, -1, 0, 1.5, 1e308, True]
texts = st.text(max_size=40) | st.sampled_from(EDGE_STRINGS)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.sampled_from(EDGE_VALUES)
    | st.floats()
    | texts,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a JSON value, the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, (*prefix, i))
    return out


@st.composite
def mutated(draw, valid: dict) -> Any:
    """`valid` with one change: a value replaced, a key dropped or added, or a string garbled."""
    body = copy.deepcopy(valid)
    path = draw(st.sampled_from(paths_of(body)))
    if not path:
        return draw(json_values)
    *parents, last = path
    holder = body
    for key in parents:
        holder = holder[key]
    action = draw(st.sampled_from(["replace", "drop", "add", "garble"]))
    if action == "drop":
        del holder[last]
    elif action == "add" and isinstance(holder, dict):
        holder[draw(st.text(max_size=12))] = draw(json_values)
    elif action == "garble" and isinstance(holder[last], str):
        text = holder[last]
        cut = draw(st.integers(0, len(text)))
        holder[last] = text[:cut] + draw(st.text(max_size=8)) + text[cut + 1 :]
    else:
        holder[last] = draw(json_values)
    return body


# --- what the fuzz needs: one finished flow on the shared stack ---------------------------------


@pytest.fixture(scope="module")
def known(local_stack) -> dict[str, Any]:
    """A user's completed flow: its permission and operation ids, for valid and forged requests."""
    acct = Account.create()
    wallet = Wallet(0, acct.address, acct.key.to_0x_hex())
    settings_ = FlowSettings.from_profile(local_stack.profile)

    async def one() -> dict[str, Any]:
        async with flow_context(local_stack.endpoints, lambda e: None, settings_) as ctx:
            return await run_flow(ctx, wallet, b'{"a": 1}', flow_id=0, data_size="small")

    outcome = asyncio.run(one())
    assert outcome["ok"], outcome
    return {"wallet": wallet, **outcome}


@pytest.fixture(scope="module")
def relay_body(local_stack) -> dict[str, Any]:
    """A well-formed, correctly signed relay body that the contract would refuse (stale nonce)."""
    ep = local_stack.endpoints
    key = Account.create().key.to_0x_hex()
    server = get(ep.personal_server_url, "/identity", {"address": Account.from_key(key).address})
    server = server[1]["personal_server"]
    message = {
        "nonce": STALE_NONCE,
        "granteeId": ep.grantee_id,
        "grant": "ipfs://grant",
        "fileUrls": ["ipfs://file"],
        "schemaIds": [0],
        "serverAddress": server["address"],
        "serverUrl": ep.personal_server_url,
        "serverPublicKey": server["public_key"],
        "filePermissions": [[{"account": server["address"], "key": "00"}]],
    }
    typed = permission.typed_data(ep.chain_id, ep.contracts["DataPortabilityPermissions"], message)
    user = Account.from_key(key).address
    return {
        "typedData": typed,
        "signature": permission.sign(key, typed),
        "expectedUserAddress": user,
    }


UNUSED_ID = 10**12  # no test creates that many permissions


def steer(value: Any, known_id: int) -> Any:
    """A well-formed permission id other than `known_id` becomes UNUSED_ID (as the same type):
    the shared stack holds other tests' permissions, and the fuzz must not start operations on
    them. Everything malformed passes through untouched."""
    if isinstance(value, int) and not isinstance(value, bool) and value != known_id:
        return UNUSED_ID
    digits = value.strip() if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 78:  # what servers take
        return value if int(digits) == known_id else str(UNUSED_ID)
    return value


def operation_request(permission_id: Any, key: str = dev_key(1)) -> dict[str, str]:
    text = json.dumps({"permission_id": permission_id})
    return {"app_signature": crypto.personal_sign(key, text), "operation_request_json": text}


# --- storage ------------------------------------------------------------------------------------


def multipart(parts: list[tuple[str, bytes, dict[str, str]]], boundary: str = "fuzz") -> bytes:
    out = b""
    for name, data, extra in parts:
        headers = {"Content-Disposition": f'form-data; name="{name}"; filename="f"', **extra}
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out += f"--{boundary}\r\n{head}\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = {"Content-Type": "multipart/form-data; boundary=fuzz"}


@FUZZ
@given(
    body=st.binary(max_size=600),
    content_type=st.sampled_from(
        [
            "multipart/form-data; boundary=fuzz",
            "multipart/form-data",
            "multipart/mixed; boundary=fuzz",
            "multipart/form-data; boundary=",
            "application/json",
            "text/plain; charset=klingon",
            "",
        ]
    ),
)
def test_storage_add_refuses_garbage(local_stack, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, answer = call(local_stack.endpoints.storage_url, "POST", "/api/v0/add", body, headers)
    assert_4xx_json(status, answer)


@FUZZ
@given(
    name=st.sampled_from(["file", "upload", ""]),
    part_type=st.sampled_from(
        ["application/octet-stream", "multipart/mixed; boundary=inner", "text/plain; charset=x"]
    ),
    encoding=st.sampled_from([None, "base64", "gzip", "quoted-printable", "bogus"]),
    data=st.binary(max_size=300),
)
def test_storage_add_odd_parts(local_stack, name, part_type, encoding, data):
    """Odd but parseable multipart: a file is stored (200) or the request refused (4xx JSON)."""
    extra = {"Content-Type": part_type}
    if encoding:
        extra["Content-Transfer-Encoding"] = encoding
    body = multipart([(name, data, extra)])
    url = local_stack.endpoints.storage_url
    status, answer = call(url, "POST", "/api/v0/add", body, MULTIPART)
    if status == 200:
        assert name == "file" and answer["Hash"] == cid_for(data), answer
    else:
        assert_4xx_json(status, answer)


@FUZZ
@given(arg=st.text(max_size=80) | st.builds(lambda b: cid_for(b"never stored" + b), st.binary()))
def test_storage_reads_and_removes_refuse_bad_or_unknown_cids(local_stack, arg):
    url = local_stack.endpoints.storage_url
    query = urllib.parse.urlencode({"arg": arg})
    for method, path in (("POST", "/api/v0/cat"), ("POST", "/api/v0/pin/rm")):
        status, answer = call(url, method, f"{path}?{query}")
        assert_4xx_json(status, answer)
    status, answer = call(url, "GET", "/ipfs/" + urllib.parse.quote(arg, safe=""))
    assert_4xx_json(status, answer)


def test_storage_oversize_upload_is_413(local_stack):
    url = local_stack.endpoints.storage_url
    limit = int(local_stack.profile["storage"]["max_upload_bytes"])
    body = multipart([("file", b"x" * (limit + 1), {})])
    status, answer = call(url, "POST", "/api/v0/add", body, MULTIPART)
    assert status == 413 and answer["success"] is False


# --- API server ---------------------------------------------------------------------------------


@FUZZ
@given(address=texts | st.text(max_size=60))
def test_identity_refuses_bad_addresses(local_stack, address):
    ep = local_stack.endpoints
    for base in (ep.api_url, ep.personal_server_url):
        status, answer = get(base, "/identity", {"address": address})
        if status == 200:  # hypothesis may find a real address (e.g. 40 hex digits)
            assert address.startswith("0x") and is_address(address)
        else:
            assert_4xx_json(status, answer)


@FUZZ
@given(data=st.data())
def test_relay_refuses_mutated_bodies(local_stack, relay_body, data):
    body = data.draw(mutated(relay_body) | json_values)
    status, answer = post_json(local_stack.endpoints.api_url, "/api/relay", body)
    assert_4xx_json(status, answer)


def test_relay_refuses_forged_and_malleable_signatures(local_stack, relay_body):
    api = local_stack.endpoints.api_url
    stranger = permission.sign(Account.create().key.to_0x_hex(), relay_body["typedData"])
    sig = bytes.fromhex(relay_body["signature"][2:])
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = "0x" + (r + (n - s).to_bytes(32, "big") + bytes([55 - v])).hex()  # same signer
    cases = {
        stranger: {403},
        high_s: {400},  # recovers the same signer: refused up front, as the contract would
        relay_body["signature"][:-2] + "00": {400},  # v = 0: a second spelling, refused too
        "0x" + "00" * 65: {400},
        "0x1234": {400},
        "not hex": {400},
    }
    for signature, expected in cases.items():
        status, answer = post_json(api, "/api/relay", {**relay_body, "signature": signature})
        assert_4xx_json(status, answer)
        assert status in expected, (signature, answer)
    status, answer = post_json(api, "/api/relay", relay_body)  # genuine but stale
    assert status == 409 and "InvalidNonce" in answer["error"], answer


@FUZZ
@given(data=st.data())
def test_trusted_server_submit_refuses_bad_bodies(local_stack, known, data):
    valid = {"permissionId": known["permission_id"]}
    body = data.draw(mutated(valid) | json_values)
    if isinstance(body, dict) and "permissionId" in body:
        body["permissionId"] = steer(body["permissionId"], known["permission_id"])
    status, answer = post_json(local_stack.endpoints.api_url, "/api/trusted-server", body)
    if status == 200:  # still names the known permission: the same operation, idempotently
        assert answer["data"]["id"] == known["operation_id"], (body, answer)
    elif status == 404:
        # A well-formed id of no permission: the personal server's refusal passes through.
        assert body["permissionId"] in (UNUSED_ID, str(UNUSED_ID)), (body, answer)
        assert "personal server answered 404" in answer["error"], answer
    else:
        assert_4xx_json(status, answer)


@FUZZ
@given(data=st.data())
def test_trusted_server_poll_refuses_bad_bodies(local_stack, known, data):
    valid = {"operationId": known["operation_id"], "chainId": local_stack.endpoints.chain_id}
    body = data.draw(mutated(valid) | json_values)
    status, answer = post_json(local_stack.endpoints.api_url, "/api/trusted-server/poll", body)
    if status == 200:
        assert answer["data"]["status"] == "succeeded", (body, answer)
    else:
        assert_4xx_json(status, answer)


DEEP = 100_000  # nesting deeper than the C stack: once killed the API and personal servers


@pytest.mark.parametrize(
    "server, path",
    [
        ("api", "/api/relay"),
        ("api", "/api/trusted-server"),
        ("api", "/api/trusted-server/poll"),
        ("personal", "/operations"),
    ],
)
def test_deeply_nested_json_is_400(local_stack, server, path):
    """Built as text: encoding it from objects would overflow this process's own stack."""
    ep = local_stack.endpoints
    base = ep.api_url if server == "api" else ep.personal_server_url
    headers = {"Content-Type": "application/json"}
    for body in (b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP):
        status, answer = call(base, "POST", path, body, headers)
        assert_4xx_json(status, answer)
    if path == "/operations":  # the signed request inside the body is JSON text too
        inner = json.dumps({"app_signature": "0x00", "operation_request_json": "[" * DEEP})
        status, answer = call(base, "POST", path, inner.encode(), headers)
        assert_4xx_json(status, answer)
    assert_serving(base)


def test_api_oversize_bodies_are_413(local_stack):
    api = local_stack.endpoints.api_url
    big = json.dumps({"typedData": {}, "pad": "x" * (2 * 1024 * 1024)}).encode()
    for path in ("/api/relay", "/api/trusted-server", "/api/trusted-server/poll"):
        status, answer = call(api, "POST", path, big, {"Content-Type": "application/json"})
        assert status == 413 and answer["success"] is False, (path, answer)


# --- personal server ----------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_operations_refuse_bad_bodies(local_stack, known, data):
    valid = operation_request(known["permission_id"])
    body = data.draw(mutated(valid) | json_values)
    status, answer = post_json(local_stack.endpoints.personal_server_url, "/operations", body)
    if status == 202:
        assert answer["id"] == known["operation_id"], (body, answer)
    else:
        assert_4xx_json(status, answer)


@FUZZ
@given(permission_id=json_values)
def test_operations_refuse_bad_permission_ids_even_when_signed(local_stack, known, permission_id):
    """The app's genuine signature over a request naming anything but a known permission."""
    body = operation_request(steer(permission_id, known["permission_id"]))
    status, answer = post_json(local_stack.endpoints.personal_server_url, "/operations", body)
    if status == 202:
        assert answer["id"] == known["operation_id"], (body, answer)
    else:
        assert_4xx_json(status, answer)


def test_operations_refuse_forged_app_signatures(local_stack, known):
    url = local_stack.endpoints.personal_server_url
    pid = known["permission_id"]
    for key in (Account.create().key.to_0x_hex(), known["wallet"].private_key):
        status, answer = post_json(url, "/operations", operation_request(pid, key))
        assert status == 403, answer  # a stranger, and even the data's owner
    request = operation_request(pid)
    other = operation_request(pid + 1)  # a genuine signature, but over another request
    status, answer = post_json(
        url, "/operations", {**request, "app_signature": other["app_signature"]}
    )
    assert_4xx_json(status, answer)


@FUZZ
@given(op_id=st.text(min_size=1, max_size=120))
def test_unknown_operations_are_404(local_stack, known, op_id):
    path = "/operations/" + urllib.parse.quote(op_id, safe="")
    status, answer = call(local_stack.endpoints.personal_server_url, "GET", path)
    if status == 200:
        assert op_id == known["operation_id"]
    else:
        assert status in (404, 405) or 400 <= status < 500, (op_id, status)
        assert_4xx_json(status, answer)


# --- RPC proxy ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rpc_proxy(tmp_path_factory) -> Iterator[str]:
    """The fault proxy, unarmed, in front of a throwaway anvil: fuzzed calls that reach the node
    cannot disturb the shared stack's chain."""
    tmp = tmp_path_factory.mktemp("rpc_proxy")
    port = free_port()
    node = start_anvil(port, tmp / "anvil.log")
    try:
        asyncio.run(wait_ready(f"http://127.0.0.1:{port}", timeout_s=15, proc=node))
        config = {"upstream": f"http://127.0.0.1:{port}", "armed": False}
        proc, url = start_component("workbench.stack.rpc_proxy", config, log_path=tmp / "p.log")
        try:
            yield url
        finally:
            stop_component(proc)
    finally:
        terminate(node)


def assert_rpc_answer(status: int, body: Any, context: Any = None) -> None:
    """A JSON-RPC answer: 200 with a result or error (the node's), or a 4xx with an error.
    A notification (a call without an id) is answered by nothing, as JSON-RPC says."""
    assert status < 500, (status, body, context)
    calls = context if isinstance(context, list) else [context]
    if body is None and all(isinstance(c, dict) and "id" not in c for c in calls):
        return
    answers = body if isinstance(body, list) else [body]
    assert all(isinstance(a, dict) and ("result" in a or "error" in a) for a in answers), (
        body,
        context,
    )


RPC_CALL = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}


@FUZZ
@given(data=st.data())
def test_rpc_proxy_refuses_or_forwards_bad_calls(rpc_proxy, data):
    body = data.draw(mutated(RPC_CALL) | json_values | st.lists(mutated(RPC_CALL), max_size=3))
    status, answer = post_json(rpc_proxy, "/", body)
    assert_rpc_answer(status, answer, body)


def test_rpc_proxy_refuses_garbage_and_deep_json(rpc_proxy):
    headers = {"Content-Type": "application/json"}
    rng = random.Random("rpc")
    bodies = [random_body(rng) for _ in range(RAW_REQUESTS)]
    for body in [*bodies, b"[" * DEEP + b"]" * DEEP, b"", b"[]", b"null"]:
        status, answer = call(rpc_proxy, "POST", "/", body, headers)
        assert_rpc_answer(status, answer, body[:60])
    for body in (b"{}", b'{"armed": "yes"}', b"[" * DEEP):
        assert_4xx_json(*call(rpc_proxy, "POST", "/faults", body, headers))
    assert_serving(rpc_proxy)
    status, answer = post_json(rpc_proxy, "/", RPC_CALL)
    assert status == 200 and answer["result"].startswith("0x")


# --- raw bytes, random paths and content types, and broken HTTP --------------------------------

ROUTES = {
    "storage": ["/api/v0/add", "/api/v0/cat", "/api/v0/pin/rm", "/ipfs/x", "/health", "/metrics"],
    "api": ["/identity", "/api/relay", "/api/trusted-server", "/api/trusted-server/poll"],
    "personal": ["/identity", "/operations", "/operations/x"],
}
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "application/json; charset=nonsense",
    "multipart/form-data; boundary=b",
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/octet-stream",
    'garbage/garbage; x="unterminated',
    None,
]
PATH_CHARS = "abcxyz0123456789/._-~%?=&;:@!$'()*+,"


def random_path(rng: random.Random, routes: list[str]) -> str:
    if rng.random() < 0.6:
        path = rng.choice(routes)
        if rng.random() < 0.5:
            path += "?" + urllib.parse.urlencode(
                {rng.choice(["arg", "address", "x"]): rng.randbytes(8)}
            )
        return path
    tail = "".join(rng.choice(PATH_CHARS) for _ in range(rng.randint(0, 40)))
    return "/" + urllib.parse.quote(tail, safe=PATH_CHARS) + urllib.parse.quote(rng.randbytes(4))


def random_body(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.4:
        return rng.randbytes(rng.randint(0, 2000))
    if kind < 0.7:  # almost JSON
        text = json.dumps({"permissionId": rng.randint(-5, 5), "x": [1, {"y": None}]})
        cut = rng.randint(0, len(text))
        return text[:cut].encode() + rng.randbytes(rng.randint(0, 4))
    return b"--b\r\nContent-Disposition: form-data; name=file\r\n\r\n" + rng.randbytes(50)


@pytest.mark.parametrize("server", ["storage", "api", "personal"])
def test_raw_bytes_never_5xx(local_stack, server):
    ep = local_stack.endpoints
    base = {"storage": ep.storage_url, "api": ep.api_url, "personal": ep.personal_server_url}
    base = base[server]
    rng = random.Random(f"raw-{server}")
    for _ in range(RAW_REQUESTS):
        method = rng.choice(["GET", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
        path = random_path(rng, ROUTES[server])
        content_type = rng.choice(CONTENT_TYPES)
        headers = {"Content-Type": content_type} if content_type else {}
        body = random_body(rng) if method != "GET" or rng.random() < 0.2 else None
        status, answer = call(base, method, path, body, headers)
        context = (method, path, content_type, body and body[:80], status, answer)
        assert status < 500, context
        if status >= 400 and method != "HEAD":
            assert_4xx_json(status, answer, context)
    assert_serving(base)


BROKEN_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"GET /health HTTP/9.9\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/relay HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST /api/v0/add HTTP/1.1\r\nHost: x\r\nContent-Type: \x7f/x\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("server", ["storage", "api", "personal"])
def test_broken_http_is_refused_and_server_survives(local_stack, server):
    """aiohttp refuses these before any handler; the server makes even those answers JSON."""
    ep = local_stack.endpoints
    base = {"storage": ep.storage_url, "api": ep.api_url, "personal": ep.personal_server_url}
    url = urllib.parse.urlsplit(base[server])
    for raw in BROKEN_HTTP:
        with socket.create_connection((url.hostname, url.port), timeout=TIMEOUT_S) as sock:
            sock.sendall(raw)  # no half-close: aiohttp would drop the connection unanswered
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer, raw[:60]  # an answer, not a silently closed connection
        head, _, body = answer.partition(b"\r\n\r\n")
        assert_4xx_json(int(head.split(b" ", 2)[1]), json.loads(body), raw[:60])
    assert_serving(base[server])


# --- afterwards: everything still serves and valid requests still work --------------------------


def test_after_the_fuzz_valid_requests_still_work(local_stack, known):
    ep = local_stack.endpoints
    for base in (ep.storage_url, ep.api_url, ep.personal_server_url):
        assert_serving(base)
    data = b"after the fuzz"
    status, added = call(
        ep.storage_url, "POST", "/api/v0/add", multipart([("file", data, {})]), MULTIPART
    )
    assert status == 200 and added["Hash"] == cid_for(data)
    status, raw = call(ep.storage_url, "GET", f"/ipfs/{added['Hash']}")
    assert status == 200
    poll = {"operationId": known["operation_id"], "chainId": ep.chain_id}
    status, answer = post_json(ep.api_url, "/api/trusted-server/poll", poll)
    assert status == 200 and answer["data"]["status"] == "succeeded"
    status, answer = post_json(
        ep.api_url, "/api/trusted-server", {"permissionId": known["permission_id"]}
    )
    assert status == 200 and answer["data"]["id"] == known["operation_id"]
    status, answer = get(ep.api_url, "/identity", {"address": known["wallet"].address})
    assert status == 200 and answer["user_address"] == known["wallet"].address
