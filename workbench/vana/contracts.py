"""The ABIs of the workbench's four contracts, committed as JSON in `workbench/vana/abi/`.

The client (chain, views, preflight) and the stack's relayer read them from here, so talking to a
deployment needs neither node nor solc. They are generated from the Solidity in
`workbench/stack/contracts/` by `python -m workbench.stack.compile --write-abis`;
tests/test_contracts.py fails when they drift from what the compiler makes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, cast

from eth_typing import ABIError
from eth_utils import abi_to_signature, function_signature_to_4byte_selector

ABI_DIR = Path(__file__).resolve().parent / "abi"
CONTRACT_NAMES = (
    "DataPortabilityPermissions",
    "DataPortabilityGrantees",
    "DataPortabilityServers",
    "DataRegistry",
)


@functools.cache
def abi(name: str) -> list[dict[str, Any]]:
    """The ABI of one of `CONTRACT_NAMES` (shared between callers: do not mutate it)."""
    if name not in CONTRACT_NAMES:
        raise KeyError(f"no contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    return json.loads((ABI_DIR / f"{name}.json").read_text(encoding="utf-8"))


def abi_json(entries: list[dict[str, Any]]) -> str:
    """How an ABI file is written, so regenerating an unchanged ABI changes no byte."""
    return json.dumps(entries, indent=2) + "\n"


@functools.cache
def errors_by_selector() -> dict[bytes, dict[str, Any]]:
    """Every custom error of the four contracts by its 4-byte selector, to name reverts."""
    return {
        function_signature_to_4byte_selector(abi_to_signature(cast(ABIError, item))): item
        for name in CONTRACT_NAMES
        for item in abi(name)
        if item.get("type") == "error"
    }
