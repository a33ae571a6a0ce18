"""The flow's steps and its failure taxonomy, in one table each; everything else derives from them.

A flow runs the thirteen steps of the Vana reference in `STEP_TABLE` order. A failed step or flow
carries an `error_class` from `ERROR_CLASS_TABLE`. The component a failure points at comes from
the class (`nonce` -> the chain), except for classes that only say *how* it failed (a timeout,
a plain HTTP error): those point at the component serving the failed step (`fault_component`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The parts of the system a failure can point at, as the report names them.
CLIENT_CRYPTO = "driver (client crypto)"
STORAGE_SERVER = "storage server"
CHAIN_RPC = "chain (RPC)"
CHAIN_OR_RELAYER = "chain / relayer"
PERSONAL_SERVER = "personal server"
API_RELAYER = "API server (relayer)"
PERSONAL_VIA_API = "personal server (via API server)"
API_SERVER = "API server"


@dataclass(frozen=True)
class Step:
    name: str
    error_class: str  # a failure here, unless something more specific is known
    component: str  # the part of the system serving it: where a failure here points
    upload: bool = False  # stores an object in storage (counted in the upload success rate)
    api: bool = False  # a call to the app's API server (counted in the API errors)


@dataclass(frozen=True)
class ErrorClass:
    name: str
    component: str  # the component at fault; the fallback when `by_step`
    by_step: bool = False  # says how it failed, not where: the failed step's component is at fault


STEP_TABLE = (
    Step("derive_key", "crypto", CLIENT_CRYPTO),
    Step("encrypt", "crypto", CLIENT_CRYPTO),
    Step("upload_file", "storage", STORAGE_SERVER, upload=True),
    Step("resolve_grantee", "rpc", CHAIN_RPC),
    Step("upload_grant", "storage", STORAGE_SERVER, upload=True),
    Step("server_identity", "personal", PERSONAL_SERVER),
    Step("share_key", "crypto", CLIENT_CRYPTO),
    Step("read_nonce", "rpc", CHAIN_RPC),
    Step("sign_permission", "crypto", CLIENT_CRYPTO),
    Step("relay", "relay", API_RELAYER, api=True),
    Step("confirm", "rpc", CHAIN_OR_RELAYER),
    Step("inference_submit", "inference", PERSONAL_VIA_API, api=True),
    Step("inference_poll", "inference", PERSONAL_VIA_API, api=True),
)

ERROR_CLASS_TABLE = (
    ErrorClass("storage", STORAGE_SERVER),
    ErrorClass("rpc", CHAIN_OR_RELAYER),
    ErrorClass("api", API_SERVER),  # its port refused or reset a connection, at any step
    ErrorClass("personal", PERSONAL_SERVER),
    ErrorClass("http", API_SERVER, by_step=True),
    ErrorClass("nonce", CHAIN_OR_RELAYER),
    ErrorClass("relay", API_RELAYER),
    ErrorClass("revert", CHAIN_OR_RELAYER),
    ErrorClass("timeout", "unknown step", by_step=True),
    ErrorClass("inference", PERSONAL_SERVER),
    ErrorClass("crypto", CLIENT_CRYPTO),
    ErrorClass("cancelled", "none: stopped by the run's end"),
    ErrorClass("internal", "workbench (driver)"),
    # A Dask worker process died mid-flow: the flow was never finished nor re-run.
    ErrorClass("driver", "workbench (a driver worker was lost)"),
)

# A connection refused or reset by a component's port is that component's failure, whatever step
# ran (the API server down fails inference steps too): its class, by the endpoint it serves.
ENDPOINT_CLASS = {
    "api_url": "api",
    "storage_url": "storage",
    "personal_server_url": "personal",
    "rpc_url": "rpc",
}

STEPS = tuple(s.name for s in STEP_TABLE)
ERROR_CLASSES = tuple(c.name for c in ERROR_CLASS_TABLE)
UPLOAD_STEPS = tuple(s.name for s in STEP_TABLE if s.upload)
API_STEPS = tuple(s.name for s in STEP_TABLE if s.api)
BY_STEP_CLASSES = tuple(c.name for c in ERROR_CLASS_TABLE if c.by_step)

_STEP = {s.name: s for s in STEP_TABLE}
_CLASS = {c.name: c for c in ERROR_CLASS_TABLE}
assert all(s.error_class in _CLASS for s in STEP_TABLE), "a step's class must be an error class"
assert set(ENDPOINT_CLASS.values()) <= set(_CLASS), "an endpoint's class must be an error class"


def step_class(step: str | None, unknown: str) -> str:
    """The error class of a failure at `step`; `unknown` for a step outside the table."""
    known = _STEP.get(step or "")
    return known.error_class if known else unknown


def step_component(step: str | None) -> str:
    """The component serving `step`; "" for a step outside the table."""
    known = _STEP.get(step or "")
    return known.component if known else ""


def fault_component(error_class: str | None, step: str | None = None) -> str:
    """The component a failure points at: by class, and by the failed step for timeouts and
    plain HTTP errors (a 500 at `upload_file` is the storage server's, not the API server's)."""
    cls = _CLASS.get(error_class or "")
    if cls is None:
        return "unknown"
    return (step_component(step) or cls.component) if cls.by_step else cls.component


def in_flow_order(names: Iterable[str]) -> list[str]:
    """Step names in flow order; names outside the table follow, sorted."""
    present = set(names)
    return [s for s in STEPS if s in present] + sorted(present - set(STEPS))
