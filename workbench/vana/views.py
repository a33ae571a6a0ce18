"""Contract view calls as one raw `eth_call`, the way a client like viem's `readContract` sends them.

web3.py's `contract.functions.f(*args).call()` spends ~1.6 ms of CPU per call on the caller's
event loop (ABI lookup and argument matching, request and result formatters), ~3.2 ms with its
validation middleware, which also asks `eth_chainId` twice per call. In a load driver that is
the single biggest piece of event-loop CPU per flow. Here the function's ABI is resolved once;
a call is an `eth_abi` encode, one JSON-RPC request through the same web3 provider (so the same
keep-alive session, timeout and read retries of `chain.RpcProvider`) and an `eth_abi` decode:
~0.45 ms. Results match web3's: a single output unwrapped, addresses checksummed, structs as
tuples, arrays as lists.

Decoding uses eth_abi's registry with one change: a `uint256[]` is decoded in one slice instead
of element by element. A grantee's permission ids grow by one with every permission granted, so
eth_abi's ~10 µs per element made `resolve_grantee` the biggest piece of the driver's loop CPU
late in a 500-user run.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from eth_abi import encode
from eth_abi.codec import ABICodec
from eth_abi.decoding import BaseArrayDecoder, DynamicArrayDecoder, decode_uint_256
from eth_abi.exceptions import InsufficientDataBytes
from eth_abi.registry import has_arrlist, registry
from eth_utils import function_abi_to_4byte_selector, to_checksum_address
from eth_utils.abi import get_abi_input_types, get_abi_output_types
from web3.exceptions import ContractLogicError, Web3RPCError


class ViewFunction:
    """`await ViewFunction(contract, "userNonce")(address)`: one `eth_call` at `latest`."""

    def __init__(self, contract: Any, name: str):
        matches = [i for i in contract.abi if i.get("type") == "function" and i["name"] == name]
        if len(matches) != 1:
            raise ValueError(f"{name}: {len(matches)} functions of that name (need exactly one)")
        fn = matches[0]
        self.name = name
        self.provider = contract.w3.provider
        self.to = contract.address
        self.selector = function_abi_to_4byte_selector(fn)
        self.input_types = get_abi_input_types(fn)
        self.output_types = get_abi_output_types(fn)
        self.outputs = fn.get("outputs", [])

    async def __call__(self, *args: Any) -> Any:
        data = "0x" + (self.selector + encode(self.input_types, args)).hex()
        response = await self.provider.make_request(
            "eth_call", [{"to": self.to, "data": data}, "latest"]
        )
        error = response.get("error")
        if error is not None:
            details = error if isinstance(error, dict) else {}  # some nodes answer a bare string
            message = str(details.get("message", error))
            if "revert" in message.lower():
                raise ContractLogicError(message, data=details.get("data"))
            raise Web3RPCError(f"{self.name}: {message}", rpc_response=response)
        raw = bytes.fromhex(str(response["result"]).removeprefix("0x"))
        values = _CODEC.decode(self.output_types, raw)
        values = tuple(_web3_shaped(o, v) for o, v in zip(self.outputs, values, strict=True))
        return values[0] if len(values) == 1 else values


_VIEWS: weakref.WeakKeyDictionary[Any, dict[str, ViewFunction]] = weakref.WeakKeyDictionary()


def view(contract: Any, name: str) -> ViewFunction:
    """The contract's view `name`, its ABI resolved once per contract object (then cached)."""
    views = _VIEWS.setdefault(contract, {})
    if name not in views:
        views[name] = ViewFunction(contract, name)
    return views[name]


class _Uint256ArrayDecoder(DynamicArrayDecoder):
    """`uint256[]` in one slice: the same values and errors as eth_abi's per-element decode
    (a uint256 has no padding to check)."""

    def decode(self, stream: Any) -> tuple[int, ...]:
        size = decode_uint_256(stream)
        left = len(stream.getbuffer()) - stream.tell()
        if 32 * size > left:  # also a forged size of 2**255, before any read
            raise InsufficientDataBytes(f"Tried to read {32 * size} bytes, only got {left} bytes.")
        raw = stream.read(32 * size)
        return tuple([int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)])


class _ArrayDecoder(BaseArrayDecoder):
    """eth_abi's array decoders, but `_Uint256ArrayDecoder` for `uint256[]`."""

    @classmethod
    def from_type_str(cls, type_str: str, registry: Any) -> Any:
        if type_str == "uint256[]":
            return _Uint256ArrayDecoder(item_decoder=registry.get_decoder("uint256"))
        return BaseArrayDecoder.from_type_str(type_str, registry)


def _codec() -> ABICodec:
    fast = registry.copy()
    fast.unregister_decoder("has_arrlist")
    fast.register_decoder(has_arrlist, _ArrayDecoder, label="has_arrlist")
    return ABICodec(fast)


_CODEC = _codec()


# Element types that decode to what web3 gives as they are: no per-element reshaping needed.
_PLAIN = ("uint", "int", "bool", "bytes", "string")


def _web3_shaped(item: dict[str, Any], value: Any) -> Any:
    """Checksummed addresses and list arrays anywhere inside one decoded output, as web3 gives."""
    kind = item["type"]
    if kind.endswith("]"):
        inner = {**item, "type": kind[: kind.rindex("[")]}
        if inner["type"].startswith(_PLAIN) and not inner["type"].endswith("]"):
            return list(value)  # e.g. a grantee's growing uint256[] of permission ids
        return [_web3_shaped(inner, v) for v in value]
    if kind == "address":
        return _checksummed(value)
    if kind == "tuple":
        return tuple(_web3_shaped(c, v) for c, v in zip(item["components"], value, strict=True))
    return value


@functools.lru_cache(maxsize=4096)
def _checksummed(address: str) -> str:
    """Checksumming is a keccak per call; a run reads the same few addresses over and over."""
    return to_checksum_address(address)
