"""The personal server: decrypts a user's files for a permitted app and runs inference on them.

`python -m workbench.stack.personal_server`, config (`WORKBENCH_COMPONENT`, JSON):
  port (0 = any free), rpc_url, chain_id, storage_url,
  contracts {DataPortabilityPermissions, DataPortabilityGrantees, DataRegistry: address},
  inference {backend: simulated|openai, latency_s: [lo, hi], workers, max_queue (0 = unbounded),
             timeout_s (one operation's inference, default 120),
             openai: {base_url, model, api_key_env, timeout_s}},
  faults {fail_rate, timeout_rate, max_queue} (optional): injected inference faults, one draw per
             operation (see inference.FaultyBackend); a non-zero max_queue overrides inference's,
  decrypt_workers (threads, default 2), fetch_timeout_s (default 30), seed (latency RNG),
  data_dir: where the operations' SQLite database lives (see `workbench.stack.operations`);
             without it they are kept in memory and a restart loses them,
  keep_finished (default 10000): finished operations kept readable; older ones are forgotten
             (their poll answers 404), so a long run does not keep every result ever made.
Secrets (`WORKBENCH_SECRETS`): server_seed (hex). Each user gets their own server key,
keccak256(seed || user address) as a secp256k1 scalar, so users cannot read each other's files.

Routes:
  GET  /identity?address=0x..  the server address and public key for that user
  POST /operations             {"app_signature", "operation_request_json": "{\"permission_id\": N}"}
                               -> 202 {"kind": "OperationCreated", "id", "status", ...}
                               (app_signature canonical: low s, v 27 or 28, as the contracts
                               require; a malleated copy is refused with 400)
  GET  /operations/{id}        {"kind": "OperationStatus", "id", "status", "result", ...}
Gauges: submitted, queue_depth, in_flight, done (succeeded), failed, timed_out (inference over
timeout_s), rejected (503: queue full), injected_failures, injected_timeouts, resumed and
resume_failed (operations a restart found unfinished, see below).

Submission is idempotent per permission while its operation is live or succeeded: a retried
submit gets the same operation. Once it failed (or the server stopped it), a new submit starts a
fresh operation: a failure here is the server's, not the permission's, and a client that decides to
retry should be able to. The failed operation stays readable under its id, and the workbench's
flow never resubmits after a poll answered `failed` (it is final for that flow).

Operations survive a restart of this process (stopped or killed): they are rows in SQLite under
`data_dir`. Decrypted files are never stored, so on start every operation the last process left
unfinished is prepared again (permission read from the chain, files fetched and decrypted) and
queued under its old id; one that cannot be (permission gone, storage down) ends `failed` with
the reason, so a client polling it gets an answer instead of a 404 or an endless `starting`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import aiohttp
from aiohttp import web
from coincurve import PrivateKey
from eth_utils import is_address, keccak, to_checksum_address
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError

from workbench.errors import WorkbenchError
from workbench.stack.inference import Backend, FaultyBackend, InferenceError, make_backend
from workbench.stack.operations import OperationStore, StoredOperation
from workbench.stack.server import (
    ApiError,
    int_field,
    json_body,
    make_app,
    query_arg,
    run,
    secrets,
)
from workbench.vana import chain, views
from workbench.vana.crypto import decrypt_file, ecies_decrypt, recover_personal
from workbench.vana.retry import SERVER_CALLS, connection_lost, retrying

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SERVER_KEY = web.AppKey("personal_server", object)
OPERATION_KIND = "llm_inference"
DEFAULT_INFERENCE_TIMEOUT_S = 120.0
DEFAULT_KEEP_FINISHED = 10_000
RESUBMITTABLE = frozenset({"failed", "canceled"})  # end states a new submit replaces
CONTRACTS = ("DataPortabilityPermissions", "DataPortabilityGrantees", "DataRegistry")
RESUME_CONCURRENCY = 8  # operations prepared again at once after a restart
log = logging.getLogger("workbench.stack.personal_server")


# --- per-user server identities -----------------------------------------------------------------


@dataclass(frozen=True)
class ServerIdentity:
    private_key: str = field(repr=False)
    address: str
    public_key: str  # uncompressed, 0x04…


def user_server_key(seed: bytes, user_address: str) -> str:
    """keccak256(seed || user address bytes) mapped onto [1, n-1], the valid secp256k1 scalars."""
    digest = keccak(seed + bytes.fromhex(user_address.removeprefix("0x")))
    scalar = int.from_bytes(digest, "big") % (SECP256K1_N - 1) + 1
    return "0x" + scalar.to_bytes(32, "big").hex()


class Identities:
    """The server key of each user, derived on first use and kept (derivation costs ~0.1 ms)."""

    def __init__(self, seed: bytes):
        self._seed = seed
        self.for_user = lru_cache(maxsize=100_000)(self._derive)

    def _derive(self, user_address: str) -> ServerIdentity:
        key = user_server_key(self._seed, user_address)
        public = PrivateKey(bytes.fromhex(key[2:])).public_key.format(compressed=False)
        address = to_checksum_address(keccak(public[1:])[-20:])
        return ServerIdentity(key, address, "0x" + public.hex())


def parse_address(text: str, name: str = "address") -> str:
    if not isinstance(text, str) or not text.startswith("0x") or not is_address(text):
        raise ApiError(400, f"'{name}' must be a 0x-prefixed 20-byte address")
    return to_checksum_address(text)


# --- operations ---------------------------------------------------------------------------------


@dataclass
class Operation:
    """Queued work: the decrypted files live only here, in memory (its state is in the store)."""

    id: str
    permission_id: int
    grantee: str
    prompt: str
    params: dict
    files: list[bytes] | None  # plaintexts, dropped once inference ran
    status: str = "starting"
    created_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class PermissionRecord:
    grantor: str
    grantee: str
    grant_url: str
    file_ids: tuple[int, ...]


def open_sealed_file(server_key: str, sealed_password: str, blob: bytes) -> bytes:
    """ECIES-opens the file password, then OpenPGP-decrypts the file (CPU: run it in the pool)."""
    password = ecies_decrypt(server_key, sealed_password).decode("utf-8")
    return decrypt_file(blob, password)


class PersonalServer:
    """Checks permissions on chain, decrypts files and feeds an inference worker pool."""

    def __init__(self, config: dict[str, Any], seed: bytes):
        self.config = config
        self.identities = Identities(seed)
        inference = config.get("inference") or {}
        self.faults = config.get("faults") or {}
        self.workers_n = int(inference.get("workers", 4))
        # A fault plan's max_queue (0: none) bounds the queue tighter than the config's own.
        max_queue = self.faults.get("max_queue") or inference.get("max_queue") or 0
        self.queue: asyncio.Queue[Operation] = asyncio.Queue(int(max_queue))
        self.timeout_s = float(inference.get("timeout_s", DEFAULT_INFERENCE_TIMEOUT_S))
        if not self.timeout_s > 0:
            raise WorkbenchError("inference.timeout_s", "must be > 0", "use seconds, e.g. 120")
        self.keep_finished = int(config.get("keep_finished", DEFAULT_KEEP_FINISHED))
        if self.keep_finished < 1:
            raise WorkbenchError("keep_finished", "must be >= 1", "use e.g. 10000")
        self.store = OperationStore(config.get("data_dir"), self.keep_finished)
        self.preparing: dict[int, asyncio.Future[Operation]] = {}
        self.grantee_addresses: dict[int, str] = {}  # grantees never change address: cache
        self.submitted = self.in_flight = self.done = self.failed = 0
        self.timed_out = self.rejected = self.resumed = self.resume_failed = 0
        self.fetch_timeout = aiohttp.ClientTimeout(total=float(config.get("fetch_timeout_s", 30)))
        # Threads suffice: workbench.vana.crypto's S2K (nearly all of the cost) runs in hashlib,
        # which releases the GIL, so decryption neither blocks the loop nor serialises.
        self.pool = ThreadPoolExecutor(int(config.get("decrypt_workers", 2)), "decrypt")
        self.workers: list[asyncio.Task] = []
        self.resuming: asyncio.Task | None = None
        self.session: aiohttp.ClientSession | None = None  # both set on startup, inside the loop
        self.w3: AsyncWeb3 | None = None

    def gauges(self) -> dict[str, int]:
        backend = getattr(self, "backend", None)
        injected = backend if isinstance(backend, FaultyBackend) else None
        return {
            "submitted": self.submitted,
            "queue_depth": self.queue.qsize(),
            "in_flight": self.in_flight,
            "done": self.done,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "rejected": self.rejected,
            "injected_failures": injected.failures if injected else 0,
            "injected_timeouts": injected.timeouts if injected else 0,
            "resumed": self.resumed,
            "resume_failed": self.resume_failed,
        }

    # --- lifecycle

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession()
        self.w3 = chain.make_web3(self.config["rpc_url"])
        # web3's validation middleware asks eth_chainId twice per eth_call: 3x the RPC load on
        # the node under test. We check the chain id once below instead.
        if "validation" in self.w3.middleware_onion:
            self.w3.middleware_onion.remove("validation")
        self.permissions = self._contract("DataPortabilityPermissions")
        self.grantees = self._contract("DataPortabilityGrantees")
        self.registry = self._contract("DataRegistry")
        await self._check_chain_id()
        seed = self.config.get("seed")
        rng = random.Random(seed)
        self.backend: Backend = make_backend(self.config.get("inference") or {}, self.session, rng)
        if self.faults.get("fail_rate") or self.faults.get("timeout_rate"):
            fault_rng = random.Random(None if seed is None else f"{seed}/faults")
            self.backend = FaultyBackend(self.backend, self.faults, fault_rng)
        self.workers = [asyncio.create_task(self._work()) for _ in range(self.workers_n)]
        # In the background: the server answers (polls see `starting`) while it catches up.
        self.resuming = asyncio.create_task(self.resume())

    def _contract(self, name: str):
        assert self.w3 is not None  # called from start(), after it is set
        return chain.contract(self.w3, name, self.config["contracts"][name])

    async def _check_chain_id(self) -> None:
        expected = self.config.get("chain_id")
        assert self.w3 is not None  # called from start(), after it is set
        actual = await self.w3.eth.chain_id
        if expected is not None and int(expected) != actual:
            raise WorkbenchError(
                "chain_id",
                f"rpc_url serves chain {actual}, not {expected}",
                "point rpc_url at the chain the contracts live on",
            )

    async def stop(self, app: web.Application) -> None:
        """Unfinished operations stay unfinished in the store: the next start resumes them."""
        tasks = [*self.workers, *([self.resuming] if self.resuming else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.store.close()
        if self.session:
            await self.session.close()
        if self.w3:
            await chain.close_web3(self.w3)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- routes

    async def identity(self, request: web.Request) -> web.Response:
        user = parse_address(query_arg(request, "address"))
        ident = self.identities.for_user(user)
        return web.json_response(
            {
                "kind": "Identity",
                "user_address": user,
                "personal_server": {
                    "kind": "PersonalServer",
                    "address": ident.address,
                    "public_key": ident.public_key,
                },
            }
        )

    async def create_operation(self, request: web.Request) -> web.Response:
        body = await json_body(request, {"app_signature": str, "operation_request_json": str})
        permission_id = _permission_id(body["operation_request_json"])
        signer = _signer(body["operation_request_json"], body["app_signature"])
        op: Operation | StoredOperation | None = self.store.latest_for(permission_id)
        if op is not None and op.status in RESUBMITTABLE:
            op = None  # see the module docstring: a failed operation may be started again
        if op is None:  # first submit: authorize on chain, then decrypt and queue once
            record = await self._permission(permission_id)
            _require_grantee(signer, record.grantee)
            op = await self._prepare_once(permission_id, record)
        else:  # a retried submit gets the same operation, but only for the grantee
            _require_grantee(signer, op.grantee)
        return web.json_response(
            {
                "kind": "OperationCreated",
                "id": op.id,
                "status": op.status,
                "permission_id": permission_id,
                "created_at": op.created_at,
            },
            status=202,
        )

    async def get_operation(self, request: web.Request) -> web.Response:
        op = self.store.get(request.match_info["id"])
        if op is None:
            raise ApiError(404, f"no operation {request.match_info['id'][:80]!r}")
        return web.json_response(op.view())

    # --- permission checks (chain reads only, no side effects)

    async def _permission(self, permission_id: int) -> PermissionRecord:
        info = await self._call(self.permissions, "permissions", permission_id)
        perm_id, grantor, _nonce, grantee_id, grant, _start, end_block, file_ids = info
        if perm_id == 0:
            raise ApiError(404, f"no permission {permission_id}")
        if end_block and end_block <= await self._block_number():
            raise ApiError(403, f"permission {permission_id} was revoked")
        return PermissionRecord(
            grantor, await self._grantee_address(grantee_id), grant, tuple(file_ids)
        )

    async def _grantee_address(self, grantee_id: int) -> str:
        # grantees(id) also returns the grantee's growing list of permission ids: read it once.
        if grantee_id not in self.grantee_addresses:
            info = await self._call(self.grantees, "grantees", grantee_id)
            self.grantee_addresses[grantee_id] = info[1]
        return self.grantee_addresses[grantee_id]

    async def _call(self, contract: Any, function: str, *args: Any) -> Any:
        """A view as one raw eth_call (`views.view`): web3's contract call path cost this
        busy server ~1.6 ms of CPU per read, with three or four reads per operation."""
        try:
            return await views.view(contract, function)(*args)
        except ContractLogicError as e:
            raise ApiError(404, f"chain refused the read: {e}") from None
        except (aiohttp.ClientError, TimeoutError, OSError, Web3RPCError) as e:
            raise ApiError(502, f"rpc failed: {type(e).__name__}: {e}") from None

    async def _block_number(self) -> int:
        assert self.w3 is not None  # set by start(), before any request is served
        try:
            return await self.w3.eth.block_number
        except (aiohttp.ClientError, TimeoutError, OSError, Web3RPCError) as e:
            raise ApiError(502, f"rpc failed: {type(e).__name__}: {e}") from None

    # --- preparing an operation: grant, files, decryption, queue

    async def _prepare_once(self, permission_id: int, record: PermissionRecord) -> Operation:
        """Concurrent submits of one permission share a single preparation; a failed one is
        forgotten so that a retry can succeed."""
        if self.queue.full():
            raise self._reject()
        task = self.preparing.get(permission_id)
        if task is None:
            task = asyncio.ensure_future(self._prepare(permission_id, record))
            self.preparing[permission_id] = task
            task.add_done_callback(lambda t: self._prepared(permission_id, t))
        return await asyncio.shield(task)

    def _reject(self) -> ApiError:
        self.rejected += 1
        return ApiError(503, "inference queue is full; retry later")

    def _prepared(self, permission_id: int, task: asyncio.Future) -> None:
        self.preparing.pop(permission_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every requester went away

    async def _prepare(
        self, permission_id: int, record: PermissionRecord, resumed: StoredOperation | None = None
    ) -> Operation:
        """Grant, files and decryption, then the queue; `resumed` is the stored operation a
        restart interrupted, queued again under its id (waiting for room, not refused)."""
        grant = await self._fetch_grant(record.grant_url)
        ident = self.identities.for_user(record.grantor)
        files = await asyncio.gather(
            *(self._open_file(f, record.grantor, ident) for f in record.file_ids)
        )
        params = grant.get("parameters") or {}
        op = Operation(
            resumed.id if resumed else uuid.uuid4().hex,
            permission_id,
            record.grantee,
            params["prompt"],
            params,
            list(files),
        )
        if resumed is not None:
            op.created_at = resumed.created_at
            await self.queue.put(op)
            return op
        try:
            self.queue.put_nowait(op)
        except asyncio.QueueFull:
            raise self._reject() from None
        self.store.add(op.id, permission_id, op.grantee, op.status, op.created_at)
        self.submitted += 1
        return op

    # --- after a restart: the operations the previous process left unfinished

    async def resume(self) -> None:
        """Prepares and queues again every unfinished stored operation (see the docstring)."""
        pending = self.store.unfinished()
        if not pending:
            return
        log.info("resuming %d unfinished operations", len(pending))
        gate = asyncio.Semaphore(RESUME_CONCURRENCY)

        async def one(stored: StoredOperation) -> None:
            async with gate:
                await self._resume_one(stored)

        await asyncio.gather(*(one(s) for s in pending))

    async def _resume_one(self, stored: StoredOperation) -> None:
        self.store.set_status(stored.id, "starting")  # was maybe `processing` when it died
        try:
            record = await self._permission(stored.permission_id)
            _require_grantee(stored.grantee, record.grantee)
            await self._prepare(stored.permission_id, record, resumed=stored)
        except Exception as e:  # ApiError and anything unexpected: a clear end, not a hang
            reason = e.message if isinstance(e, ApiError) else f"{type(e).__name__}: {e}"
            log.warning("operation %s could not be resumed: %s", stored.id, reason)
            self.resume_failed += 1
            self.failed += 1
            self.store.finish(
                stored.id,
                "failed",
                time.time(),
                error=f"server restarted and could not resume the operation: {reason}",
            )
            return
        self.resumed += 1

    async def _fetch_grant(self, url: str) -> dict:
        try:
            grant = json.loads(await self._fetch(url))
        except (ValueError, RecursionError):
            raise ApiError(422, "grant file is not JSON") from None
        params = grant.get("parameters") if isinstance(grant, dict) else None
        if not isinstance(params, dict) or not isinstance(params.get("prompt"), str):
            raise ApiError(422, "grant file has no parameters.prompt")
        if grant.get("operation", OPERATION_KIND) != OPERATION_KIND:
            raise ApiError(422, f"grant operation {grant['operation']!r} is not supported")
        return grant

    async def _open_file(self, file_id: int, grantor: str, ident: ServerIdentity) -> bytes:
        info = await self._call(self.registry, "files", file_id)
        owner, url = info[1], info[2]
        if owner != grantor:
            raise ApiError(403, f"file {file_id} does not belong to the grantor")
        sealed = await self._call(self.registry, "filePermissions", file_id, ident.address)
        if not sealed:
            raise ApiError(403, f"file {file_id} grants this server no key")
        blob = await self._fetch(url)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.pool, open_sealed_file, ident.private_key, sealed, blob
            )
        except ValueError as e:  # DecryptionError, bad hex, bad UTF-8 password
            raise ApiError(422, f"cannot decrypt file {file_id}: {e}") from None

    async def _fetch(self, url: str) -> bytes:
        """Bytes behind `ipfs://CID` (from our storage gateway) or an http(s) URL."""
        if url.startswith("ipfs://"):
            url = f"{self.config['storage_url'].rstrip('/')}/ipfs/{url.removeprefix('ipfs://')}"
        elif not url.startswith(("http://", "https://")):
            raise ApiError(422, f"unsupported URL scheme in {url[:80]!r}")

        async def get(_attempt: int) -> bytes:
            assert self.session is not None  # set by start(), before any request is served
            async with self.session.get(url, timeout=self.fetch_timeout) as resp:
                if resp.status != 200:
                    raise ApiError(502, f"storage answered {resp.status} for {url[:120]}")
                return await resp.read()

        try:  # a read: a lost connection (storage restarting) is worth another try
            return await retrying(get, SERVER_CALLS, connection_lost)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ApiError(502, f"storage unreachable: {type(e).__name__}: {e}") from None

    # --- the inference worker pool

    async def _work(self) -> None:
        while True:
            op = await self.queue.get()
            self.in_flight += 1
            op.status = "processing"
            self.store.set_status(op.id, op.status)
            try:
                self._finish(op, "succeeded", result=await self._infer(op))
            except asyncio.CancelledError:
                raise  # the server stops: the operation stays unfinished, the next start resumes it
            except Exception as e:
                log.warning("operation %s failed: %s: %s", op.id, type(e).__name__, e)
                self._finish(op, "failed", error=f"{type(e).__name__}: {e}")
            finally:
                self.in_flight -= 1
                self.queue.task_done()

    async def _infer(self, op: Operation) -> Any:
        """The backend's answer within `inference.timeout_s`; a stuck backend fails the operation
        instead of holding a worker forever."""
        deadline = asyncio.timeout(self.timeout_s)
        try:
            async with deadline:
                return await self.backend.infer(op.prompt, op.files or [], op.params)
        except TimeoutError:
            if not deadline.expired():
                raise  # the backend's own timeout: its message says more
            self.timed_out += 1
            raise InferenceError(f"inference timeout after {self.timeout_s:g} s") from None

    def _finish(self, op: Operation, status: str, result: Any = None, error: str | None = None):
        """Records the end state in the store (which retires the oldest beyond keep_finished)."""
        op.status, op.files = status, None
        if status == "succeeded":
            self.done += 1
        elif status == "failed":
            self.failed += 1
        self.store.finish(op.id, status, time.time(), result=result, error=error)


def _permission_id(request_json: str) -> int:
    try:
        request = json.loads(request_json)
    except (ValueError, RecursionError):
        raise ApiError(400, "operation_request_json is not valid JSON") from None
    if not isinstance(request, dict):
        raise ApiError(400, "operation_request_json must be a JSON object")
    return int_field(request, "permission_id", minimum=1)


def _signer(message: str, signature: str) -> str:
    """The app's address; 400 also for a high-s or v-not-27/28 copy, as the contracts refuse."""
    try:
        return recover_personal(message, signature)
    except ValueError as e:
        raise ApiError(400, f"app_signature is not a valid EIP-191 signature: {e}") from None
    except Exception:  # eth-account raises several types for malformed signatures
        raise ApiError(400, "app_signature is not a valid EIP-191 signature") from None


def _require_grantee(signer: str, grantee: str) -> None:
    if signer.lower() != grantee.lower():
        raise ApiError(403, "app_signature is not from the permission's grantee")


def build_app(config: dict[str, Any], seed: bytes) -> web.Application:
    for key in ("rpc_url", "storage_url", "contracts"):
        if not config.get(key):
            raise WorkbenchError(
                f"personal_server.{key}", "missing", "set it in the component config"
            )
    for name in CONTRACTS:
        if not is_address(config["contracts"].get(name) or ""):
            raise WorkbenchError(
                f"contracts.{name}", "missing or not an address", "pass its address"
            )
    server = PersonalServer(config, seed)
    app = make_app(server.gauges)
    app[SERVER_KEY] = server
    app.on_startup.append(server.start)
    app.on_cleanup.append(server.stop)
    app.router.add_get("/identity", server.identity)
    app.router.add_post("/operations", server.create_operation)
    app.router.add_get("/operations/{id}", server.get_operation)
    return app


def server_seed(values: dict[str, Any]) -> bytes:
    raw = values.get("server_seed")
    try:
        seed = bytes.fromhex(str(raw).removeprefix("0x")) if raw else b""
    except ValueError:
        seed = b""
    if len(seed) < 16:
        raise WorkbenchError(
            "WORKBENCH_SECRETS.server_seed",
            "missing or not hex of >= 16 bytes",
            "pass a random hex seed, e.g. secrets.token_hex(32)",
        )
    return seed


def main() -> None:
    seed = server_seed(secrets())
    run(lambda config: build_app(config, seed))


if __name__ == "__main__":
    main()
