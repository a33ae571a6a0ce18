"""The app's API server: relays users' signed permissions and proxies the personal server.

`python -m workbench.stack.api_server`, config (`WORKBENCH_COMPONENT`, JSON):
  port (0 = any free), rpc_url, chain_id, personal_server_url,
  contracts {DataPortabilityPermissions: address, ...},
  storage_url (Kubo RPC API the app stores grant files in; optional: without it the grant-file
  routes answer 503), gateway_url (default `<storage_url>/ipfs`: the URLs answered),
  relayer {confirm_poll_s (0.25), fee_ttl_s (1.0), stuck_after_blocks (3), stuck_after_s (15),
           max_replacements (4)}: a tx the chain passed over for that many blocks and seconds is
           replaced, at most that many times (see `workbench.stack.relayer`),
  rpc_timeout_s (10), personal_server_timeout_s (10): every downstream call has its deadline,
  max_calldata_bytes (131072): the largest transaction a relay may make (geth's txpool refuses
  transactions over 128 KiB, so a bigger one could never be mined on a geth-based chain).
Secrets (`WORKBENCH_SECRETS`): app_key (the grantee wallet), relayer_keys (list of keys).

Routes (shapes as Vana's app server; errors `{"success": false, "error"}`):
  GET  /health, GET /metrics (relayer gauges)
  GET  /identity?address=0x..          the personal server's answer
  POST /api/relay                      the SDK's unified relayer protocol or the upstream
                                       mock's format (see workbench.vana.relay); errors in both
                                       shapes: {"type": "error", "success": false, "error"}
  POST /api/ipfs/upload                multipart field `file` -> {"success": true, "url"} (a
                                       gateway URL; the SDK's `storeGrantFile(grantFile, appUrl)`)
  POST /api/trusted-server             {"permissionId": N} -> {"success": true, "data": {"id"}}
  POST /api/trusted-server/poll        {"operationId", "chainId"}
                                       -> {"success": true, "data": {"status", "result"}}
A relay's validation, ABI encoding and signature recovery run in worker threads (seconds of CPU
for a payload of thousands of entries), each once, so the event loop keeps answering.

Status codes: 400 malformed body, foreign domain or unsupported operation; 403 signature not from
expectedUserAddress; 409 replayed/pending nonce; 413 a relay too large for one transaction (judged
before any RPC when its size or a lower bound of its gas shows it, else by the simulation), naming
the largest field; 422 the contract would revert otherwise; 404 unknown operation;
the personal server's own refusals (400/403/404/409/422) and a full queue (503) pass through;
502 the personal server, the storage or the RPC failed (504 when it timed out): a downstream
fault, not ours.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from eth_utils import is_address, to_checksum_address
from web3 import AsyncWeb3

from workbench.errors import WorkbenchError
from workbench.secrets import redact
from workbench.stack.relayer import (
    DEFAULT_MAX_REPLACEMENTS,
    DEFAULT_STUCK_AFTER_BLOCKS,
    DEFAULT_STUCK_AFTER_S,
    Relayer,
    RelayError,
)
from workbench.stack.server import (
    ApiError,
    field,
    int_field,
    json_body,
    make_app,
    query_arg,
    run,
    secrets,
)
from workbench.vana import chain, permission, relay
from workbench.vana.crypto import canonical_signature, personal_sign
from workbench.vana.relay import UnifiedRequest
from workbench.vana.retry import SERVER_CALLS, connection_lost, retrying

APP_KEY = web.AppKey("api_server", object)
DEFAULT_TIMEOUT_S = 10.0
MAX_GRANT_UPLOAD = 256 * 1024  # /api/ipfs/upload takes grant files: a few hundred bytes each
DEFAULT_MAX_CALLDATA = 128 * 1024
TX_GAS, ZERO_BYTE_GAS, DATA_BYTE_GAS = 21_000, 4, 16  # intrinsic gas (EIP-2028)
NEW_SLOT_GAS = 20_000  # an SSTORE from zero: each 32 bytes of the grant, stored in a new slot


def operation_request_json(permission_id: int) -> str:
    """The exact text the app signs (EIP-191) for the personal server: `{"permission_id":5}`.

    As the SDK's `createOperation` writes it (`JSON.stringify`: no whitespace, the id a JSON
    number). The signature covers these bytes, so the format is pinned here and tested.
    """
    return json.dumps({"permission_id": int(permission_id)}, separators=(",", ":"))


class ApiServer:
    def __init__(self, config: dict[str, Any], app_key: str, relayer_keys: list[str]):
        self.config = config
        self.app_key = app_key
        self.relayer_keys = relayer_keys
        self.chain_id = int(config["chain_id"])
        self.permissions_address = to_checksum_address(
            config["contracts"]["DataPortabilityPermissions"]
        )
        self.personal_url = config["personal_server_url"].rstrip("/")
        self.personal_timeout = aiohttp.ClientTimeout(
            total=float(config.get("personal_server_timeout_s", DEFAULT_TIMEOUT_S))
        )
        self.storage_url = (config.get("storage_url") or "").rstrip("/")
        self.gateway_url = (config.get("gateway_url") or f"{self.storage_url}/ipfs").rstrip("/")
        self.max_calldata = int(config.get("max_calldata_bytes", DEFAULT_MAX_CALLDATA))
        self.block_gas_limit = 0  # read at start
        self.checks = ThreadPoolExecutor(2, thread_name_prefix="relay-check")
        self.session: aiohttp.ClientSession | None = None
        self.relayer: Relayer | None = None
        self.w3: AsyncWeb3 | None = None

    def gauges(self) -> dict[str, int]:
        return self.relayer.gauges() if self.relayer else {}

    # --- lifecycle

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=self.personal_timeout)
        rpc_timeout = float(self.config.get("rpc_timeout_s", DEFAULT_TIMEOUT_S))
        self.w3 = chain.make_web3(self.config["rpc_url"], timeout_s=rpc_timeout)
        # web3's validation middleware asks eth_chainId before each estimate and send (1,741 of
        # them at 1,000 users); the chain id is checked once here and set in every tx.
        if "validation" in self.w3.middleware_onion:
            self.w3.middleware_onion.remove("validation")
        actual = await self.w3.eth.chain_id
        if actual != self.chain_id:
            raise WorkbenchError(
                "chain_id", f"rpc_url serves chain {actual}, not {self.chain_id}", "fix the config"
            )
        self.block_gas_limit = int((await self.w3.eth.get_block("latest"))["gasLimit"])
        settings = self.config.get("relayer") or {}
        self.relayer = Relayer(
            self.w3,
            self.permissions_address,
            self.relayer_keys,
            confirm_poll_s=float(settings.get("confirm_poll_s", 0.25)),
            fee_ttl_s=float(settings.get("fee_ttl_s", 1.0)),
            stuck_after_s=float(settings.get("stuck_after_s", DEFAULT_STUCK_AFTER_S)),
            stuck_after_blocks=int(settings.get("stuck_after_blocks", DEFAULT_STUCK_AFTER_BLOCKS)),
            max_replacements=int(settings.get("max_replacements", DEFAULT_MAX_REPLACEMENTS)),
        )
        await self.relayer.start()

    async def stop(self, app: web.Application) -> None:
        if self.relayer:
            await self.relayer.close()
        if self.session:
            await self.session.close()
        if self.w3:
            await chain.close_web3(self.w3)
        self.checks.shutdown(wait=False, cancel_futures=True)

    # --- routes

    async def identity(self, request: web.Request) -> web.Response:
        user = _address(query_arg(request, "address"), "address")
        status, body = await self._personal("GET", "/identity", params={"address": user})
        if status != 200:
            raise _downstream(status, body)
        return web.json_response(body)

    async def relay(self, request: web.Request) -> web.Response:
        """Either relay protocol (see `workbench.vana.relay`); errors answer in both shapes."""
        try:
            body = await json_body(request, {})
            if relay.is_unified(body):
                return web.json_response(await self._unified(relay.parse_unified(body)))
            field(body, "typedData", dict)
            field(body, "signature", str)
            field(body, "expectedUserAddress", str)
            tx_hash = await self._relay_signed(
                body["typedData"], body["signature"], body["expectedUserAddress"]
            )
            return web.json_response({"success": True, "transactionHash": tx_hash})
        except relay.RelayRequestError as e:
            return _relay_error(400, str(e))
        except ApiError as e:
            return _relay_error(e.status, e.message)
        except web.HTTPRequestEntityTooLarge:
            return _relay_error(413, "request body too large")

    async def _unified(self, req: UnifiedRequest) -> dict[str, Any]:
        if req.kind == "direct":  # parse_unified let only storeGrantFile through
            return relay.direct_answer({"url": await self._store_grant_file(req.params)})
        if not isinstance(req.typed_data, dict):
            raise ApiError(400, "field 'typedData' must be an object")
        if not isinstance(req.signature, str):
            raise ApiError(400, "field 'signature' must be a string")
        tx_hash = await self._relay_signed(req.typed_data, req.signature, req.expected_user)
        return relay.signed_answer(tx_hash)

    async def _relay_signed(self, typed_data: dict, signature: str, expected: str | None) -> str:
        """Checks and relays a signed ServerFilesAndPermission; the tx hash. `expected` (the
        user the client says signed) is optional in the unified protocol."""
        expected = None if expected is None else _address(expected, "expectedUserAddress")
        loop = asyncio.get_running_loop()
        typed, signer, struct, data = await loop.run_in_executor(
            self.checks, self._check_relay, typed_data, signature
        )
        if expected is not None and signer != expected:
            raise ApiError(403, f"signature is by {signer}, not expectedUserAddress {expected}")
        assert self.relayer is not None  # set by start(), before any request is served
        try:
            return await self.relayer.relay(signer, struct, signature, data)
        except RelayError as e:
            if e.status == 413:  # the simulation ran out of gas: say which field to shrink
                raise ApiError(413, f"{_largest_field(typed)} is too large: {e.message}") from None
            raise ApiError(e.status, e.message) from None

    # --- grant files: stored in the app's storage, answered as gateway URLs

    async def _store_grant_file(self, grant: Any) -> str:
        """Stores a grant file as the SDK's relayer handler does (`JSON.stringify`)."""
        if not isinstance(grant, dict):
            raise ApiError(400, "field 'params' must be the grant file (a JSON object)")
        for name, kind in (("grantee", str), ("operation", str), ("parameters", dict)):
            if not isinstance(grant.get(name), kind):
                raise ApiError(400, f"grant file field '{name}' must be {kind.__name__}")
        text = json.dumps(grant, separators=(",", ":"), ensure_ascii=False)
        return await self._store(text.encode(), "grant.json")

    async def ipfs_upload(self, request: web.Request) -> web.Response:
        data, name = await _file_part(request)
        return web.json_response({"success": True, "url": await self._store(data, name)})

    async def _store(self, data: bytes, name: str) -> str:
        """Uploads to the storage's `/api/v0/add`; the object's gateway URL."""
        if not self.storage_url:
            raise ApiError(503, "this API server has no storage_url configured")
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        assert self.session is not None  # set in start(), before any request is served
        try:
            async with self.session.post(f"{self.storage_url}/api/v0/add", data=form) as resp:
                answer = await resp.json(content_type=None) if resp.status == 200 else None
                status = resp.status
        except TimeoutError:
            raise ApiError(504, "storage timed out") from None
        except (aiohttp.ClientError, ValueError) as e:
            raise ApiError(502, f"storage failed: {type(e).__name__}: {e}") from None
        cid = answer.get("Hash") if isinstance(answer, dict) else None
        if not isinstance(cid, str) or not cid:
            raise ApiError(413 if status == 413 else 502, f"storage answered {status}")
        return f"{self.gateway_url}/{cid}"

    def _check_relay(self, typed_data: Any, signature: str) -> tuple[dict, str, tuple, str]:
        """(typed data, signer, contract input, calldata) of a relay, validated and encoded
        once; 400 for bad input, 413 for a payload no block could take. CPU-heavy: runs in a
        worker thread."""
        try:
            valid = permission.Validated.of(typed_data)
        except ValueError as e:
            raise ApiError(400, f"invalid typedData: {e}") from None
        self._check_domain(valid.typed["domain"])
        try:
            canonical_signature(signature)
        except ValueError as e:
            raise ApiError(400, f"invalid {e}") from None
        struct = valid.contract_input()
        self._check_length(valid.typed, _abi_floor(struct))  # huge: refused before encoding it
        assert self.relayer is not None  # set by start(), before any request is served
        data = self.relayer.calldata(struct, signature)
        calldata = bytes.fromhex(data[2:])
        self._check_length(valid.typed, len(calldata))
        self._check_gas(valid.typed, calldata)  # all before recovery, the costliest part
        try:
            signer = valid.recover(signature)
        except ValueError as e:
            raise ApiError(400, f"invalid {e}") from None
        return valid.typed, signer, struct, data

    def _check_length(self, typed: dict[str, Any], calldata_bytes: int) -> None:
        """413 before any RPC for calldata (or a lower bound of it) over `max_calldata_bytes`."""
        if calldata_bytes > self.max_calldata:
            raise ApiError(
                413,
                f"{_largest_field(typed)} is too large: the transaction would carry "
                f"{calldata_bytes:,}+ bytes of calldata, at most {self.max_calldata:,} are relayed",
            )

    def _check_gas(self, typed: dict[str, Any], calldata: bytes) -> None:
        """413 before any RPC when a lower bound of the relay's gas (intrinsic gas plus storing
        the grant) is over the block gas limit: no block could ever take it."""
        zeros = calldata.count(0)
        grant_words = (len(typed["message"]["grant"].encode()) + 31) // 32
        floor = (
            TX_GAS
            + ZERO_BYTE_GAS * zeros
            + DATA_BYTE_GAS * (len(calldata) - zeros)
            + NEW_SLOT_GAS * grant_words
        )
        if floor > self.block_gas_limit:
            raise ApiError(
                413,
                f"{_largest_field(typed)} is too large: the relay needs at least {floor:,} gas, "
                f"a block holds {self.block_gas_limit:,}",
            )

    def _check_domain(self, domain: dict[str, Any]) -> None:
        """The message must be for our Permissions contract on our chain, or it cannot verify."""
        if domain["chainId"] != self.chain_id:
            raise ApiError(
                400, f"typedData.domain.chainId {domain['chainId']} is not {self.chain_id}"
            )
        if domain["verifyingContract"] != self.permissions_address:
            raise ApiError(
                400,
                f"typedData.domain.verifyingContract {domain['verifyingContract']} is not "
                f"the Permissions contract {self.permissions_address}",
            )

    async def submit_operation(self, request: web.Request) -> web.Response:
        body = await json_body(request, {})
        permission_id = int_field(body, "permissionId", minimum=1)
        text = operation_request_json(permission_id)
        payload = {
            "app_signature": personal_sign(self.app_key, text),
            "operation_request_json": text,
        }
        status, answer = await self._personal("POST", "/operations", json=payload)
        if status not in (200, 201, 202) or not isinstance(answer.get("id"), str):
            raise _downstream(status, answer)
        return web.json_response({"success": True, "data": {"id": answer["id"]}})

    async def poll_operation(self, request: web.Request) -> web.Response:
        body = await json_body(request, {"operationId": str})
        chain_id = int_field(body, "chainId")
        if chain_id != self.chain_id:
            raise ApiError(400, f"chainId {chain_id} is not {self.chain_id}")
        op_id = body["operationId"]
        if not op_id or len(op_id) > 200:
            raise ApiError(400, "field 'operationId' must be 1..200 characters")
        path = f"/operations/{urllib.parse.quote(op_id, safe='')}"
        status, answer = await self._personal("GET", path)
        if status == 404:
            raise ApiError(404, f"no operation {op_id[:80]!r}")
        if status != 200 or "status" not in answer:
            raise _downstream(status, answer)
        data = {"status": answer["status"], "result": answer.get("result")}
        if answer.get("error"):  # why a failed operation failed, for the client's record
            data["error"] = answer["error"]
        return web.json_response({"success": True, "data": data})

    async def _personal(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict]:
        """One call to the personal server: (status, JSON object); transport faults -> 502/504.

        Every call is idempotent (a resubmitted permission gets its operation back), so a lost
        connection (a restart, a closed keep-alive) is retried; its answers, 503 included,
        pass to the client, which decides whether to wait and try again."""
        url = self.personal_url + path

        async def call(_attempt: int) -> tuple[int, dict]:
            assert self.session is not None  # set by start(), before any request is served
            async with self.session.request(method, url, **kwargs) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except (ValueError, RecursionError):  # not JSON, or nested absurdly deep
                    answer = None
                return resp.status, answer if isinstance(answer, dict) else {}

        try:
            return await retrying(call, SERVER_CALLS, connection_lost)
        except TimeoutError:
            limit = self.personal_timeout.total
            raise ApiError(504, f"personal server timed out after {limit:g} s") from None
        except aiohttp.ClientError as e:
            raise ApiError(502, f"personal server unreachable: {type(e).__name__}: {e}") from None


def _relay_error(status: int, message: str) -> web.Response:
    return web.json_response(relay.error_answer(redact(message)), status=status)


async def _file_part(request: web.Request) -> tuple[bytes, str]:
    """The multipart field `file`: (bytes, file name); 400 when absent or malformed."""
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                return await _read_limited(part), part.filename or "upload"
            await part.release()
    except (
        ValueError,
        KeyError,
        AssertionError,
        HttpProcessingError,
    ) as e:  # e.g. bad part headers
        raise ApiError(400, f"malformed multipart body: {e}") from None
    raise ApiError(400, "missing multipart field 'file'")


async def _read_limited(part: BodyPartReader) -> bytes:
    # Multipart is streamed, so the app's client_max_size does not bound it: this does.
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > MAX_GRANT_UPLOAD:
            raise ApiError(413, f"upload larger than {MAX_GRANT_UPLOAD} bytes")
    return bytes(data)


def _abi_floor(value: Any) -> int:
    """A lower bound of `value`'s ABI encoding in bytes: a word per value, and one per array or
    tuple (its length or offset). Cheap next to encoding a payload of 10,000 entries."""
    if isinstance(value, list | tuple):
        return 32 + sum(_abi_floor(v) for v in value)
    return 32


def _largest_field(typed: dict[str, Any]) -> str:
    """The message field with the most data, named as the client sent it."""
    message = typed["message"]
    name = max(message, key=lambda k: len(json.dumps(message[k], default=str)))
    return f"typedData.message.{name}"


def _address(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.startswith("0x") or not is_address(value):
        raise ApiError(400, f"field '{name}' must be a 0x-prefixed 20-byte address")
    return to_checksum_address(value)


# The personal server's refusals of the request itself pass through with their status, so a
# client does not retry a permanent answer (unknown permission, not the grantee); a full queue
# stays 503, worth retrying; any other failure downstream is a 502.
PASSED_THROUGH = frozenset({400, 403, 404, 409, 422, 503})


def _downstream(status: int, body: dict) -> ApiError:
    detail = body.get("error") or "unexpected answer"
    passed = status if status in PASSED_THROUGH else 502
    return ApiError(passed, f"personal server answered {status}: {str(detail)[:300]}")


def _secrets(values: dict[str, Any]) -> tuple[str, list[str]]:
    app_key, relayer_keys = values.get("app_key"), values.get("relayer_keys")
    if not isinstance(app_key, str) or not app_key:
        raise WorkbenchError("WORKBENCH_SECRETS.app_key", "missing", "pass the app's private key")
    if not isinstance(relayer_keys, list) or not relayer_keys:
        raise WorkbenchError(
            "WORKBENCH_SECRETS.relayer_keys", "missing or empty", "pass a list of funded keys"
        )
    return app_key, relayer_keys


def build_app(config: dict[str, Any], app_key: str, relayer_keys: list[str]) -> web.Application:
    for key in ("rpc_url", "chain_id", "personal_server_url", "contracts"):
        if not config.get(key):
            raise WorkbenchError(f"api_server.{key}", "missing", "set it in the component config")
    if not config["contracts"].get("DataPortabilityPermissions"):
        raise WorkbenchError(
            "api_server.contracts.DataPortabilityPermissions", "missing", "pass its address"
        )
    server = ApiServer(config, app_key, relayer_keys)
    app = make_app(server.gauges)
    app[APP_KEY] = server
    app.on_startup.append(server.start)
    app.on_cleanup.append(server.stop)
    app.router.add_get("/identity", server.identity)
    app.router.add_post("/api/relay", server.relay)
    app.router.add_post("/api/ipfs/upload", server.ipfs_upload)
    app.router.add_post("/api/trusted-server", server.submit_operation)
    app.router.add_post("/api/trusted-server/poll", server.poll_operation)
    return app


def main() -> None:
    app_key, relayer_keys = _secrets(secrets())
    run(lambda config: build_app(config, app_key, relayer_keys))


if __name__ == "__main__":
    main()
