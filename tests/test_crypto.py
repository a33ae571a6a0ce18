"""workbench.vana.crypto against the JavaScript libraries the real client uses (OpenPGP.js 6,
eccrypto 1.1.6, viem), run by node at test time; one node process per test at most."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from types import SimpleNamespace

import pysequoia
import pytest
from coincurve import PrivateKey, PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from jsinterop import run_jobs, run_node

from workbench.params import PROJECT_ROOT
from workbench.vana import crypto
from workbench.vana.crypto import DecryptionError

VECTORS = PROJECT_ROOT / "tests" / "fixtures" / "eccrypto-vectors.json"  # eccrypto_vectors.mjs
KEYS = ["0x" + hashlib.sha256(f"wallet {i}".encode()).hexdigest() for i in range(3)]
PASSWORD = crypto.encryption_key(KEYS[0])
# Sizes around the packet length encodings (1-, 2- and 5-octet) and the flow's 1/10/100 KB.
SIZES = [0, 185, 186, 1024, 8000, 10 * 1024, 100 * 1024]


def _data(n: int) -> bytes:
    return os.urandom(n)


# --- EIP-191 ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_encryption_key_equals_viem_sign_message():
    texts = [crypto.ENCRYPTION_KEY_MESSAGE, "héllo ✓ 🌍", ""]
    jobs = [{"op": "signMessage", "privateKey": k, "message": t} for k in KEYS for t in texts]
    results = run_jobs("viem.mjs", jobs)
    for job, result in zip(jobs, results, strict=True):
        assert crypto.personal_sign(job["privateKey"], job["message"]) == result["signature"]
    for key, result in zip(KEYS, results[:: len(texts)], strict=True):
        assert crypto.encryption_key(key) == result["signature"]
        assert len(bytes.fromhex(result["signature"][2:])) == 65


def test_recover_personal_and_public_key():
    key = KEYS[1]
    address = Account.from_key(key).address
    assert crypto.recover_personal("x ✓", crypto.personal_sign(key, "x ✓")) == address
    public = bytes.fromhex(crypto.public_key_of(key)[2:])
    assert public[0] == 4 and len(public) == 65
    assert to_checksum_address(keccak(public[1:])[-20:]) == address
    with pytest.raises(ValueError):
        crypto.recover_personal("x", "0x" + "00" * 65)


def test_only_canonical_signatures_are_recovered():
    """A high-s twin and a v of 0/1 recover the same signer in eth-account; the contracts (and
    so the servers) refuse both, so one signature has exactly one accepted spelling."""
    key, text = KEYS[0], "operation"
    good = crypto.personal_sign(key, text)
    raw = bytes.fromhex(good[2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(raw[32:64], "big")
    high_s = "0x" + (raw[:32] + (n - s).to_bytes(32, "big") + bytes([55 - raw[64]])).hex()
    low_v = "0x" + (raw[:64] + bytes([raw[64] - 27])).hex()
    assert Account.recover_message(encode_defunct(text=text), signature=high_s) == (
        Account.from_key(key).address
    )  # what eth-account alone would accept
    assert crypto.canonical_signature(good) == raw
    for signature, problem in ((high_s, "upper half"), (low_v, "not 27 or 28"), ("0x12", "65")):
        with pytest.raises(ValueError, match=problem):
            crypto.recover_personal(text, signature)


# --- OpenPGP ----------------------------------------------------------------------------------


def _packet_header(blob: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, body start, body length) of a new-format packet with a definite length."""
    first, o = blob[pos], blob[pos + 1]
    assert first & 0xC0 == 0xC0, "new-format packet header"
    if o < 192:
        return first & 0x3F, pos + 2, o
    if o < 224:
        return first & 0x3F, pos + 3, ((o - 192) << 8) + blob[pos + 2] + 192
    assert o == 255, "definite length"
    return first & 0x3F, pos + 6, int.from_bytes(blob[pos + 2 : pos + 6], "big")


def test_encrypt_file_writes_openpgp_js_parameters():
    blob = crypto.encrypt_file(_data(10 * 1024), PASSWORD)
    tag, start, length = _packet_header(blob, 0)
    skesk = blob[start : start + length]
    assert (tag, length) == (3, 46)  # SKESK carrying an encrypted session key
    assert skesk[0] == 4  # version 4
    assert skesk[1] == 9  # AES-256
    assert skesk[2:4] == bytes([3, 8])  # S2K iterated+salted, SHA-256
    assert skesk[12] == 0xE0  # count byte: 16,777,216 bytes hashed
    assert len(skesk[13:]) == 33  # algorithm byte + 32-byte session key
    tag, start, length = _packet_header(blob, start + length)
    assert tag == 18 and blob[start] == 1  # SEIPD v1 (CFB + MDC)
    assert start + length == len(blob)
    other = crypto.encrypt_file(_data(10 * 1024), PASSWORD)
    assert other[4:12] != skesk[4:12], "salt is random"


@pytest.mark.e2e
def test_openpgp_js_decrypts_ours():
    plains = [_data(n) for n in SIZES]
    jobs = [
        {"op": "decrypt", "blob": crypto.encrypt_file(p, PASSWORD).hex(), "password": PASSWORD}
        for p in plains
    ]
    unicode_pw = "pässwörd ✓"
    jobs.append(
        {
            "op": "decrypt",
            "blob": crypto.encrypt_file(b"u", unicode_pw).hex(),
            "password": unicode_pw,
        }
    )
    jobs.append({**jobs[1], "password": "wrong"})
    jobs[0]["inspect"] = True
    results = run_jobs("openpgp.mjs", jobs)
    for plain, result in zip(plains, results, strict=False):
        assert result.get("data") == plain.hex(), result.get("error")
    assert results[0]["format"] == ord("b") and results[0]["filename"] == ""
    assert results[-2]["data"] == b"u".hex()
    assert "error" in results[-1]


@pytest.mark.e2e
def test_we_decrypt_openpgp_js(monkeypatch):
    plains = [_data(n) for n in SIZES]
    jobs = [{"op": "encrypt", "data": p.hex(), "password": PASSWORD} for p in plains]
    variants = [{"compression": "zlib"}, {"compression": "zip"}, {"aead": True}, {"armor": True}]
    json_plain = json.dumps({"items": list(range(2000))}).encode()  # compressible
    jobs += [
        {"op": "encrypt", "data": json_plain.hex(), "password": PASSWORD, **v} for v in variants
    ]
    results = run_jobs("openpgp.mjs", jobs)
    blobs = [bytes.fromhex(r["blob"]) if "blob" in r else r["armored"].encode() for r in results]

    def no_fallback(blob, password):
        raise AssertionError("OpenPGP.js default output must not need pysequoia")

    # Defaults and compression go through our reader (S2K off the GIL), not pysequoia.
    with monkeypatch.context() as m:
        m.setattr(crypto, "_decrypt_sequoia", no_fallback)
        for plain, blob in zip(plains, blobs, strict=False):
            assert crypto.decrypt_file(blob, PASSWORD) == plain
        for blob in blobs[len(plains) : len(plains) + 2]:
            assert crypto.decrypt_file(blob, PASSWORD) == json_plain
    # AEAD (SEIPD v2) and armor: pysequoia reads them.
    for blob in blobs[len(plains) + 2 :]:
        assert crypto.decrypt_file(blob, PASSWORD) == json_plain
    with pytest.raises(DecryptionError, match="wrong password"):
        crypto.decrypt_file(blobs[1], "wrong")
    with pytest.raises(DecryptionError):
        crypto.decrypt_file(blobs[len(plains) + 2], "wrong")


def test_pysequoia_decrypts_ours():
    for n in (0, 1024, 100 * 1024):
        plain = _data(n)
        blob = crypto.encrypt_file(plain, PASSWORD)
        assert bytes(pysequoia.decrypt(blob, passwords=[PASSWORD]).bytes) == plain


def test_decrypt_file_failures_are_clear():
    assert issubclass(DecryptionError, ValueError)
    blob = crypto.encrypt_file(b"secret data" * 100, PASSWORD)
    with pytest.raises(DecryptionError, match="wrong password"):
        crypto.decrypt_file(blob, PASSWORD + "x")
    tampered = bytearray(blob)
    tampered[len(blob) // 2] ^= 1
    with pytest.raises(DecryptionError, match="MDC"):
        crypto.decrypt_file(bytes(tampered), PASSWORD)
    for garbage in (b"", blob[:30], blob[:-5], b"\x00not pgp", os.urandom(200)):
        with pytest.raises(DecryptionError):
            crypto.decrypt_file(garbage, PASSWORD)


@settings(max_examples=10, deadline=None)  # each case runs a 16 MiB S2K twice
@given(data=st.binary(max_size=3000), password=st.text(min_size=1, max_size=40))
def test_file_round_trip(data, password):
    assert crypto.decrypt_file(crypto.encrypt_file(data, password), password) == data


# --- ECIES ------------------------------------------------------------------------------------


def _vectors() -> list[dict]:
    return json.loads(VECTORS.read_text())["vectors"]


def test_ecies_vectors_decrypt():
    for v in _vectors():
        e = v["encrypted"]
        blob = e["iv"] + e["ephemPublicKey"] + e["ciphertext"] + e["mac"]
        assert crypto.ecies_decrypt(v["privateKey"], blob) == bytes.fromhex(v["message"]), v["name"]
        assert crypto.public_key_of(v["privateKey"]) == "0x" + v["publicKey"]


def test_ecies_vectors_encrypt_byte_for_byte(monkeypatch):
    """Given eccrypto's IV and ephemeral key, we write exactly eccrypto's bytes."""
    for v in _vectors():
        e = v["encrypted"]
        ephemeral = PrivateKey(bytes.fromhex(v["ephemPrivateKey"]))
        monkeypatch.setattr(crypto, "PrivateKey", lambda ephemeral=ephemeral: ephemeral)
        monkeypatch.setattr(
            crypto, "os", SimpleNamespace(urandom=lambda n, e=e: bytes.fromhex(e["iv"]))
        )
        ours = crypto.ecies_encrypt("0x" + v["publicKey"], bytes.fromhex(v["message"]))
        assert ours == e["iv"] + e["ephemPublicKey"] + e["ciphertext"] + e["mac"], v["name"]


@pytest.mark.e2e
def test_ecies_vectors_are_what_the_script_makes():
    """The committed vectors are what tests/js/eccrypto_vectors.mjs makes with the pinned eccrypto."""
    assert run_node("eccrypto_vectors.mjs", {}) == json.loads(VECTORS.read_text())


def _leading_zero_ephemeral(recipient_public: str) -> PrivateKey:
    """An ephemeral key whose shared x starts with 0x00 (where eccrypto's builds disagree)."""
    recipient = PublicKey(bytes.fromhex(recipient_public[2:]))
    while True:
        key = PrivateKey()
        if recipient.multiply(key.secret).format(False)[1] == 0:
            return key


@pytest.mark.e2e
def test_eccrypto_decrypts_ours(monkeypatch):
    key = KEYS[2]
    public = crypto.public_key_of(key)  # 0x04…
    forms = [public, public[2:], "0x" + public[4:], public[4:]]  # with/without 0x and 04
    messages = [b"", b"x", PASSWORD.encode(), _data(1024)]
    cases = [(f, m) for f in forms for m in messages]
    bad = _leading_zero_ephemeral(public)
    draws = iter([bad])
    real = crypto.PrivateKey
    monkeypatch.setattr(crypto, "PrivateKey", lambda *a: next(draws, None) or real(*a))
    redrawn = crypto.ecies_encrypt(public, b"redrawn")  # first draw is rejected
    monkeypatch.undo()
    assert redrawn[32:162] != bad.public_key.format(False).hex()
    cases.append((public, b"redrawn"))
    cts = [crypto.ecies_encrypt(f, m) for f, m in cases[:-1]] + [redrawn]
    jobs = [{"op": "decrypt", "privateKey": key, "ciphertext": ct} for ct in cts]
    results = run_jobs("eccrypto.mjs", jobs)
    for (_, plain), result in zip(cases, results, strict=True):
        assert result.get("data") == plain.hex(), result.get("error")


@pytest.mark.e2e
def test_we_decrypt_eccrypto():
    key = KEYS[2]
    public = crypto.public_key_of(key)[2:]
    messages = [b"", b"x", PASSWORD.encode(), _data(1024)]
    jobs = [{"op": "encrypt", "publicKey": public, "data": m.hex()} for m in messages]
    # eccrypto's pure-JS build hashes x with its leading zero bytes dropped.
    quirk = _leading_zero_ephemeral("0x" + public)
    jobs.append(
        {
            "op": "encrypt",
            "publicKey": public,
            "data": "abcd",
            "ephemPrivateKey": quirk.secret.hex(),
        }
    )
    out = run_node("eccrypto.mjs", {"jobs": jobs})
    for job, result in zip(jobs, out["results"], strict=True):
        assert crypto.ecies_decrypt(key, result["ciphertext"]) == bytes.fromhex(job["data"])
        assert crypto.ecies_decrypt(key, "0x" + result["ciphertext"]) == bytes.fromhex(job["data"])
    if out["build"] == "js":  # the quirk case really hashed a 31-byte x
        raw = bytes.fromhex(out["results"][-1]["ciphertext"])
        x = PublicKey(raw[16:81]).multiply(bytes.fromhex(key[2:])).format(False)[1:33]
        _, mac_key = crypto._ecies_keys(x.lstrip(b"\0"))
        assert x[0] == 0 and hmac.new(mac_key, raw[:-32], "sha256").digest() == raw[-32:]


def test_ecies_tampering_and_wrong_key_fail():
    key = KEYS[0]
    ct = bytes.fromhex(crypto.ecies_encrypt(crypto.public_key_of(key), b"the file password"))
    for pos in (0, 20, 16 + 65, len(ct) - 1):  # iv, ephemeral key, ciphertext, mac
        tampered = bytearray(ct)
        tampered[pos] ^= 1
        with pytest.raises(DecryptionError):
            crypto.ecies_decrypt(key, tampered.hex())
    with pytest.raises(DecryptionError, match="MAC"):
        crypto.ecies_decrypt(KEYS[1], ct.hex())
    for garbage in ("zz", "", ct[:100].hex(), ct.hex()[:-2]):
        with pytest.raises(DecryptionError):
            crypto.ecies_decrypt(key, garbage)
    with pytest.raises(ValueError):
        crypto.ecies_encrypt("0x1234", b"x")


_BLOB = crypto.encrypt_file(b"fuzz me" * 50, "pw")


@settings(max_examples=60, deadline=None)
@given(
    cut=st.integers(0, len(_BLOB)),
    flips=st.lists(st.tuples(st.integers(0, len(_BLOB) - 1), st.integers(1, 255)), max_size=3),
)
def test_decrypt_file_damaged_input_raises_only_decryption_error(cut, flips):
    damaged = bytearray(_BLOB)
    for pos, xor in flips:
        damaged[pos] ^= xor
    try:
        assert crypto.decrypt_file(bytes(damaged[:cut]), "pw") == b"fuzz me" * 50
    except DecryptionError:
        pass


def test_a_message_in_the_clear_is_not_decrypted_as_is():
    # Hypothesis found it: one flipped bit turns the SKESK header into an empty literal packet,
    # which pysequoia "decrypts" to b"". Data in the clear must never pass for decrypted data.
    damaged = bytearray(_BLOB)
    damaged[0] ^= 108  # 0xC3 (new-format SKESK) -> 0xAF (old-format literal data)
    with pytest.raises(DecryptionError, match="not an encrypted"):
        crypto.decrypt_file(bytes(damaged[:11]), "pw")
    literal = bytes([0xCB, 8]) + b"b\x00\x00\x00\x00\x00hi"  # a literal packet, no encryption
    with pytest.raises(DecryptionError, match="not an encrypted"):
        crypto.decrypt_file(literal, "pw")


@given(text=st.text(max_size=300) | st.binary(max_size=200).map(bytes.hex))
def test_ecies_decrypt_garbage_raises_only_decryption_error(text):
    with pytest.raises(DecryptionError):
        crypto.ecies_decrypt(KEYS[0], text)
