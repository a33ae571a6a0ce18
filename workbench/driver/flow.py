"""One user's data-portability flow, timed step by step (the steps of the Vana reference).

Every step emits one `kind: "step"` event; every flow ends with exactly one `kind: "flow"`
outcome (ok, failed or cancelled). CPU-heavy crypto runs in the run's executor, never on the
event loop, so one user's key stretching does not delay another user's timings.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from hexbytes import HexBytes
from web3.exceptions import ContractLogicError

from workbench.driver import clients
from workbench.errors import WorkbenchError
from workbench.events import Clock, Emit, FlowEvent, FlowKey, FlowStatus, flow_event, step_event
from workbench.request_log import NO_LOG, RequestLog
from workbench.steps import ENDPOINT_CLASS, step_class
from workbench.vana import chain, crypto, permission, relay, retry
from workbench.vana.ipfs import IpfsProvider
from workbench.vana.target import Endpoints
from workbench.vana.views import ViewFunction

# Statuses of an operation that is still running on the personal server.
RUNNING = frozenset({"starting", "processing", "queued", "pending", "running"})

# What a dead or dying server does to a connection: refuses it, drops it before answering, cuts
# the answer short. (A timeout is not one: the server may be alive and slow.)
CONNECTION_FAILURES = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    aiohttp.ClientPayloadError,
    ConnectionRefusedError,
    ConnectionResetError,
)


class FlowError(Exception):
    """A step failed; `error_class` names the kind of failure (see `workbench.steps`)."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


class HttpStatusError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {_short(body)}")
        self.status, self.body = status, body


@dataclass(frozen=True)
class FlowSettings:
    """Timing knobs of a flow; every timeout is explicit (no library default decides).

    `client` names the timing preset these came from (see `workbench.driver.clients`), `relay`
    how the permission reaches the chain: `app` (gasless, the app's `/api/relay`) or `direct`
    (the user's wallet sends the transaction and pays its gas)."""

    poll_interval_s: float = 0.25
    receipt_poll_s: float = 0.5
    receipt_timeout_s: float = 120.0
    flow_timeout_s: float = 300.0
    http_timeout_s: float = 30.0
    retry_attempts: int = 5
    retry_base_s: float = 1.0  # upstream: 1 s doubling, capped at 5 s
    retry_cap_s: float = 5.0
    retry_jitter: bool = True  # full jitter; upstream's client waited the bare backoff
    step_attempts: dict[str, int] = field(default_factory=dict)  # per step, over retry_attempts
    wait_out_restarts: bool = True  # retry refused connections for up to http_timeout_s
    operation_timeout_s: float | None = None  # the client's own limit on polling an operation
    poll_growth: float = chain.POLL_GROWTH  # 1.0: poll at a fixed interval, as SDK clients do
    schema_id: int = 0
    prompt: str = "Summarise this user's data as JSON."
    relay: str = "app"
    client: str = "tight"

    def attempts(self, step: str | None) -> int:
        return self.step_attempts.get(step or "", self.retry_attempts)

    def __post_init__(self) -> None:
        try:  # built now: a bad setting fails before any flow starts, not inside a step
            _ = self.retry_policy, self.reconnect_policy
        except ValueError as e:
            raise WorkbenchError(
                "flow.retry_*",
                str(e),
                "fix retry_attempts, retry_base_s, retry_cap_s in the profile",
            ) from None

    @functools.cached_property
    def retry_policy(self) -> retry.RetryPolicy:
        """For calls safe to repeat: network errors, timeouts and transient statuses."""
        return self.retry_policy_for(None)

    def retry_policy_for(self, step: str | None) -> retry.RetryPolicy:
        """`retry_policy` with the step's own attempt count (a client preset may set one)."""
        return retry.RetryPolicy(
            self.attempts(step), self.retry_base_s, self.retry_cap_s, jitter=self.retry_jitter
        )

    @functools.cached_property
    def reconnect_policy(self) -> retry.RetryPolicy:
        """For waiting out a refused connection: as long as one request may take."""
        return retry.RetryPolicy(
            None, self.retry_base_s, self.retry_cap_s, self.http_timeout_s, self.retry_jitter
        )

    @classmethod
    def from_profile(
        cls, profile: dict[str, Any], client: str = "tight", **overrides: Any
    ) -> FlowSettings:
        """The profile's `flow` settings, then the client preset's, then `overrides`."""
        flow = profile.get("flow", {})
        known = {k: flow[k] for k in cls.__dataclass_fields__ if k in flow}
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**known, **clients.preset(client), "client": client, **given})


@dataclass(frozen=True)
class Wallet:
    """A test user's wallet. The key never appears in repr, events or logs."""

    index: int
    address: str
    private_key: str = field(repr=False)


@dataclass
class FlowContext:
    """What every flow of a run shares: endpoints, pooled connections, executor, clock, sink."""

    endpoints: Endpoints
    session: aiohttp.ClientSession
    w3: Any
    executor: Executor | None
    emit: Emit
    clock: Clock = field(default_factory=Clock)
    settings: FlowSettings = field(default_factory=FlowSettings)
    run_id: str = ""
    light_executor: Executor | None = None
    ipfs: IpfsProvider | None = None  # where uploads go; None: Kubo at endpoints.storage_url
    request_log: RequestLog = NO_LOG  # every request attempt, for per-request statistics
    worker: int | None = None  # the Dask worker running these flows (None: in-process)
    _contracts: dict[str, Any] = field(default_factory=dict)
    _views: dict[tuple[str, str], ViewFunction] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ipfs is None:
            self.ipfs = IpfsProvider.kubo(self.endpoints.storage_url)

    def endpoint_class(self, url: str | None) -> str | None:
        """The error class of the component serving `url`, matched by host and port."""
        if url is None:
            return None
        host_port = _host_port(url)
        for name, cls in ENDPOINT_CLASS.items():
            urls = str(getattr(self.endpoints, name)).split(",")  # rpc_url may list several
            if host_port in {_host_port(u.strip()) for u in urls}:
                return cls
        return None

    def contract(self, name: str) -> Any:
        if name not in self._contracts:
            address = self.endpoints.contracts[name]
            self._contracts[name] = chain.contract(self.w3, name, address)
        return self._contracts[name]

    async def read(self, name: str, function: str, *args: Any) -> Any:
        """A contract view call as one raw eth_call (ABI resolved once per run): web3's contract
        call path was the driver's biggest loop CPU per flow (see `workbench.vana.views`)."""
        view = self._views.get((name, function))
        if view is None:
            view = self._views[(name, function)] = ViewFunction(self.contract(name), function)
        return await view(*args)

    async def cpu(self, fn: Callable[..., Any], *args: Any, light: bool = False) -> Any:
        """Runs crypto off the event loop. Sub-millisecond work (signatures, ECIES) takes its own
        lane: in one FIFO pool it waited behind 10 ms encryptions, and a 0.1 ms step measured
        seconds of the driver's own queueing at 500 users."""
        result, _ = await self.cpu_timed(fn, *args, light=light)
        return result

    async def cpu_timed(
        self, fn: Callable[..., Any], *args: Any, light: bool = False
    ) -> tuple[Any, float]:
        """`cpu`, plus the seconds the call waited for a free thread: the driver's own
        queueing, which the saturation check weighs (`workbench.analysis.saturation`)."""
        pool = self.light_executor if light and self.light_executor else self.executor
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter()

        def timed() -> tuple[Any, float]:
            queued = time.perf_counter() - submitted
            return fn(*args), queued

        return await loop.run_in_executor(pool, timed)


@dataclass
class FlowRecord:
    """The outcome being built while the flow runs; becomes the `kind: "flow"` event."""

    flow_id: int
    user: int
    address: str
    data_size: str
    nbytes: int
    t: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    ids: dict[str, Any] = field(default_factory=dict)
    current: str | None = None
    deadline_ns: int = 0
    step_extra: dict[str, Any] = field(default_factory=dict)  # facts for the current step event
    peer: str | None = None  # the URL the current step last sent a request to
    result: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class FlowRun:
    """Runs the thirteen steps for one wallet; one instance per flow."""

    def __init__(self, ctx: FlowContext, record: FlowRecord, wallet: Wallet):
        self.ctx, self.rec, self.wallet = ctx, record, wallet

    def key(self) -> FlowKey:
        r = self.rec
        key: FlowKey = {
            "run_id": self.ctx.run_id,
            "flow_id": r.flow_id,
            "user": r.user,
            "address": r.address,
        }
        if self.ctx.worker is not None:
            key["worker"] = self.ctx.worker
        return key

    async def cpu(self, fn: Callable[..., Any], *args: Any, light: bool = False) -> Any:
        """Crypto off the loop; the step's event records how long it queued for a thread."""
        result, queued_s = await self.ctx.cpu_timed(fn, *args, light=light)
        self.rec.step_extra["queued_s"] = round(queued_s, 6)
        return result

    @asynccontextmanager
    async def step(self, name: str):
        """Times one step and emits its event; failures become FlowError with a class."""
        self.rec.current = name
        self.rec.step_extra = {}
        self.rec.peer = None
        attempts = [1]
        t0, start_ns, error, error_class = self.ctx.clock.now(), time.perf_counter_ns(), None, None
        try:
            yield attempts
        except FlowError as e:
            error, error_class = str(e), e.error_class
            raise
        except asyncio.CancelledError:
            # The flow's own deadline cancels the step too: that is a timeout, not a cancel.
            timed_out = time.perf_counter_ns() >= self.rec.deadline_ns
            error, error_class = (
                ("flow timeout", "timeout") if timed_out else ("cancelled", "cancelled")
            )
            raise
        except TimeoutError as e:
            error, error_class = f"timeout in {name}", "timeout"
            raise FlowError("timeout", f"timeout in {name}") from e
        except Exception as e:  # any other failure is classified by the step it happened in
            error, error_class = _describe(e), self._refused_by(e) or classify(name, e)
            raise FlowError(error_class, error) from e
        finally:
            duration = (time.perf_counter_ns() - start_ns) / 1e9
            if error is None:
                self.rec.steps[name] = duration
            facts = {k: v for k, v in self.rec.ids.items() if v is not None}
            self.ctx.emit(
                step_event(
                    self.key(),
                    name,
                    t0,
                    duration,
                    error=error,
                    error_class=error_class,
                    attempts=attempts[0],
                    facts={**facts, **self.rec.step_extra},
                )
            )

    def _refused_by(self, exc: BaseException) -> str | None:
        """The class of the component whose port refused or reset the failed connection; None
        if the failure was something else. The address comes from the error when it has one (a
        refused connect, also web3's), else from this step's last request."""
        failure = _connection_failure(exc)
        if failure is None:
            return None
        if isinstance(failure, aiohttp.ClientConnectorError):
            return self.ctx.endpoint_class(f"http://{failure.host}:{failure.port}")
        return self.ctx.endpoint_class(self.rec.peer)

    async def run(self, data: bytes) -> None:
        ctx, w = self.ctx, self.wallet
        ep, s = ctx.endpoints, ctx.settings
        async with self.step("derive_key"):
            password = await self.cpu(crypto.encryption_key, w.private_key, light=True)
        async with self.step("encrypt"):
            blob = await self.cpu(crypto.encrypt_file, data, password)
        async with self.step("upload_file") as attempts:
            file_url = await self.upload(attempts, blob, "data.pgp")
        async with self.step("resolve_grantee"):
            grantee = await ctx.read("DataPortabilityGrantees", "grantees", ep.grantee_id)
            grantee_address = _grantee_address(grantee)
        async with self.step("upload_grant") as attempts:
            grant = {
                "grantee": grantee_address,
                "operation": "llm_inference",
                "parameters": {"prompt": s.prompt, "response_format": {"type": "json_object"}},
            }
            grant_url = await self.upload(attempts, json.dumps(grant).encode(), "grant.json")
        async with self.step("server_identity") as attempts:  # a GET: safe to repeat
            url = f"{ep.personal_server_url}/identity"
            identity = await self.reconnecting(
                attempts,
                lambda: self.retrying(
                    attempts, lambda: self.get_json(url, params={"address": w.address})
                ),
            )
            server = identity["personal_server"]
            server_key = _uncompressed(server["public_key"])
        async with self.step("share_key"):
            shared_key = await self.cpu(
                crypto.ecies_encrypt, server_key, password.encode(), light=True
            )
        async with self.step("read_nonce"):
            nonce = await ctx.read("DataPortabilityPermissions", "userNonce", w.address)
        async with self.step("sign_permission"):
            message = {
                "nonce": nonce,
                "granteeId": ep.grantee_id,
                "grant": grant_url,
                "fileUrls": [file_url],
                "schemaIds": [s.schema_id],
                "serverAddress": server["address"],
                "serverUrl": ep.personal_server_url,
                "serverPublicKey": server_key,
                "filePermissions": [[{"account": server["address"], "key": shared_key}]],
            }
            typed = permission.typed_data(
                ep.chain_id, ep.contracts["DataPortabilityPermissions"], message
            )
            signature = await self.cpu(permission.sign, w.private_key, typed, light=True)
        async with self.step("relay") as attempts:
            if s.relay == "direct":
                tx_hash = await self.send_own(typed, signature)
            else:  # see `reconnecting`: never blindly re-sent
                body = relay.signed_request(typed, signature, w.address)
                answer = await self.reconnecting(
                    attempts, lambda: self.post_json(f"{ep.api_url}/api/relay", body)
                )
                tx_hash = _relay_hash(answer)
            self.rec.ids["tx_hash"] = tx_hash
        async with self.step("confirm"):
            self.rec.ids["permission_id"] = await self.confirm(tx_hash, nonce)
        async with self.step("inference_submit") as attempts:
            submitted = await self.retrying(
                attempts,
                lambda: self.post_json(
                    f"{ep.api_url}/api/trusted-server",
                    {"permissionId": self.rec.ids["permission_id"]},
                ),
            )
            self.rec.ids["operation_id"] = submitted["data"]["id"]
        async with self.step("inference_poll") as attempts:
            self.rec.result = await self.poll(attempts)

    async def upload(self, attempts: list[int], blob: bytes, name: str) -> str:
        """Uploads are content-addressed: a retry stores the same object under the same CID, so
        transient failures are retried like inference calls. Answers the URL the SDK's IPFS
        providers answer (`ipfs://CID`), the one registered on chain."""
        ipfs = self.ctx.ipfs
        assert ipfs is not None  # FlowContext.__post_init__ defaults it to the endpoints' Kubo

        def send() -> Awaitable[Any]:  # a fresh form per attempt: aiohttp sends one only once
            form = ipfs.form(blob, name)
            return self.request("POST", ipfs.add_url, data=form, headers=ipfs.headers())

        # Also waits out a storage server that is down or restarting, as server_identity does.
        try:
            answer = await self.reconnecting(attempts, lambda: self.retrying(attempts, send))
        except TimeoutError as e:  # requests' own deadline (the flow's arrives as a cancel)
            limit = self.ctx.settings.http_timeout_s
            raise FlowError("storage", f"storage did not answer within {limit:g} s") from e
        cid = ipfs.cid(answer)
        stored = {"cid": cid, "bytes": len(blob)}
        self.rec.extra.setdefault("stored", []).append(stored)
        self.rec.step_extra["stored"] = [stored]  # in the step event too: a killed flow's count
        return ipfs.registered_url(cid)

    async def send_own(self, typed: dict[str, Any], signature: str) -> str:
        """The user's wallet sends `addServerFilesAndPermissions` itself, as the SDK does with
        no relayer: gas estimated first (a revert fails here, before a nonce is used), EIP-1559
        fees, nonce from the node's pending count (a user's flows never overlap)."""
        ctx = self.ctx
        permissions = ctx.contract("DataPortabilityPermissions")
        data = permissions.encode_abi(
            "addServerFilesAndPermissions",
            args=[permission.contract_input(typed), HexBytes(signature)],
        )
        tx = {"to": permissions.address, "data": data, "value": 0}
        nonces = chain.NonceManager(ctx.w3, self.wallet.address)
        return await chain.send_tx(ctx.w3, self.wallet.private_key, tx, nonces)

    async def reconnecting(self, attempts: list[int], call: Callable[[], Awaitable[Any]]) -> Any:
        """Waits out a server that refuses connections (down or restarting) for up to one
        request timeout, retrying with capped jittered backoff. Only a refused connection is
        retried: the request never reached the server, so even a relay (not idempotent: it
        may have been sent on chain) is safe to post again."""
        s = self.ctx.settings
        if not s.wait_out_restarts:  # a client preset that never retries
            return await call()
        return await retry.retrying(
            lambda _: call(), s.reconnect_policy, retry.never_sent, on_retry=_counter(attempts)
        )

    async def confirm(self, tx_hash: str, nonce: int) -> int:
        """The permission id once the message signed with `nonce` is mined, also under a
        replacement tx of the relayer (see `chain.wait_permission`)."""
        s = self.ctx.settings
        permissions = self.ctx.contract("DataPortabilityPermissions")
        try:
            done = await chain.wait_permission(
                permissions,
                tx_hash,
                self.wallet.address,
                nonce,
                s.receipt_timeout_s,
                s.receipt_poll_s,
            )
        except chain.TxReverted as e:
            raise FlowError("revert", str(e)) from None
        except chain.ReceiptTimeout as e:
            raise self.client_timeout(str(e)) from None
        if done.tx_hash != tx_hash:  # mined under a replacement: record the hash that counts
            self.rec.ids["tx_hash"] = done.tx_hash
            self.rec.extra["relayed_tx_hash"] = tx_hash
        return done.permission_id

    async def poll(self, attempts: list[int]) -> Any:
        ep, s = self.ctx.endpoints, self.ctx.settings
        body = {"operationId": self.rec.ids["operation_id"], "chainId": ep.chain_id}
        started = time.monotonic()
        # Backs off while the operation runs, as receipt polls do, unless the client preset polls
        # at a fixed interval (the SDK's waitForOperation, upstream's client).
        pause, cap = s.poll_interval_s, max(s.poll_interval_s, chain.POLL_CAP_S)
        while True:
            answer = await self.retrying(
                attempts, lambda: self.post_json(f"{ep.api_url}/api/trusted-server/poll", body)
            )
            data = answer.get("data") or {}
            status = data.get("status")
            if status == "succeeded":
                return data.get("result")
            if status not in RUNNING:  # failed (or unknown): final for this flow, never resubmitted
                detail = data.get("error") or _short(data)
                raise FlowError("inference", f"operation ended {status}: {detail}")
            limit = s.operation_timeout_s
            if limit is not None and time.monotonic() - started > limit:
                raise self.client_timeout(f"operation still {status} after {limit:g} s")
            await asyncio.sleep(pause)
            pause = min(cap, pause * s.poll_growth)

    def client_timeout(self, detail: str) -> FlowError:
        """A timeout of the client's own wait (not the flow's deadline): recorded on the flow
        as `client_timeout` so the report can tell a preset's limit from a slow system."""
        client = self.ctx.settings.client
        limit = clients.limit_name(client, self.rec.current or "")
        self.rec.extra["client_timeout"] = f"{client}: {limit}"
        return FlowError("timeout", f"{detail} (the {client} client's own limit: {limit})")

    async def retrying(self, attempts: list[int], call: Callable[[], Awaitable[Any]]) -> Any:
        """Retries network errors, timeouts and transient statuses (`retry.is_transient`) with
        capped exponential backoff (full jitter unless the client preset says otherwise); the
        step's attempt count comes from the preset."""
        policy = self.ctx.settings.retry_policy_for(self.rec.current)
        return await retry.retrying(lambda _: call(), policy, on_retry=_counter(attempts))

    async def get_json(self, url: str, params: dict[str, str] | None = None) -> Any:
        return await self.request("GET", url, params=params)

    async def post_json(self, url: str, body: Any) -> Any:
        return await self.request("POST", url, json=body)

    async def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.rec.peer = url
        timeout = aiohttp.ClientTimeout(total=self.ctx.settings.http_timeout_s)
        timed = self.ctx.request_log.timed(method, _path(url), retry.is_retry())
        with timed as record:
            async with self.ctx.session.request(method, url, timeout=timeout, **kwargs) as resp:
                record.status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except (json.JSONDecodeError, aiohttp.ContentTypeError, UnicodeDecodeError):
                    body = (await resp.text(errors="replace"))[:200]
                record.nbytes = resp.content_length or 0
                if resp.status >= 400:
                    record.error = f"HTTP {resp.status}"
                    raise HttpStatusError(resp.status, body)
                if isinstance(body, dict) and body.get("success") is False:
                    record.error = "success: false"
                    raise HttpStatusError(resp.status, body)
                return body


async def run_flow(
    ctx: FlowContext,
    wallet: Wallet,
    data: bytes,
    *,
    flow_id: int,
    data_size: str,
    extra: dict[str, Any] | None = None,
) -> FlowEvent:
    """Runs one flow under the per-flow timeout; emits and returns its `kind: "flow"` event.

    Cancellation (Ctrl-C, the run's deadline) still emits the outcome, as `cancelled`, then
    propagates, so nothing a run started goes unrecorded.
    """
    rec = FlowRecord(
        flow_id, wallet.index, wallet.address, data_size, len(data), extra=dict(extra or {})
    )
    rec.t = ctx.clock.now()
    start_ns = time.perf_counter_ns()
    rec.deadline_ns = start_ns + int(ctx.settings.flow_timeout_s * 1e9)
    flow = FlowRun(ctx, rec, wallet)
    status: FlowStatus = "ok"
    error: str | None = None
    error_class: str | None = None
    try:
        async with asyncio.timeout(ctx.settings.flow_timeout_s):
            await flow.run(data)
    except FlowError as e:
        status, error, error_class = "failed", str(e), e.error_class
    except TimeoutError:
        status, error = "failed", f"flow timeout after {ctx.settings.flow_timeout_s:g} s"
        error_class = "timeout"
    except asyncio.CancelledError:
        status, error, error_class = "cancelled", "cancelled", "cancelled"
        ctx.emit(_outcome(flow, start_ns, status, error, error_class))
        raise
    event = _outcome(flow, start_ns, status, error, error_class)
    ctx.emit(event)
    return event


def _outcome(
    flow: FlowRun, start_ns: int, status: FlowStatus, error: str | None, error_class: str | None
) -> FlowEvent:
    rec = flow.rec
    return flow_event(
        flow.key(),
        rec.t,
        (time.perf_counter_ns() - start_ns) / 1e9,
        status=status,
        error=error,
        error_class=error_class,
        failed_step=None if status == "ok" else rec.current,
        data_size=rec.data_size,
        nbytes=rec.nbytes,
        ids=rec.ids,
        result=rec.result if status == "ok" else None,
        steps=rec.steps,
        facts=rec.extra,
    )


def classify(step: str, exc: BaseException) -> str:
    """Names the failure class of an exception raised inside `step`."""
    if isinstance(exc, chain.ReceiptTimeout):
        return "timeout"
    if isinstance(exc, ContractLogicError):  # the user's own tx would revert (relay direct)
        return "nonce" if chain.revert_name(exc) == "InvalidNonce" else "revert"
    if isinstance(exc, HttpStatusError):
        text = str(exc.body).lower()
        if step == "relay":
            if exc.status >= 500:  # the API server or what it relays through failed, not the tx
                return "relay"
            if "nonce" in text:
                return "nonce"
            if exc.status in (409, 422) or "revert" in text:
                return "revert"
            return "relay"
        return step_class(step, unknown="http")
    return step_class(step, unknown="internal")


def _counter(attempts: list[int]) -> Callable[[int, BaseException], None]:
    """Counts retries into a step's `attempts` (the step event records them)."""

    def count(_attempt: int, _error: BaseException) -> None:
        attempts[0] += 1

    return count


def _relay_hash(answer: Any) -> str:
    try:
        return relay.answered_hash(answer)
    except ValueError as e:  # a 2xx that is no relay (an app answering `{type: "error"}` so)
        raise FlowError("relay", str(e)) from None


def _connection_failure(error: BaseException) -> BaseException | None:
    """`error` or an exception it was raised from that is a connection failure."""
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CONNECTION_FAILURES):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _host_port(url: str) -> tuple[str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.hostname or "").lower(), port


@functools.lru_cache(maxsize=256)
def _path(url: str) -> str:
    """A request's name in the request log: its URL's path (Locust's convention)."""
    return urllib.parse.urlsplit(url).path or "/"


def _grantee_address(grantee: Any) -> str:
    # web3 returns the struct as a tuple (owner, granteeAddress, publicKey, permissionIds)
    return grantee["granteeAddress"] if isinstance(grantee, dict) else grantee[1]


def _uncompressed(public_key: str) -> str:
    """Servers may answer the 64 raw bytes; the client adds the `04` prefix."""
    raw = public_key.removeprefix("0x")
    return "0x" + ("04" + raw if len(raw) == 128 else raw)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_short(str(exc))}"


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


# How much lower than the event loop the crypto threads run (nice steps; Linux, best effort).
CRYPTO_NICE = 10


def _lower_crypto_priority() -> None:
    """Runs once in each crypto thread. On a busy machine (the stack shares the cores) the
    event-loop thread, which times every user's requests, then preempts the crypto threads
    instead of queueing behind them: measured on 2 cores, 50-user burst, loop-lag p99 median
    ~57 -> ~31 ms; success and flow rate unchanged at 500 users. +19 starved the crypto (flow
    timeouts at 500 users). Linux applies nice per thread; elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + CRYPTO_NICE)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        pass  # not allowed here: the crypto keeps the loop's priority


@asynccontextmanager
async def flow_context(
    endpoints: Endpoints,
    emit: Emit,
    settings: FlowSettings | None = None,
    *,
    run_id: str = "",
    clock: Clock | None = None,
    max_connections: int = 200,
    crypto_threads: int | None = None,
    ipfs: IpfsProvider | None = None,
    request_log: RequestLog | None = None,
    rpc_rate_limit: float | None = None,
    worker: int | None = None,
):
    """Opens what flows share: one pooled HTTP session, one web3 client, one crypto pool.

    Threads suffice for the crypto: the OpenPGP key stretching is hashlib, which releases the
    GIL on large buffers, and the signatures are sub-millisecond. Every request attempt goes to
    `request_log`; at most `rpc_rate_limit` RPC calls/s go to each RPC URL.
    """
    settings = settings or FlowSettings()
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections)
    executor = ThreadPoolExecutor(
        max_workers=crypto_threads or 2,
        thread_name_prefix="crypto",
        initializer=_lower_crypto_priority,
    )
    light = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crypto_light")
    log = request_log or NO_LOG
    w3 = chain.make_web3(
        endpoints.rpc_url,
        timeout_s=settings.http_timeout_s,
        rate_limit=rpc_rate_limit,
        request_log=log,
    )
    # web3's validation middleware asks eth_chainId twice per eth_call (3 round trips where a
    # client sends 1, inflating the timed reads and the node's load) and costs ~1.5 ms of loop
    # CPU per call. The only transactions flows send (relay direct) carry an explicit chainId.
    if "validation" in w3.middleware_onion:
        w3.middleware_onion.remove("validation")
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            clock = clock or Clock()
            yield FlowContext(
                endpoints,
                session,
                w3,
                executor,
                emit,
                clock,
                settings,
                run_id,
                light,
                ipfs,
                log,
                worker,
            )
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        light.shutdown(wait=False, cancel_futures=True)
        await chain.close_web3(w3)
