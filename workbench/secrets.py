"""Keeping keys out of what the workbench writes: events, logs, server error messages, reports.

Keys reach the workbench only from the environment (`WORKBENCH_FUNDER_KEY`, the stack's
`WORKBENCH_SECRETS`) or the 0600 wallet file. Everything written can pass through a `Redactor`,
which replaces (1) any secret it was told about, wherever it appears, and (2) any 32-byte hex
value held under a name that says secret (`private_key`, `seed`, …) but not a public value
(`tx_hash`, `public_key`, `address`, `*_id`), so transaction hashes survive.

Reports get shared, so they are not redacted but refused: `refuse_secrets` raises if a file
holds a key (`find_secrets` says where, never what), checked against `known_secrets`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

REDACTED = "[redacted]"
FUNDER_KEY_ENV = "WORKBENCH_FUNDER_KEY"
SECRETS_ENV = "WORKBENCH_SECRETS"  # JSON the stack's child processes get their keys from
WALLET_FILE_ENV = "WORKBENCH_WALLET_FILE"
MIN_SECRET_LEN = 16  # shorter values would redact ordinary words
HEX64 = re.compile(r"(?<![0-9A-Fa-f])(?:0x)?[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")
SECRET_WORDS = ("private", "secret", "mnemonic", "seed", "key")
PUBLIC_WORDS = ("public", "hash", "address", "topic", "_id", "id_", "cid")
MNEMONIC_LENGTHS = (12, 15, 18, 21, 24)
# C-speed stand-ins for the HEX64 regex, which backtracks on every shorter hex run (addresses):
# translate marks hex digits "1" and the rest "0" (a 64-digit run exists iff 64 "1"s do), and
# bytes.find walks from run to run.
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_HEX_MARKS = bytes(49 if i in _HEX_DIGITS else 48 for i in range(256))
_HEX_RUN = b"1" * 64
# A JSON key whose value is a string or a list: only there can a label make `value()` redact
# (numbers stay as they are, an object's own keys label its values).
_JSON_TEXT_KEY = re.compile(r'"([^"\\]{1,80})":[\["]')
_JSON = json.JSONDecoder()
_WORD_RUN = re.compile(r"(?<![A-Za-z])[a-z]+(?:[^a-zA-Z0-9]{1,4}[a-z]+){11,}")


def has_hex64(text: str) -> bool:
    """Does `text` hold a run of 64+ hex digits (a candidate key)? Cheap."""
    return _HEX_RUN in text.encode("utf-8", "replace").translate(_HEX_MARKS)


def hex64_values(text: str) -> list[str]:
    """The 32-byte hex values in `text` (as HEX64 finds them), lower case without `0x`."""
    data = text.encode("utf-8", "replace")
    marks = data.translate(_HEX_MARKS)
    found = []
    start = marks.find(_HEX_RUN)  # the first digit of a run of 64 or more
    while start >= 0:
        end = marks.find(b"0", start + 64)  # the run's end
        end = len(marks) if end < 0 else end
        if end - start == 64:  # longer runs are no 32-byte value
            found.append(data[start:end].decode().lower())
        start = marks.find(_HEX_RUN, end)
    return found


def _json_value_at(line: str, start: int) -> str:
    """The JSON text of the value that starts at `start` (all the rest if it does not parse):
    a secret-named field redacts only a 32-byte hex inside its own value (e.g. an inference
    result's `keys` list of words does not make every flow event a redaction walk)."""
    try:
        return line[start : _JSON.raw_decode(line, start)[1]]
    except ValueError:
        return line[start:]


def secret_label(name: str) -> bool:
    """Does a field name say it holds a secret (and not a public value)?"""
    low = name.lower()
    return any(w in low for w in SECRET_WORDS) and not any(w in low for w in PUBLIC_WORDS)


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Secret values this process holds in its environment: `*_PRIVATE_KEY`, `WORKBENCH_*KEY*`
    (the funder) and every string inside the JSON of `WORKBENCH_SECRETS`."""
    env = os.environ if environ is None else environ
    found = [
        value
        for name, value in env.items()
        if name.endswith("_PRIVATE_KEY") or (name.startswith("WORKBENCH_") and "KEY" in name)
    ]
    if env.get(SECRETS_ENV):
        try:
            found += list(_strings(json.loads(env[SECRETS_ENV])))
        except ValueError:
            found.append(env[SECRETS_ENV])
    return [s for s in found if isinstance(s, str) and len(s.strip()) >= MIN_SECRET_LEN]


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _strings(value)


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Matches a multi-word secret (a mnemonic) however its words are separated: spaces,
    newlines, or quotes and commas of a JSON list."""
    words = [re.escape(w) for w in phrase.split()]
    return re.compile(r"(?<![A-Za-z])" + r"[^A-Za-z0-9]{1,4}".join(words) + r"(?![A-Za-z])", re.I)


@functools.cache
def _bip39() -> frozenset[str]:
    return frozenset(_mnemonic_checker().wordlist)


def find_mnemonics(text: str) -> list[str]:
    """Valid BIP-39 mnemonics (checksum included) inside `text`, whatever their separators.

    Only stretches of 12+ consecutive BIP-39 words are tried, each window of a mnemonic length
    checked: prose rarely has such a stretch, and a random one passes the checksum 1 in 16+."""
    found = []
    for run in _WORD_RUN.finditer(text):
        for stretch in _bip39_stretches(re.findall(r"[a-z]+", run.group())):
            for n in MNEMONIC_LENGTHS:
                for i in range(len(stretch) - n + 1):
                    phrase = " ".join(stretch[i : i + n])
                    if _mnemonic_checker().is_mnemonic_valid(phrase):
                        found.append(phrase)
    return found


def _bip39_stretches(words: list[str]) -> list[list[str]]:
    stretches, current = [], []
    for word in [*words, ""]:
        if word in _bip39():
            current.append(word)
            continue
        if len(current) >= MNEMONIC_LENGTHS[0]:
            stretches.append(current)
        current = []
    return stretches


@functools.cache
def _mnemonic_checker() -> Any:
    # Lazy: servers that never check a mnemonic (storage, RPC proxy) would start ~1.3 s slower
    # and ~20 MB bigger with it (measured); only the guard and config checks need it.
    from eth_account.hdaccount.mnemonic import Mnemonic
    from eth_account.types import Language

    return Mnemonic(Language.ENGLISH)


def looks_like_mnemonic(text: str) -> bool:
    """The whole of `text` is one BIP-39 mnemonic."""
    words = text.split()
    return len(words) in MNEMONIC_LENGTHS and bool(find_mnemonics(" ".join(words)))


class Redactor:
    """Replaces secrets in strings and in JSON-like values (events, log lines, error texts)."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._hex: set[str] = set()  # 64-hex secrets, lower case without 0x: a set lookup each
        self._phrases: list[tuple[str, re.Pattern[str]]] = []  # (its longest word, pattern)
        self._others: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            s = (secret or "").strip()
            if len(s) < MIN_SECRET_LEN:
                continue
            if HEX64.fullmatch(s):
                self._hex.add(s.lower().removeprefix("0x"))
            elif len(s.split()) > 1:
                self._phrases.append((max(s.lower().split(), key=len), phrase_pattern(s)))
            elif s not in self._others:
                self._others.append(s)

    def text(self, text: str, label: str | None = None) -> str:
        """`text` with known secrets replaced, and any 32-byte hex too when `label` says secret."""
        labelled = label is not None and secret_label(label)
        if (self._hex or labelled) and has_hex64(text):
            text = HEX64.sub(lambda m: self._hex_match(m, labelled), text)
        if self._phrases:
            low = text.lower()
            for word, pattern in self._phrases:
                if word in low:
                    text = pattern.sub(REDACTED, text)
        for other in self._others:
            if other in text:
                text = text.replace(other, REDACTED)
        return text

    def _hex_match(self, m: re.Match[str], labelled: bool) -> str:
        value = m.group()
        known = value.lower().removeprefix("0x") in self._hex
        return REDACTED if known or labelled else value

    def needed(self, line: str) -> bool:
        """Might `value()` change the event serialised as this JSON line? A cheap test, so the
        common event (no secret, no secret-named field) is written without a walk."""
        hexes = hex64_values(line)
        if any(h in self._hex for h in hexes):
            return True
        low = line.lower()
        if any(w in low and p.search(line) for w, p in self._phrases):
            return True
        if any(o in line for o in self._others):
            return True
        if not (hexes and any(w in low for w in SECRET_WORDS)):
            return False
        return any(
            secret_label(m.group(1)) and hex64_values(_json_value_at(line, m.end() - 1))
            for m in _JSON_TEXT_KEY.finditer(line)
        )

    def value(self, obj: Any, label: str | None = None) -> Any:
        """A copy of a JSON-like value with secrets replaced; dict keys label their values."""
        if isinstance(obj, str):
            return self.text(obj, label)
        if isinstance(obj, Mapping):
            return {k: self.value(v, str(k)) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.value(v, label) for v in obj]
        if obj is None or isinstance(obj, bool | int | float):
            return obj
        return self.text(str(obj), label)  # what json.dumps(default=str) would write


@functools.cache
def process_redactor() -> Redactor:
    """A Redactor for this process's own environment secrets (read once)."""
    return Redactor(env_secrets())


def redact(text: str) -> str:
    """`text` without this process's environment secrets (for server error messages)."""
    return process_redactor().text(text)


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter: the formatted line, traceback included, is redacted."""

    def __init__(self, inner: logging.Formatter | None, redactor: Redactor):
        super().__init__()
        self.inner, self.redactor = inner or logging.Formatter(), redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.text(self.inner.format(record))


def redact_logs(redactor: Redactor | None = None, logger: logging.Logger | None = None) -> None:
    """Makes every handler of `logger` (default: root) redact what it writes."""
    redactor = redactor or process_redactor()
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter, redactor))


# --------------------------------------------------------------------------- reports

_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_TAG = re.compile(r"<[^>]*>")
_DATA_URI = re.compile(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=\s]+")


def known_secrets(extra: Iterable[str] = ()) -> list[str]:
    """Keys this machine knows: the environment's (`env_secrets`) plus `extra` (a run's wallet
    keys and mnemonic: `workbench.driver.wallets.file_secrets` reads them from a wallet file)."""
    return env_secrets() + [s for s in extra if s]


def find_secrets(text: str, secrets: Iterable[str] = ()) -> list[str]:
    """Where `text` holds a secret: each hit described without the secret itself.

    Three rules: (1) any of `secrets`, with or without `0x`, case-insensitive (a mnemonic also
    with its words split by newlines, commas or quotes); (2) a 32-byte hex value whose nearest
    preceding label names a key or secret (`funder_private_key: 0x…`) and not a public value
    (`tx_hash`, `public_key`, `*_id`), so transaction hashes pass; (3) any valid BIP-39 mnemonic,
    known or not."""
    hits = []
    lowered = text.lower()
    known_hex: dict[str, int] = {}  # 32-byte keys: one pass over the text finds them all
    for i, secret in enumerate(secrets):
        needle = secret.strip().lower().removeprefix("0x")
        if HEX64.fullmatch(needle):
            known_hex[needle] = i
        elif len(needle) >= 16 and needle in lowered:
            hits.append(f"known secret #{i + 1} at offset {lowered.index(needle)}")
        elif len(needle.split()) > 1 and (words := phrase_pattern(needle).search(text)):
            hits.append(f"the words of known secret #{i + 1} at offset {words.start()}")
    for match in HEX64.finditer(lowered):
        known = known_hex.get(match.group().removeprefix("0x"))
        if known is not None:
            hits.append(f"known secret #{known + 1} at offset {match.start()}")
    scannable = _DATA_URI.sub("data:image", text)  # our own PNGs: huge and never text
    for match in HEX64.finditer(scannable):
        label = _label_before(scannable, match.start())
        if label and secret_label(label):
            hits.append(f"a 32-byte hex value labelled {label!r}")
    hits += [f"a {len(m.split())}-word BIP-39 mnemonic" for m in find_mnemonics(scannable)]
    return hits


def _label_before(text: str, pos: int) -> str | None:
    window = _TAG.sub(" ", text[max(0, pos - 300) : pos])[-80:]
    labels = _LABEL.findall(window)
    return labels[-1] if labels else None


def refuse_secrets(paths: Iterable[str | Path], secrets: Iterable[str] = ()) -> None:
    """Raises WorkbenchError if any file holds a private key; says where, never what."""
    secrets = list(secrets)
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        hits = find_secrets(path.read_text(encoding="utf-8", errors="replace"), secrets)
        if hits:
            raise WorkbenchError(
                "report",
                "refusing to write: contains a private key",
                f"{path.name} has {hits[0]}; keys belong in the environment or a 0600 wallet "
                "file, never in params, events or results. Remove it and render again",
            )
