"""The relayer protocols an app's `/api/relay` speaks, both sides: the request a client posts
and the answer it gets.

Two formats arrive at one route:
- the **unified relayer protocol** of Vana's SDK (what an app built on it serves):
  `{"type": "signed", "operation", "typedData", "signature", "expectedUserAddress"?}` answered
  `{"type": "signed", "hash"}`; `{"type": "direct", "operation", "params"}` answered
  `{"type": "direct", "result"}`; any failure `{"type": "error", "error"}`.
- the **upstream mock's** format: `{"typedData", "signature", "expectedUserAddress"}` answered
  `{"success": true, "transactionHash"}`.
A body with a `type` key is unified; any other is the mock's. uint256 values arrive as numbers or
decimal strings: the SDK's own URL transport cannot serialise its bigints, so apps post its
request through a callback that writes them as strings (`signed_request` does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Every operation the SDK may send, per request type (its `handleRelayerOperation`).
SDK_SIGNED_OPERATIONS = (
    "submitAddPermission",
    "submitPermissionRevoke",
    "submitTrustServer",
    "submitAddAndTrustServer",
    "submitUntrustServer",
    "submitAddServerFilesAndPermissions",
    "submitRegisterGrantee",
)
SDK_DIRECT_OPERATIONS = (
    "submitFileAddition",
    "submitFileAdditionWithPermissions",
    "submitFileAdditionComplete",
    "storeGrantFile",
)
ADD_SERVER_FILES_AND_PERMISSIONS = "submitAddServerFilesAndPermissions"
STORE_GRANT_FILE = "storeGrantFile"
# What the embedded contracts take: one signed entry point; files are registered only through
# it (the DataRegistry has no public file addition), so the file-addition operations are refused.
SUPPORTED = {"signed": (ADD_SERVER_FILES_AND_PERMISSIONS,), "direct": (STORE_GRANT_FILE,)}


class RelayRequestError(ValueError):
    """A request that is malformed or asks for an operation this relayer does not run."""


@dataclass(frozen=True)
class UnifiedRequest:
    kind: str  # "signed" | "direct"
    operation: str
    typed_data: Any = None  # signed: still unchecked (see workbench.vana.permission.validate)
    signature: Any = None
    expected_user: str | None = None
    params: Any = None  # direct


def is_unified(body: dict[str, Any]) -> bool:
    return "type" in body


def parse_unified(body: dict[str, Any]) -> UnifiedRequest:
    """The request's parts; `RelayRequestError` names the bad field or the unsupported operation."""
    kind, operation = body.get("type"), body.get("operation")
    if not isinstance(kind, str) or kind not in SUPPORTED:
        raise RelayRequestError(f"field 'type' must be 'signed' or 'direct', got {_show(kind)}")
    if not isinstance(operation, str) or not operation:
        raise RelayRequestError("missing field 'operation'")
    if operation not in SUPPORTED[kind]:
        known = SDK_SIGNED_OPERATIONS if kind == "signed" else SDK_DIRECT_OPERATIONS
        what = "not supported by this relayer" if operation in known else "unknown"
        raise RelayRequestError(
            f"{kind} operation {_show(operation)} is {what}; supported: "
            f"{', '.join(SUPPORTED[kind])}"
        )
    if kind == "direct":
        if "params" not in body:
            raise RelayRequestError("missing field 'params'")
        return UnifiedRequest(kind, operation, params=body["params"])
    for name in ("typedData", "signature"):
        if body.get(name) is None:
            raise RelayRequestError(f"missing field '{name}'")
    expected = body.get("expectedUserAddress")
    if expected is not None and not isinstance(expected, str):
        raise RelayRequestError("field 'expectedUserAddress' must be an address string")
    return UnifiedRequest(
        kind, operation, body["typedData"], body["signature"], expected_user=expected
    )


def _show(value: Any) -> str:
    return repr(value)[:80]


# --- answers ------------------------------------------------------------------------------------


def signed_answer(tx_hash: str) -> dict[str, Any]:
    return {"type": "signed", "hash": tx_hash}


def direct_answer(result: dict[str, Any]) -> dict[str, Any]:
    return {"type": "direct", "result": result}


def error_answer(message: str) -> dict[str, Any]:
    """Both protocols' error shape at once: the SDK reads `type`, the mock's clients `success`."""
    return {"type": "error", "success": False, "error": message}


# --- the client side ----------------------------------------------------------------------------


def signed_request(typed: dict[str, Any], signature: str, user: str) -> dict[str, Any]:
    """The unified request for a signed `ServerFilesAndPermission`, as an SDK-based app posts
    it: the message's uint256 values (the SDK's bigints) as decimal strings."""
    message = dict(typed["message"])
    for name in ("nonce", "granteeId"):
        message[name] = str(message[name])
    message["schemaIds"] = [str(v) for v in message["schemaIds"]]
    return {
        "type": "signed",
        "operation": ADD_SERVER_FILES_AND_PERMISSIONS,
        "typedData": {**typed, "message": message},
        "signature": signature,
        "expectedUserAddress": user,
    }


def answered_hash(answer: Any) -> str:
    """The transaction hash in a relay answer of either protocol; `ValueError` for anything
    else (an error answer, or a shape neither protocol has)."""
    if isinstance(answer, dict):
        if answer.get("type") == "error":
            raise ValueError(f"relayer answered an error: {str(answer.get('error'))[:300]}")
        tx_hash = answer.get("hash") if answer.get("type") == "signed" else None
        tx_hash = tx_hash or answer.get("transactionHash")
        if isinstance(tx_hash, str) and tx_hash.startswith("0x") and len(tx_hash) == 66:
            return tx_hash
    raise ValueError(f"relay answer has no transaction hash: {str(answer)[:300]}")
