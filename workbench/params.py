"""Everything a run reads from `params/`: where the files are, how a name or path finds one, how
its YAML is read, and how its path is shown.

Kinds of params files and their folders: `profiles` (params/profiles/), `criteria`, `faults`,
`targets`, and `params` (run parameter files, params/ itself, e.g. params/run-ms03.yaml).

Lookup (`resolve`): a bare name (`fast`: no `/`, no suffix) is `params/<kind>/<name>.yaml`; any
other value is a path, tried from the current directory first, then from the project root, so
`params/...` works both from the root (papermill, make) and from `notebooks/` (JupyterLab).
Recorded values (config.json, `RunConfig`) are names or project-relative paths: `stored_path`
reads them back from the project root. `display` shows a path project-relative when inside the
project (portable in reports), else absolute.

Reading (`load`, `read_yaml`): a file must hold a YAML mapping; a missing, unreadable, empty or
non-mapping file raises one `WorkbenchError` naming the file and saying what it should contain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from workbench.errors import WorkbenchError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_DIR = PROJECT_ROOT / "params"
PROFILE_SECTIONS = ("chain", "storage", "inference", "relayer", "flow")


@dataclass(frozen=True)
class Kind:
    """One kind of params file: its folder, the parameter naming one, and what a file holds."""

    folder: str  # under params/; "" is params/ itself
    field: str  # the run parameter that names a file of this kind (error messages name it)
    noun: str  # as in "no <noun> 'x'"
    contents: str  # what a file of this kind should contain
    keyword: str = ""  # a value that names no file (`local`, `none`), offered in fixes
    empty_ok: bool = False  # an empty file reads as {} instead of failing


KINDS = {
    "profiles": Kind(
        "profiles",
        "profile",
        "profile",
        f"the sections {', '.join(PROFILE_SECTIONS)} (copy params/profiles/fast.yaml)",
    ),
    "criteria": Kind(
        "criteria",
        "criteria",
        "criteria file",
        "a `criteria:` list of rows (see params/criteria/ms03.yaml)",
    ),
    "faults": Kind(
        "faults",
        "faults",
        "fault plan",
        "fault sections such as rpc, storage, restarts (see params/faults/chaos.yaml)",
        keyword="none",
    ),
    "targets": Kind(
        "targets",
        "target",
        "target file",
        "chain_id, rpc_urls, contracts and the service URLs (copy params/targets/moksha.yaml)",
        keyword="local",
    ),
    "params": Kind(
        "",
        "params file",
        "params file",
        "`parameter: value` lines (see params/run-ms03.yaml)",
        empty_ok=True,
    ),
}


class ParamsFile(NamedTuple):
    path: Path
    shown: str  # `display(path)`: how errors and results name it
    data: dict[str, Any]


def kind_dir(kind: str) -> Path:
    return PARAMS_DIR / _kind(kind).folder


def names(kind: str) -> list[str]:
    """The names a value of this kind may use (`fast`, `moksha`)."""
    return sorted(p.stem for p in kind_dir(kind).glob("*.yaml"))


def is_name(text: str) -> bool:
    """`moksha` names params/<kind>/moksha.yaml; `x.yaml` or `dir/x` are paths."""
    return "/" not in text and not Path(text).suffix


def project_path(value: str | Path) -> Path:
    """A recorded path: absolute as is, relative ones under the project root."""
    path = Path(value)
    return path if path.is_absolute() else PROJECT_ROOT / path


def stored_path(value: str, kind: str) -> Path:
    """Where a recorded name or project-relative path points; not checked for existence."""
    return kind_dir(kind) / f"{value}.yaml" if is_name(value) else project_path(value)


def display(path: Path) -> str:
    """Project-relative when inside the project (portable in reports), else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(resolved)


def resolve(value: Any, kind: str) -> Path:
    """The file a name or path of this kind stands for; a WorkbenchError lists the known names."""
    spec = _kind(kind)
    text = str(value) if isinstance(value, str | Path) else ""
    if text.strip() and is_name(text):
        candidates = [kind_dir(kind) / f"{text}.yaml"]
    elif text.strip():
        candidates = [Path(text).resolve(), project_path(text)]
    else:
        candidates = []
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        given = text if isinstance(value, str | Path) else value  # 'x', not PosixPath('x')
        raise WorkbenchError(spec.field, f"no {spec.noun} {given!r}", _known(kind))
    return found


def read_yaml(path: Path, kind: str) -> dict[str, Any]:
    """The mapping a file of this kind holds; errors name the file and what it should hold."""
    spec, shown = _kind(kind), display(path)
    should = f"it should contain {spec.contents}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise WorkbenchError(
            shown, f"cannot read it as YAML: {first_line(e)}", f"fix the file; {should}"
        ) from None
    if data is None and spec.empty_ok:
        return {}
    if data is None:
        raise WorkbenchError(shown, "is empty", should)
    if not isinstance(data, dict):
        raise WorkbenchError(
            shown, f"is not a mapping of keys (it holds a {type(data).__name__})", should
        )
    return data


def load(value: Any, kind: str) -> ParamsFile:
    """Finds (`resolve`) and reads (`read_yaml`) one params file."""
    path = resolve(value, kind)
    return ParamsFile(path, display(path), read_yaml(path, kind))


def load_profile(name_or_path: str | Path) -> dict[str, Any]:
    """A stack and flow timing profile by name (`fast`, `moksha`) or by path to a YAML file."""
    found = load(name_or_path, "profiles")
    for section in PROFILE_SECTIONS:
        if not isinstance(found.data.get(section), dict):
            raise WorkbenchError(
                f"profile.{section}", f"missing in {found.shown}", "copy it from fast.yaml"
            )
    return found.data


def first_line(error: Exception) -> str:
    """An exception's first line (YAML errors run over several), else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown params kind {kind!r}; one of {sorted(KINDS)}")
    return KINDS[kind]


def _known(kind: str) -> str:
    spec, known = _kind(kind), names(kind)
    choices = [spec.keyword] if spec.keyword else []
    if known:
        choices.append(f"one of {', '.join(known)}")
    return f"use {', '.join(choices)}{', or ' if choices else ''}a path to a YAML file"
