"""The EIP-712 `ServerFilesAndPermission` a user signs and the relayer submits on chain.

Typed data here is viem-shaped (`{domain, types, primaryType, message}`) and JSON-safe, so the
same dict is signed, sent over HTTP and checked by the server. `validate` is the one gate for
typed data from outside: it accepts what JS clients send (uint256 as int or decimal string,
addresses in any case, `types` with or without `EIP712Domain`) and answers the canonical form,
or raises `ValueError` naming the offending field. `Validated` keeps that answer, so a server
checks a (possibly huge) payload once and then recovers and encodes it without checking again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_keys.exceptions import BadSignature
from eth_utils import is_checksum_address, keccak, to_checksum_address

from workbench.vana.crypto import canonical_signature

DOMAIN_NAME = "VanaDataPortabilityPermissions"
DOMAIN_VERSION = "1"
PRIMARY_TYPE = "ServerFilesAndPermission"

_STRUCTS: dict[str, tuple[tuple[str, str], ...]] = {
    "EIP712Domain": (
        ("name", "string"),
        ("version", "string"),
        ("chainId", "uint256"),
        ("verifyingContract", "address"),
    ),
    "Permission": (("account", "address"), ("key", "string")),
    PRIMARY_TYPE: (
        ("nonce", "uint256"),
        ("granteeId", "uint256"),
        ("grant", "string"),
        ("fileUrls", "string[]"),
        ("schemaIds", "uint256[]"),
        ("serverAddress", "address"),
        ("serverUrl", "string"),
        ("serverPublicKey", "string"),
        ("filePermissions", "Permission[][]"),
    ),
}
_UINT256_MAX = 2**256 - 1
_DECIMAL = re.compile(r"[0-9]{1,78}")  # ASCII only: int() would also take other scripts' digits
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def types() -> dict[str, list[dict[str, str]]]:
    """The EIP-712 types, `EIP712Domain` included (a fresh copy each call)."""
    return {name: [{"name": n, "type": t} for n, t in fields] for name, fields in _STRUCTS.items()}


def typed_data(chain_id: int, verifying_contract: str, message: dict[str, Any]) -> dict[str, Any]:
    """Canonical typed data for `message` under the DataPortabilityPermissions domain."""
    domain = {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": verifying_contract,
    }
    return validate(
        {"domain": domain, "types": types(), "primaryType": PRIMARY_TYPE, "message": message}
    )


def validate(typed: Any) -> dict[str, Any]:
    """Checks typed data from anywhere (e.g. an HTTP body) and answers its canonical form:
    ints as int, checksum addresses, full `types`. Raises `ValueError` naming the bad field."""
    _check_keys("typedData", typed, ("domain", "types", "primaryType", "message"))
    if typed["primaryType"] != PRIMARY_TYPE:
        raise ValueError(f"typedData.primaryType: expected {PRIMARY_TYPE!r}")
    _check_types(typed["types"])
    domain = _value("domain", "EIP712Domain", typed["domain"])
    if domain["name"] != DOMAIN_NAME or domain["version"] != DOMAIN_VERSION:
        raise ValueError(f"domain: expected name {DOMAIN_NAME!r} and version {DOMAIN_VERSION!r}")
    message = _value("message", PRIMARY_TYPE, typed["message"])
    return {"domain": domain, "types": types(), "primaryType": PRIMARY_TYPE, "message": message}


def digest(typed: dict[str, Any]) -> bytes:
    """The 32-byte EIP-712 hash that is signed (viem's `hashTypedData`)."""
    s = _signable(typed)
    return keccak(b"\x19" + s.version + s.header + s.body)


def sign(private_key: str, typed: dict[str, Any]) -> str:
    """EIP-712 signature, 65-byte `0x` hex (as viem's `signTypedData`)."""
    return "0x" + bytes(Account.sign_message(_signable(typed), private_key).signature).hex()


def recover(typed: dict[str, Any], signature: str) -> str:
    """Checksum address of the signer; `ValueError` for a malformed or non-canonical signature
    (high s, v not 27/28: the contract refuses those)."""
    return Validated.of(typed).recover(signature)


def contract_input(typed: dict[str, Any]) -> tuple:
    """The struct argument of `addServerFilesAndPermissions(input, signature)`."""
    return Validated.of(typed).contract_input()


@dataclass(frozen=True)
class Validated:
    """Typed data checked once (`of`); its methods trust it instead of checking it again, which
    for a payload of thousands of entries is most of the cost."""

    typed: dict[str, Any]

    @classmethod
    def of(cls, typed: Any) -> Validated:
        return cls(validate(typed))

    def recover(self, signature: str) -> str:
        raw = canonical_signature(signature)
        signable = encode_typed_data(full_message=self.typed)
        try:
            return Account.recover_message(signable, signature=raw)
        except BadSignature as e:
            raise ValueError(f"signature: {e}") from e

    def contract_input(self) -> tuple:
        m = self.typed["message"]
        permissions = [[(p["account"], p["key"]) for p in file] for file in m["filePermissions"]]
        return (
            m["nonce"],
            m["granteeId"],
            m["grant"],
            m["fileUrls"],
            m["schemaIds"],
            m["serverAddress"],
            m["serverUrl"],
            m["serverPublicKey"],
            permissions,
        )


def _signable(typed: dict[str, Any]) -> SignableMessage:
    # Canonical form first: eth-account would silently coerce hex strings, bools and the like.
    return encode_typed_data(full_message=validate(typed))


def _check_keys(path: str, value: Any, names: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected an object")
    missing = [n for n in names if n not in value]
    if missing:
        raise ValueError(f"{path}.{missing[0]}: missing")
    extra = sorted(str(k) for k in value if k not in names)
    if extra:
        raise ValueError(f"{path}: unexpected field(s) {', '.join(extra)[:200]}")


def _check_types(value: Any) -> None:
    # Our types define the digest; a client that signed other types signed something else.
    if not isinstance(value, dict):
        raise ValueError("typedData.types: expected an object")
    expected = types()
    for name in value:
        if name not in expected:
            raise ValueError(f"typedData.types: unexpected type {str(name)[:100]!r}")
        if value[name] != expected[name]:
            raise ValueError(f"typedData.types.{name}: does not match the contract's definition")
    for name in ("Permission", PRIMARY_TYPE):
        if name not in value:
            raise ValueError(f"typedData.types.{name}: missing")


def _value(path: str, type_: str, value: Any) -> Any:
    if type_.endswith("[]"):
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list")
        return [_value(f"{path}[{i}]", type_[:-2], v) for i, v in enumerate(value)]
    if type_ == "uint256":
        return _uint256(path, value)
    if type_ == "address":
        return _address(path, value)
    if type_ == "string":
        return _string(path, value)
    fields = _STRUCTS[type_]
    _check_keys(path, value, tuple(n for n, _ in fields))
    return {n: _value(f"{path}.{n}", t, value[n]) for n, t in fields}


def _uint256(path: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = int(value)
    else:
        raise ValueError(f"{path}: expected a uint256 (integer or decimal string)")
    if not 0 <= number <= _UINT256_MAX:
        raise ValueError(f"{path}: out of uint256 range")
    return number


def _address(path: str, value: Any) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ValueError(f"{path}: expected a 0x-prefixed 20-byte hex address")
    checksummed = _checksummed(value)
    if checksummed is None:
        raise ValueError(f"{path}: bad EIP-55 checksum")
    return checksummed


@lru_cache(maxsize=4096)
def _checksummed(value: str) -> str | None:
    """The EIP-55 form, or None for a mixed-case spelling that is not it. Cached: one payload
    may repeat an address thousands of times, and each check hashes."""
    mixed_case = value[2:] not in (value[2:].lower(), value[2:].upper())
    if mixed_case and not is_checksum_address(value):
        return None
    return to_checksum_address(value)


def _string(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{path}: expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates survive JSON parsing but not signing
        raise ValueError(f"{path}: not valid unicode text") from e
    return value
