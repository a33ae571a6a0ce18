"""The client side crypto of the Vana flow, byte-compatible with OpenPGP.js 6, eccrypto and viem.

- File password: EIP-191 signature of a fixed text (deterministic per wallet).
- File encryption: OpenPGP password-encrypted message with OpenPGP.js 6's default parameters.
  We write the packets ourselves because pysequoia always stretches with S2K count byte 255
  (4x OpenPGP.js's work) and holds the GIL; the S2K here is hashlib over large buffers, which
  releases the GIL, so callers can run it in a thread pool.
- Key sharing: ECIES in the eccrypto layout over coincurve (ECDH) and `cryptography`.

`encrypt_file` and `decrypt_file` cost ~10 ms of CPU (the S2K); run them off the event loop.
"""

from __future__ import annotations

import bz2
import hashlib
import hmac
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator

import pysequoia
from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:  # CFB lives in `decrepit` since cryptography 47 (deprecated in `modes`)
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature

ENCRYPTION_KEY_MESSAGE = "Please sign to retrieve your encryption key"

# OpenPGP ids (RFC 9580 tables).
_AES = {7: 16, 8: 24, 9: 32}  # symmetric algorithm id -> key bytes
_HASHES = {2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
_AES256, _SHA256 = 9, 8
_S2K_ITERATED, _S2K_COUNT_BYTE = 3, 0xE0  # OpenPGP.js 6 default: 16 MiB hashed
_TAG_PKESK, _TAG_SKESK, _TAG_COMPRESSED, _TAG_MARKER = 1, 3, 8, 10
_TAG_LITERAL, _TAG_SEIPD, _TAG_MDC = 11, 18, 19
# Packets of a message sent in the clear (signature, one-pass signature, compressed, literal).
_PLAIN_TAGS = (2, 4, _TAG_COMPRESSED, _TAG_LITERAL)
_MDC_HEADER = bytes([0xC0 | _TAG_MDC, 20])
_HASH_CHUNK = 64 * 1024  # hashlib drops the GIL for buffers over 2 KiB; bigger = fewer calls
_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_SIGNATURE_HEX = re.compile(r"0x[0-9a-fA-F]{130}")


class DecryptionError(ValueError):
    """Wrong password or key, a modified message, or bytes that are not a message at all."""


class _Unsupported(Exception):
    """A valid message our own reader does not handle; pysequoia gets it instead."""


# --- keys and signatures ----------------------------------------------------------------------


def _private_key_bytes(private_key: str) -> bytes:
    raw = bytes.fromhex(private_key.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError("private key must be 32 bytes of hex")
    return raw


def public_key_of(private_key: str) -> str:
    """Uncompressed secp256k1 public key, `0x04…` hex (what servers publish for ECIES)."""
    return "0x" + PrivateKey(_private_key_bytes(private_key)).public_key.format(False).hex()


def personal_sign(private_key: str, text: str) -> str:
    """EIP-191 personal_sign of `text`: 65-byte `0x` hex, as viem's `signMessage`."""
    signed = Account.sign_message(encode_defunct(text=text), private_key)
    return "0x" + bytes(signed.signature).hex()


def recover_personal(text: str, signature: str) -> str:
    """Checksum address that produced `signature` over `text` (EIP-191); ValueError if bad or
    not canonical (see `canonical_signature`)."""
    raw = canonical_signature(signature)
    try:
        return Account.recover_message(encode_defunct(text=text), signature=raw)
    except BadSignature as e:
        raise ValueError(f"signature: {e}") from e


def canonical_signature(signature: str) -> bytes:
    """The 65 bytes of `signature` (0x hex) if the contracts would accept them: s in the lower
    half of the curve order and v 27 or 28 (OpenZeppelin's ECDSA rules). A high-s copy of a
    valid signature recovers the same signer, so without this check one signature has two
    encodings; v 0/1 is a second spelling too. ValueError names the problem."""
    if not isinstance(signature, str) or not _SIGNATURE_HEX.fullmatch(signature):
        raise ValueError("signature: expected 65 bytes as 0x-prefixed hex")
    raw = bytes.fromhex(signature[2:])
    if int.from_bytes(raw[32:64], "big") > _SECP256K1_HALF_N:
        raise ValueError("signature: s is in the upper half of the curve order (malleable)")
    if raw[64] not in (27, 28):
        raise ValueError(f"signature: v is {raw[64]}, not 27 or 28")
    return raw


def encryption_key(private_key: str) -> str:
    """The file password of a wallet: its signature of the fixed Vana text."""
    return personal_sign(private_key, ENCRYPTION_KEY_MESSAGE)


# --- OpenPGP: packets -------------------------------------------------------------------------


def _s2k_count(count_byte: int) -> int:
    return (16 + (count_byte & 15)) << ((count_byte >> 4) + 6)


def _s2k(
    password: bytes, s2k_type: int, hash_name: str, salt: bytes, count: int, size: int
) -> bytes:
    """RFC 4880 3.7.1 string-to-key: hash (salt || password) repeated to `count` bytes."""
    unit = salt + password
    total = max(count, len(unit)) if s2k_type == _S2K_ITERATED else len(unit)
    block = unit * max(1, _HASH_CHUNK // len(unit)) if unit else b""
    key = b""
    for preload in range(64):  # more hash contexts, each preloaded with zeros, if key > digest
        h = hashlib.new(hash_name, b"\0" * preload)
        full, rest = divmod(total, len(block)) if block else (0, 0)
        for _ in range(full):
            h.update(block)
        h.update(block[:rest])  # block is whole units, so the stream stays in phase
        key += h.digest()
        if len(key) >= size:
            return key[:size]
    raise _Unsupported("S2K key too long")


def _cfb(key: bytes, data: bytes, encrypt: bool) -> bytes:
    # OpenPGP CFB for SKESK and SEIPD v1 is plain CFB-128 with a zero IV (no resync step).
    cipher = Cipher(algorithms.AES(key), CFB(b"\0" * 16))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _packet(tag: int, body: bytes) -> bytes:
    """New-format packet with a definite length, as OpenPGP.js writes them."""
    n = len(body)
    if n < 192:
        length = bytes([n])
    elif n < 8384:
        length = bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    else:
        length = b"\xff" + struct.pack(">I", n)
    return bytes([0xC0 | tag]) + length + body


def _packets(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """Yields (tag, body) of old- and new-format packets, joining partial body lengths."""
    pos, end = 0, len(buf)

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > end:
            raise DecryptionError("truncated OpenPGP packet")
        pos += n
        return buf[pos - n : pos]

    while pos < end:
        first = take(1)[0]
        if not first & 0x80:
            raise _Unsupported("not a binary OpenPGP message (armored?)")
        if first & 0x40:
            yield first & 0x3F, _new_format_body(take)
        else:
            kind = first & 3
            n = end - pos if kind == 3 else int.from_bytes(take((1, 2, 4)[kind]), "big")
            yield (first >> 2) & 0x0F, take(n)


def _new_format_body(take) -> bytes:
    parts: list[bytes] = []
    while True:
        o = take(1)[0]
        if o < 192:
            return b"".join([*parts, take(o)])
        if o < 224:
            return b"".join([*parts, take(((o - 192) << 8) + take(1)[0] + 192)])
        if o == 255:
            return b"".join([*parts, take(int.from_bytes(take(4), "big"))])
        parts.append(take(1 << (o & 0x1F)))  # partial body length: more chunks follow


# --- OpenPGP: encrypt -------------------------------------------------------------------------


def encrypt_file(data: bytes, password: str) -> bytes:
    """Binary OpenPGP message readable with `password`, byte-shaped as OpenPGP.js 6 writes it:
    SKESK v4 (AES-256, iterated+salted SHA-256 S2K, count byte 0xE0, encrypted session key),
    then SEIPD v1 (AES-256 CFB + SHA-1 MDC) around a binary literal packet."""
    salt, session_key = os.urandom(8), os.urandom(32)
    kek = _s2k(password.encode(), _S2K_ITERATED, "sha256", salt, _s2k_count(_S2K_COUNT_BYTE), 32)
    esk = _cfb(kek, bytes([_AES256]) + session_key, encrypt=True)
    skesk = bytes([4, _AES256, _S2K_ITERATED, _SHA256]) + salt + bytes([_S2K_COUNT_BYTE]) + esk

    literal = _packet(_TAG_LITERAL, b"b\0" + struct.pack(">I", int(time.time())) + data)
    prefix = os.urandom(16)
    plain = prefix + prefix[-2:] + literal + _MDC_HEADER
    plain += hashlib.sha1(plain).digest()
    seipd = b"\x01" + _cfb(session_key, plain, encrypt=True)
    return _packet(_TAG_SKESK, skesk) + _packet(_TAG_SEIPD, seipd)


# --- OpenPGP: decrypt -------------------------------------------------------------------------


def decrypt_file(blob: bytes, password: str) -> bytes:
    """Plaintext of a password-encrypted OpenPGP message (ours, OpenPGP.js's, any RFC 9580).

    SKESK v4 + SEIPD v1 (what OpenPGP.js 6 and `encrypt_file` write) is read here, with the
    S2K off the GIL; anything else (armor, AEAD, v6 packets) goes to pysequoia.
    Raises `DecryptionError` for a wrong password or a modified or malformed message."""
    try:
        return _decrypt_v4(bytes(blob), password.encode())
    except _Unsupported:
        return _decrypt_sequoia(bytes(blob), password)


def _decrypt_sequoia(blob: bytes, password: str) -> bytes:
    try:
        plain = pysequoia.decrypt(blob, passwords=[password]).bytes
        assert plain is not None  # None only when decrypting to a file
        return bytes(plain)
    except Exception as e:  # pysequoia raises bare RuntimeError with a Rust backtrace
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DecryptionError(f"OpenPGP decryption failed (wrong password?): {reason}") from e


def _decrypt_v4(blob: bytes, password: bytes) -> bytes:
    skesks, seipd = [], None
    for tag, body in _packets(blob):
        if tag == _TAG_SKESK:
            skesks.append(body)
        elif tag == _TAG_SEIPD:
            seipd = body
            break
        elif tag in _PLAIN_TAGS:  # data in the clear: pysequoia would "decrypt" it as is
            raise DecryptionError(f"not an encrypted OpenPGP message (packet tag {tag} first)")
        elif tag not in (_TAG_PKESK, _TAG_MARKER):
            raise _Unsupported(f"packet tag {tag}")
    if seipd is None or not skesks:
        raise DecryptionError("not a password-encrypted OpenPGP message")
    if seipd[:1] != b"\x01":
        raise _Unsupported("SEIPD version 2 (AEAD)")
    keys = [k for body in skesks if (k := _session_key(body, password))]
    if not keys:
        raise DecryptionError("wrong password for this OpenPGP message")
    for key in keys:
        plain = _cfb(key, seipd[1:], encrypt=False)
        if _mdc_ok(plain):
            return _literal_data(plain[18:-22])
    raise DecryptionError("wrong password, or the message was modified (MDC check failed)")


def _session_key(skesk: bytes, password: bytes) -> bytes | None:
    """Session key from a v4 SKESK, or None when the password cannot be right."""
    if len(skesk) < 4 or skesk[0] != 4:
        raise _Unsupported("SKESK version other than 4")
    algo, s2k_type, hash_id = skesk[1], skesk[2], skesk[3]
    if algo not in _AES or hash_id not in _HASHES or s2k_type not in (0, 1, _S2K_ITERATED):
        raise _Unsupported(f"SKESK cipher {algo} / S2K {s2k_type} / hash {hash_id}")
    salt_len = 0 if s2k_type == 0 else 8
    head = 4 + salt_len + (s2k_type == _S2K_ITERATED)
    if len(skesk) < head:
        raise DecryptionError("truncated SKESK packet")
    count = _s2k_count(skesk[head - 1]) if s2k_type == _S2K_ITERATED else 0
    salt, esk = skesk[4 : 4 + salt_len], skesk[head:]
    kek = _s2k(password, s2k_type, _HASHES[hash_id], salt, count, _AES[algo])
    if not esk:  # no encrypted session key: the S2K output is the session key
        return kek
    plain = _cfb(kek, esk, encrypt=False)
    if plain[0] not in _AES or len(plain) - 1 != _AES[plain[0]]:
        return None  # a wrong password decrypts the algorithm byte to noise
    return plain[1:]


def _mdc_ok(plain: bytes) -> bool:
    # 18-byte random prefix, data, then MDC packet d3 14 + SHA-1(prefix || data || d3 14).
    if len(plain) < 18 + 22 or plain[-22:-20] != _MDC_HEADER:
        return False
    return hmac.compare_digest(hashlib.sha1(plain[:-20]).digest(), plain[-20:])


def _literal_data(inner: bytes) -> bytes:
    packets = list(_packets(inner))
    if len(packets) != 1:
        raise _Unsupported("signed or multi-packet message")
    tag, body = packets[0]
    if tag == _TAG_COMPRESSED:
        return _literal_data(_decompress(body))
    if tag != _TAG_LITERAL or len(body) < 6 or len(body) < 6 + body[1]:
        raise _Unsupported(f"packet tag {tag} inside the encrypted data")
    return body[6 + body[1] :]  # format, name length, name, 4-byte date, data


def _decompress(body: bytes) -> bytes:
    if not body:
        raise DecryptionError("empty compressed packet")
    algo, data = body[0], body[1:]
    try:
        if algo == 0:
            return data
        if algo in (1, 2):  # ZIP is raw deflate, ZLIB has the zlib header
            return zlib.decompressobj(-15 if algo == 1 else 15).decompress(data)
        if algo == 3:
            return bz2.decompress(data)
    except (zlib.error, OSError, ValueError) as e:
        raise DecryptionError(f"corrupt compressed data: {e}") from e
    raise _Unsupported(f"compression algorithm {algo}")


# --- ECIES (eccrypto layout) ------------------------------------------------------------------


def _public_key(public_key: str) -> PublicKey:
    raw = bytes.fromhex(public_key.removeprefix("0x"))
    if len(raw) == 64:  # some servers publish x || y without the 04 prefix
        raw = b"\x04" + raw
    if len(raw) not in (33, 65):
        raise ValueError("public key must be 64 or 65 (04-prefixed) bytes of hex")
    return PublicKey(raw)


def _shared_x(private: bytes, public: PublicKey) -> bytes:
    return public.multiply(private).format(False)[1:33]


def _ecies_keys(shared_x: bytes) -> tuple[bytes, bytes]:
    digest = hashlib.sha512(shared_x).digest()
    return digest[:32], digest[32:]


def ecies_encrypt(public_key: str, data: bytes) -> str:
    """eccrypto-layout ECIES to `public_key`: hex of iv || ephemeral key || ciphertext || mac."""
    recipient = _public_key(public_key)
    while True:
        ephemeral = PrivateKey()
        shared = _shared_x(ephemeral.secret, recipient)
        # eccrypto's pure-JS build drops leading zero bytes of x before hashing, its native
        # build keeps all 32: redraw so that both builds derive the same keys.
        if shared[0]:
            break
    enc_key, mac_key = _ecies_keys(shared)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).encryptor()
    body = iv + ephemeral.public_key.format(False) + encryptor.update(padded) + encryptor.finalize()
    return (body + hmac.new(mac_key, body, hashlib.sha256).digest()).hex()


def ecies_decrypt(private_key: str, ciphertext: str) -> bytes:
    """Opens `ecies_encrypt`/eccrypto output; raises `DecryptionError` on a bad MAC."""
    try:
        raw = bytes.fromhex(ciphertext.removeprefix("0x"))
    except ValueError as e:
        raise DecryptionError("ECIES ciphertext is not hex") from e
    if len(raw) < 16 + 65 + 16 + 32 or (len(raw) - 16 - 65 - 32) % 16:
        raise DecryptionError("ECIES ciphertext has the wrong length")
    iv, ephemeral, ct, mac = raw[:16], raw[16:81], raw[81:-32], raw[-32:]
    private = _private_key_bytes(private_key)
    try:
        shared = _shared_x(private, PublicKey(ephemeral))
    except ValueError as e:
        raise DecryptionError(f"ECIES ephemeral key invalid: {e}") from e
    # Accept both eccrypto builds' secrets: 32 bytes, or leading zeros dropped (pure-JS).
    for secret in dict.fromkeys((shared, shared.lstrip(b"\0"))):
        enc_key, mac_key = _ecies_keys(secret)
        expected = hmac.new(mac_key, raw[:-32], hashlib.sha256).digest()
        if hmac.compare_digest(expected, mac):
            decryptor = Cipher(algorithms.AES(enc_key), modes.CBC(iv)).decryptor()
            unpadder = padding.PKCS7(128).unpadder()
            try:
                padded = decryptor.update(ct) + decryptor.finalize()
                return unpadder.update(padded) + unpadder.finalize()
            except ValueError as e:
                raise DecryptionError("ECIES padding invalid") from e
    raise DecryptionError("ECIES MAC mismatch: wrong key or modified ciphertext")
