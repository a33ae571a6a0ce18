"""Compiles the workbench's Solidity with npm solc, cached by source hash.

`artifacts()` answers from `.cache/contracts/<sha256>.json` when the sources, compiler version
and settings are unchanged, so only the first start after an edit pays for the compiler (~3 s).
Deploying needs the bytecode from here; everything else reads the committed ABIs in
`workbench.vana.contracts`, which `python -m workbench.stack.compile --write-abis` regenerates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.params import PROJECT_ROOT
from workbench.vana.contracts import ABI_DIR, CONTRACT_NAMES, abi_json

CONTRACTS_DIR = Path(__file__).resolve().parent / "contracts"
COMPILE_SCRIPT = Path(__file__).resolve().parent / "solc_compile.mjs"
CACHE_DIR = PROJECT_ROOT / ".cache" / "contracts"
SOLC_PACKAGE = PROJECT_ROOT / "node_modules" / "solc" / "package.json"
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",  # what anvil runs by default; Moksha accepts it too
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
}

_memo: dict[str, dict[str, dict[str, Any]]] = {}


def _sources() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(CONTRACTS_DIR.glob("*.sol"))}


def _solc_version() -> str:
    if not SOLC_PACKAGE.is_file() or shutil.which("node") is None:
        raise WorkbenchError(
            "solc", "node or npm solc is missing (node_modules/solc)", "run make setup"
        )
    return json.loads(SOLC_PACKAGE.read_text(encoding="utf-8"))["version"]


def source_hash(sources: dict[str, str], solc_version: str) -> str:
    """Keys the cache: any change to a source, the compiler or the settings recompiles."""
    blob = json.dumps([sources, solc_version, SETTINGS], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _run_solc(sources: dict[str, str]) -> dict[str, Any]:
    request = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": SETTINGS,
    }
    proc = subprocess.run(
        ["node", str(COMPILE_SCRIPT)],
        input=json.dumps(request).encode(),
        capture_output=True,
        cwd=PROJECT_ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise WorkbenchError("solc", proc.stderr.decode(errors="replace")[-500:], "run make setup")
    output = json.loads(proc.stdout)
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise RuntimeError("solc failed:\n" + "\n".join(errors))
    return output


def _extract(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for unit in output["contracts"].values():
        for name, c in unit.items():
            if name in CONTRACT_NAMES:
                found[name] = {"abi": c["abi"], "bytecode": "0x" + c["evm"]["bytecode"]["object"]}
    return found


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    # Parallel test sessions may compile at once: readers must never see half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def artifacts() -> dict[str, dict[str, Any]]:
    """`{name: {"abi": list, "bytecode": "0x…"}}` for the four contracts, compiling on a cache miss."""
    sources = _sources()
    key = source_hash(sources, _solc_version())
    if key in _memo:
        return _memo[key]
    path = CACHE_DIR / f"{key}.json"
    if path.is_file():
        result = json.loads(path.read_text(encoding="utf-8"))
    else:
        result = _extract(_run_solc(sources))
        _write_atomic(path, result)
    _memo[key] = result
    return result


def write_abis(directory: Path = ABI_DIR) -> list[Path]:
    """Writes each contract's compiled ABI as `<directory>/<name>.json` (the committed ABIs)."""
    built = artifacts()
    paths = []
    for name in CONTRACT_NAMES:
        path = directory / f"{name}.json"
        path.write_text(abi_json(built[name]["abi"]), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench.stack.compile", description=__doc__)
    parser.add_argument(
        "--write-abis", action="store_true", help="also rewrite workbench/vana/abi/*.json"
    )
    args = parser.parse_args(argv)
    built = artifacts()
    sizes = ", ".join(f"{n} {len(a['bytecode']) // 2 - 1} B" for n, a in built.items())
    print(f"contracts compiled into {CACHE_DIR.relative_to(PROJECT_ROOT)}: {sizes}")
    if args.write_abis:
        for path in write_abis():
            print(f"wrote {path.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
