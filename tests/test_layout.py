"""The package layout's dependency rules (see each `workbench/*/__init__.py`), read from the source
with `ast` so imports inside functions count too, and the rule that only `e2e` tests start
processes (tests/conftest.py enforces it)."""

from __future__ import annotations

import ast
import asyncio
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ProcessStartRefused

from workbench.params import PROJECT_ROOT

WORKBENCH = PROJECT_ROOT / "workbench"
# What each package must never import (by module-name prefix).
FORBIDDEN = {
    "stack": ("workbench.analysis", "workbench.driver", "workbench.cli"),
    "analysis": ("workbench.stack", "workbench.driver", "workbench.cli"),
    "vana": ("workbench.driver", "workbench.stack", "workbench.analysis", "workbench.cli"),
    "driver": ("workbench.stack", "workbench.cli"),
}
# The driver touches the stack only to start it: the embedded stack and its fault plans.
DRIVER_MAY_START = ("workbench.stack.local", "workbench.stack.faults")
# Breaches allowed for now (none): the test fails on any breach not listed here and on a listed
# one that is gone, so this list only shrinks.
KNOWN_BREACHES: dict[str, list[str]] = {}
# The cross-cutting top-level modules sit below every package and import none of them.
CORE = ("params", "events", "request_log", "steps", "secrets", "errors")
PACKAGES = (
    "workbench.vana",
    "workbench.driver",
    "workbench.stack",
    "workbench.analysis",
    "workbench.cli",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every module (or module attribute) `source` imports, anywhere in it, as absolute dotted
    names: `from a.b import c` gives `a.b.c`, whether `c` is a module or a name in `a.b`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(package: str, module: str, names: Iterator[str]) -> list[str]:
    """The imports of `module` (in `workbench/<package>`) its package's rules forbid."""
    found = []
    for name in names:
        if not any(_within(name, p) for p in FORBIDDEN.get(package, ())):
            continue
        if package == "driver" and any(_within(name, a) for a in DRIVER_MAY_START):
            continue
        found.append(f"{module} imports {name}")
    return found


def _package_violations(package: str) -> list[str]:
    found = []
    for path in sorted((WORKBENCH / package).rglob("*.py")):
        module = module_name(path)
        names = imported_names(path.read_text(encoding="utf-8"), module, path.stem == "__init__")
        found += violations(package, module, names)
    return found


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_no_package(module: str) -> None:
    source = (WORKBENCH / f"{module}.py").read_text(encoding="utf-8")
    names = imported_names(source, f"workbench.{module}")
    assert [n for n in names if any(_within(n, p) for p in PACKAGES)] == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_layout(package: str) -> None:
    assert (WORKBENCH / package / "__init__.py").is_file()
    assert _package_violations(package) == KNOWN_BREACHES.get(package, [])


def test_the_rules_see_every_kind_of_import() -> None:
    source = """
import workbench.stack.anvil
from workbench.analysis import plots
from workbench import cli
from ..stack.relayer import Relayer
from workbench.stack.local import LocalStack
from workbench.stack import faults
def lazy():
    from workbench.stack.compile import artifacts
    importlib.import_module("workbench.driver.flow")
"""
    names = list(imported_names(source, "workbench.driver.runner"))
    assert "workbench.stack.relayer.Relayer" in names  # the relative import, resolved
    assert violations("driver", "workbench.driver.runner", iter(names)) == [
        "workbench.driver.runner imports workbench.stack.anvil",
        "workbench.driver.runner imports workbench.cli",
        "workbench.driver.runner imports workbench.stack.relayer.Relayer",
        "workbench.driver.runner imports workbench.stack.compile.artifacts",
    ]
    assert len(violations("vana", "workbench.vana.chain", iter(names))) == len(names) == 8
    assert violations("analysis", "workbench.analysis.x", iter(["workbench.stackx"])) == []


def test_tests_without_the_e2e_marker_cannot_start_processes() -> None:
    """This test has no e2e marker, so conftest refuses every way of starting a process."""
    with pytest.raises(ProcessStartRefused, match="e2e"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(ProcessStartRefused):
        asyncio.run(asyncio.create_subprocess_exec(sys.executable, "-c", "pass"))
    with pytest.raises(ProcessStartRefused):
        multiprocessing.get_context("spawn").Process(target=print).start()
    with pytest.raises(ProcessStartRefused):
        os.system("true")


@pytest.mark.e2e
def test_e2e_tests_may_start_processes() -> None:
    done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, check=True)
    assert done.stdout == b"42\n"
