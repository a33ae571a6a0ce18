"""Run parameters: one validated, frozen `RunConfig` from notebook parameters, a params file or
the command line.

Every check runs before anything starts: the first bad value raises one `WorkbenchError` that
names the parameter and says how to fix it, in the words of where it came from (`-p users 25`,
`--users 25`, or `users: 25` in a params file). Validation reads files but never writes any.

Paths: input files (profile, target, criteria, faults, the params file) are found and read by
`workbench.params` (names under params/<kind>/, paths from the cwd, then the project root) and
stored as names or project-relative paths. A relative `output_dir` is always under the project
root, wherever the run is started from.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from workbench import params
from workbench.driver.clients import CLIENTS
from workbench.errors import WorkbenchError
from workbench.params import project_path

SHAPES = ("staggered", "burst", "hold", "poisson", "steps")
RELAY_MODES = ("app", "direct")
DATA_SIZES = ("small", "medium", "large", "mixed")
MAX_USERS = 10_000
DEFAULT_PROMPT = "Summarize this user's data in three bullet points, as JSON."
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SCHEDULER = re.compile(r"(tcp|tls)://[A-Za-z0-9.\-\[\]:]+:\d{1,5}")
MAX_WORKERS = 64


def new_run_id(shape: str, users: int) -> str:
    """`YYYYmmdd-HHMMSS-<shape>-<users>u-<4 hex>`, local time; sorts by start time."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{shape}-{users}u-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know, validated; build it with `from_params` / `from_yaml`.

    The direct constructor does not validate (handy in tests of other modules). No secrets live
    here by design: keys come from the environment or a wallet file, never from parameters.
    """

    # The notebook's parameters, with its defaults.
    users: int = 25
    profile: str = "moksha"
    target: str = "local"
    shape: str = "staggered"
    ramp_s: float = 10
    duration_s: float = 0
    data_size: str = "mixed"
    criteria: str = "params/criteria/ms03.yaml"
    faults: str = "none"
    output_dir: str = "outputs"
    fail_on_criteria: bool = False
    seed: int = 0
    # Shape and driver details.
    rate_per_s: float | None = None  # poisson arrivals/s; None: users / ramp_s (see shapes)
    steps: tuple[int, ...] = (10, 20, 30, 40, 50)
    step_hold_s: float = 60
    flow_timeout_s: float | None = None  # None: the profile's flow.flow_timeout_s
    max_connections: int = 200
    rpc_rate_limit: float | None = None  # RPC calls/s to each RPC URL at most; None: no throttle
    run_id: str | None = None  # None: generated, see new_run_id
    inference_prompt: str = DEFAULT_PROMPT
    # How the client behaves: who sends the permission's transaction, and whose timings.
    relay: str = "app"  # app: gasless via the app's /api/relay; direct: each user's own tx
    client: str = "tight"  # timing preset: tight | sdk | upstream (workbench.driver.clients)
    # Scale-out (`workbench.driver.cluster`): 0 runs every flow in this process; N shards the
    # users over a local Dask cluster of N worker processes; `scheduler` joins an existing one.
    workers: int = 0
    scheduler: str | None = None  # tcp://host:8786; None: a LocalCluster when workers > 0

    new_run_id = staticmethod(new_run_id)

    def __post_init__(self) -> None:
        # Frozen, so normalise through object.__setattr__: hashable steps, a run id always set.
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.run_id is None:
            object.__setattr__(self, "run_id", new_run_id(self.shape, self.users))

    @classmethod
    def from_params(cls, **params: Any) -> RunConfig:
        """Validates notebook-style parameters (`papermill -p`); fixes read `pass -p name value`."""
        return _build(params, lambda key: _NOTEBOOK)

    @classmethod
    def from_cli(
        cls, args: argparse.Namespace | Mapping[str, Any], params_file: str | Path | None = None
    ) -> RunConfig:
        """Validates parsed CLI options over an optional params file; fixes read `--name value`.

        Options that are None (not given) or not RunConfig fields (the subcommand) are ignored:
        argparse already rejects unknown options.
        """
        given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
        options = {k: v for k, v in given.items() if k in _FIELD_NAMES and v is not None}
        return _load(params_file, options, _CLI)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> RunConfig:
        """A params file plus overrides (overrides win); errors name the file and the key."""
        return _load(path, overrides, _NOTEBOOK)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe values (for `config.json` and the report); there are no secrets to hide."""
        data = asdict(self)
        data["steps"] = list(self.steps)
        return data

    def results_dir(self) -> Path:
        """`<output_dir>/<run_id>`; not created here."""
        return project_path(self.output_dir) / str(self.run_id)

    @property
    def profile_path(self) -> Path:
        return params.stored_path(self.profile, "profiles")

    @property
    def target_path(self) -> Path | None:
        """None for the embedded local stack."""
        return None if self.target == "local" else params.stored_path(self.target, "targets")

    @property
    def criteria_path(self) -> Path:
        return params.stored_path(self.criteria, "criteria")

    @property
    def faults_path(self) -> Path | None:
        """None when no faults are injected."""
        return None if self.faults == "none" else params.stored_path(self.faults, "faults")


# ---- where a value came from decides how the fix is worded -------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # notebook | cli | yaml
    file: str = ""

    def fix(self, name: str, example: str) -> str:
        if self.kind == "cli":
            return f"pass --{name.replace('_', '-')} {example}"
        if self.kind == "yaml":
            return f"set `{name}: {example}` in {self.file}"
        return f"pass -p {name} {example}"

    def where(self) -> str:
        return f" (in {self.file})" if self.kind == "yaml" else ""


_NOTEBOOK, _CLI = _Source("notebook"), _Source("cli")


class _Bad(Exception):
    """A bad value; `_build` turns it into a WorkbenchError worded for the value's source."""

    def __init__(self, problem: str, example: Any = None, advice: str = "", field: str = ""):
        super().__init__(problem)
        self.problem, self.example, self.advice, self.field = problem, example, advice, field


def _load(
    params_file: str | Path | None, overrides: dict[str, Any], override_source: _Source
) -> RunConfig:
    if params_file is None:
        return _build(overrides, lambda key: override_source)
    from_file, shown = _read_params_file(Path(params_file))
    file_source = _Source("yaml", shown)
    return _build(
        {**from_file, **overrides},
        lambda key: file_source if key in from_file and key not in overrides else override_source,
    )


def _build(params: dict[str, Any], source_of: Callable[[str], _Source]) -> RunConfig:
    values: dict[str, Any] = {}
    name = ""
    try:
        for name in params:  # typos first: a misspelt key would otherwise pass as a default
            if name not in _FIELD_NAMES:
                raise _unknown(name)
        for name, check in _CHECKS.items():  # defaults too: the default criteria file may be gone
            values[name] = check(params.get(name, _DEFAULTS[name]))
        name = ""
        _check_together(values, explicit_run_id="run_id" in params)
    except _Bad as bad:
        field = bad.field or name
        value = params.get(field, _DEFAULTS.get(field))
        raise _error(field, bad, value, source_of(field)) from None
    return RunConfig(**values)


def _error(field: str, bad: _Bad, value: Any, source: _Source) -> WorkbenchError:
    example = _EXAMPLES.get(field) if bad.example is None else bad.example
    # Suggesting the very value that failed (a missing default file) would not help.
    useful = example not in (None, "") and _show(example) != _show(value)
    fix = "; ".join(
        p for p in (source.fix(field, _show(example)) if useful else "", bad.advice) if p
    )
    return WorkbenchError(field, bad.problem + source.where(), fix or "check the value")


def _unknown(name: str) -> _Bad:
    close = difflib.get_close_matches(name, _FIELD_NAMES, n=1, cutoff=0.6)
    advice = (
        f"did you mean `{close[0]}`?"
        if close
        else f"use one of the known parameters: {', '.join(_FIELD_NAMES)}"
    )
    return _Bad(f"unknown parameter {name!r}", advice=advice, field=name)


def _show(example: Any) -> str:
    """A value as typed after `-p name`: lists as 10,20,30, text with spaces quoted."""
    if isinstance(example, list | tuple):
        return ",".join(str(v) for v in example)
    text = str(example)
    return f'"{text}"' if " " in text else text


# ---- one check per field: returns the normalised value or raises _Bad --------------------------


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = _as_number(value)
        if number is None or not float(number).is_integer() or not lo <= number <= hi:
            raise _Bad(f"must be an integer from {lo} to {hi}, got {value!r}")
        return int(number)

    return check


def _float(lo: float, *, above: bool = False, optional: bool = False) -> Callable[[Any], Any]:
    """A finite number >= lo (> lo when `above`); None allowed when `optional`."""
    bound = f"{'greater than' if above else 'at least'} {lo:g}"
    wanted = f"a number {bound}" + (" or None" if optional else "")

    def check(value: Any) -> float | None:
        if optional and (value is None or str(value).strip().lower() in ("none", "null", "")):
            return None
        number = _as_number(value)
        if number is None or not math.isfinite(number) or number < lo or (above and number == lo):
            raise _Bad(f"must be {wanted}, got {value!r}")
        return int(number) if float(number).is_integer() else float(number)

    return check


def _as_number(value: Any) -> float | None:
    """Numbers and numeric strings (papermill -r, env vars); never booleans."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise _Bad(f"must be True or False, got {value!r}")


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            # The closest option is the likely intent; else the default is the example.
            raise _Bad(
                f"must be one of {', '.join(options)}, got {value!r}", close[0] if close else None
            )
        return value

    return check


def _text(limit: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            raise _Bad(f"must be a non-empty text of at most {limit} characters, got {value!r}")
        return value

    return check


def parse_steps(value: Any) -> tuple[int, ...]:
    """The steps shape's user levels from a list or text (`10,20,30`, `[10, 20, 30]`)."""
    try:
        return _steps(value)
    except _Bad as bad:
        raise _error("steps", bad, value, _NOTEBOOK) from None


def _steps(value: Any) -> tuple[int, ...]:
    """User levels, strictly rising; also `10,20,30` or `[10, 20]` as text (papermill -p, CLI)."""
    items = value.strip().strip("[]").split(",") if isinstance(value, str) else value
    problem = f"must be rising user counts from 1 to {MAX_USERS}, like 10,20,30, got {value!r}"
    if not isinstance(items, list | tuple) or not items:
        raise _Bad(problem)
    try:
        levels = tuple(_int(1, MAX_USERS)(item) for item in items)
    except _Bad:
        raise _Bad(problem) from None
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        raise _Bad(problem)
    return levels


def _run_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise _Bad(
            f"must be a directory name (letters, digits, '.', '_', '-'), got {value!r}",
            advice="or leave it unset to get a generated one",
        )
    return value


def _scheduler(value: Any) -> str | None:
    """A Dask scheduler address, or None (also "" / "none" from a notebook or a params file)."""
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    if not isinstance(value, str) or not _SCHEDULER.fullmatch(value.strip()):
        raise _Bad(
            f"must be a Dask scheduler address like tcp://host:8786, got {value!r}",
            advice="or leave it unset to start a local cluster of `workers` processes",
        )
    return value.strip()


def _output_dir(value: Any) -> str:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise _Bad(f"must be a directory path, got {value!r}")
    path = project_path(value)
    if path.exists() and not path.is_dir():
        raise _Bad(f"{path} exists and is not a directory")
    parent = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _Bad(f"cannot write under {parent}", advice="choose a writable directory")
    return str(value)


def _profile(value: Any) -> str:
    path = _input(value, "profiles")
    try:
        params.load_profile(path)
    except WorkbenchError as e:
        raise _Bad(f"{params.display(path)} is not a valid profile: {e}") from None
    return _stored(value, path)


def _reference(kind: str) -> Callable[[Any], str]:
    """The kind's keyword (local / none), a name under params/<kind>/, or a path to a YAML file."""
    keyword = params.KINDS[kind].keyword

    def check(value: Any) -> str:
        return value if value == keyword else _stored(value, _input(value, kind))

    return check


def _criteria(value: Any) -> str:
    return params.display(_input(value, "criteria"))


def _input(value: Any, kind: str) -> Path:
    """The readable YAML mapping a value names; `workbench.params` errors become `_Bad`."""
    try:
        path = params.resolve(value, kind)
        params.read_yaml(path, kind)
    except WorkbenchError as e:
        problem = e.problem if e.field == params.KINDS[kind].field else f"{e.field} {e.problem}"
        raise _Bad(problem, advice=e.fix) from None
    return path


def _stored(value: Any, path: Path) -> str:
    """Names stay names; paths are recorded project-relative (portable in reports)."""
    return value if params.is_name(str(value)) else params.display(path)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "users": _int(1, MAX_USERS),
    "profile": _profile,
    "target": _reference("targets"),
    "shape": _choice(SHAPES),
    "ramp_s": _float(0),
    "duration_s": _float(0),
    "data_size": _choice(DATA_SIZES),
    "criteria": _criteria,
    "faults": _reference("faults"),
    "output_dir": _output_dir,
    "fail_on_criteria": _bool,
    "seed": _int(0, 2**32 - 1),
    "rate_per_s": _float(0, above=True, optional=True),
    "steps": _steps,
    "step_hold_s": _float(0, above=True),
    "flow_timeout_s": _float(0, above=True, optional=True),
    "max_connections": _int(1, 100_000),
    "rpc_rate_limit": _float(0, above=True, optional=True),
    "run_id": _run_id,
    "inference_prompt": _text(4000),
    "relay": _choice(RELAY_MODES),
    "client": _choice(CLIENTS),
    "workers": _int(0, MAX_WORKERS),
    "scheduler": _scheduler,
}
_FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}
# What a fix suggests; the notebook's default where it has one.
_EXAMPLES: dict[str, Any] = {
    **_DEFAULTS,
    "rate_per_s": 2.5,
    "flow_timeout_s": 300,
    "rpc_rate_limit": 20,
    "run_id": "ms03-baseline",
    "workers": 2,
    "scheduler": "tcp://127.0.0.1:8786",
}
assert set(_CHECKS) == set(_FIELD_NAMES), "every RunConfig field needs a check"


def _check_together(v: dict[str, Any], explicit_run_id: bool) -> None:
    """Rules between fields, after each field is valid on its own."""
    shape, duration = v["shape"], v["duration_s"]
    if shape in ("staggered", "burst") and duration > 0:
        raise _Bad(
            f"the {shape} shape runs one flow per user, so duration_s must be 0, got {duration}",
            example=0,
            advice="or use shape hold to repeat flows until duration_s",
            field="duration_s",
        )
    if shape == "hold" and 0 < duration < v["ramp_s"]:
        raise _Bad(
            f"must be at most duration_s ({duration}) for the hold shape, which starts every "
            f"user before the end, got {v['ramp_s']}",
            example=duration,
            field="ramp_s",
        )
    if shape == "steps":
        _check_steps(v)
    if v["workers"] > v["users"]:
        raise _Bad(
            f"must be at most users ({v['users']}): each worker runs a share of the users, "
            f"got {v['workers']}",
            example=min(2, v["users"]),
            field="workers",
        )
    if explicit_run_id and v["run_id"] is not None:
        results = project_path(v["output_dir"]) / v["run_id"]
        # Only events make it a run: papermill writes its output notebook there first.
        if (results / "events.jsonl").exists():
            raise _Bad(
                f"{results} already holds a run",
                example="",  # no single value to suggest
                advice="choose another run_id, or leave it unset for a new one",
                field="run_id",
            )


def _check_steps(v: dict[str, Any]) -> None:
    levels, hold = v["steps"], v["step_hold_s"]
    if v["duration_s"] > 0:
        raise _Bad(
            f"the steps shape lasts len(steps) x step_hold_s, so duration_s must be 0, "
            f"got {v['duration_s']}",
            example=0,
            advice="set step_hold_s to change the length",
            field="duration_s",
        )
    if v["users"] < levels[-1]:
        raise _Bad(
            f"the steps shape needs a wallet per user at its top step ({levels[-1]}), "
            f"got {v['users']}",
            example=levels[-1],
            advice="or lower steps",
            field="users",
        )
    if v["ramp_s"] > hold:
        raise _Bad(
            f"each step starts its new users over ramp_s, which must fit in step_hold_s={hold}, "
            f"got {v['ramp_s']}",
            example=min(_DEFAULTS["ramp_s"], hold),
            field="ramp_s",
        )


# ---- params files -----------------------------------------------------------------------------


def _read_params_file(path: Path) -> tuple[dict[str, Any], str]:
    """The file's mapping and its name as errors show it; looked up like the other inputs."""
    found = params.load(path, "params")
    if not all(isinstance(k, str) for k in found.data):
        raise WorkbenchError(
            found.shown,
            "must be a mapping of parameter: value",
            f"it should contain {params.KINDS['params'].contents}",
        )
    return found.data, found.shown
