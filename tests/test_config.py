"""RunConfig: defaults, one clear error per bad value before anything starts, params files."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.driver.config import MAX_USERS, SHAPES, RunConfig, project_path
from workbench.errors import WorkbenchError
from workbench.params import PROJECT_ROOT

# The notebook's parameters cell, as the issue fixes it.
NOTEBOOK_DEFAULTS = dict(
    users=25,
    profile="moksha",
    target="local",
    shape="staggered",
    ramp_s=10,
    duration_s=0,
    data_size="mixed",
    criteria="params/criteria/ms03.yaml",
    faults="none",
    output_dir="outputs",
    fail_on_criteria=False,
    seed=0,
    relay="app",
    client="tight",
)


@pytest.fixture(scope="module")
def criteria(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Tests do not depend on the shipped criteria file, which another module owns.
    path = tmp_path_factory.mktemp("criteria") / "criteria.yaml"
    path.write_text("name: test\ncriteria: []\n")
    return str(path)


@pytest.fixture
def ok(criteria: str, tmp_path: Path) -> dict:
    """Valid parameters whose files live in tmp_path."""
    return {"criteria": criteria, "output_dir": str(tmp_path / "out")}


def error_of(**params) -> WorkbenchError:
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_params(**params)
    return info.value


def test_field_defaults_are_the_notebook_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    assert {k: defaults[k] for k in NOTEBOOK_DEFAULTS} == NOTEBOOK_DEFAULTS
    assert defaults["steps"] == (10, 20, 30, 40, 50)
    assert defaults["step_hold_s"] == 60
    assert defaults["max_connections"] == 200
    assert defaults["rate_per_s"] is None and defaults["flow_timeout_s"] is None


def test_from_params_without_arguments_keeps_the_defaults(criteria):
    cfg = RunConfig.from_params(criteria=criteria)
    for name, value in NOTEBOOK_DEFAULTS.items():
        if name != "criteria":
            assert getattr(cfg, name) == value, name


def test_the_issues_example_message():
    assert str(error_of(users="ten")) == (
        "users: must be an integer from 1 to 10000, got 'ten'. Fix: pass -p users 25"
    )


BAD_VALUES = [
    ("users", 0),
    ("users", MAX_USERS + 1),
    ("users", 2.5),
    ("users", True),
    ("users", None),
    ("profile", "nosuch"),
    ("profile", "missing.yaml"),
    ("profile", 3),
    ("target", "nosuch"),
    ("target", "/nonexistent/target.yaml"),
    ("shape", "ramp"),
    ("shape", None),
    ("ramp_s", -1),
    ("ramp_s", float("nan")),
    ("ramp_s", "soon"),
    ("duration_s", -0.5),
    ("duration_s", float("inf")),
    ("data_size", "huge"),
    ("criteria", "params/criteria/nosuch.yaml"),
    ("criteria", ""),
    ("faults", "nosuch"),
    ("faults", "/nonexistent/faults.yaml"),
    ("output_dir", ""),
    ("output_dir", 5),
    ("fail_on_criteria", "maybe"),
    ("fail_on_criteria", 2),
    ("seed", -1),
    ("seed", "x"),
    ("rate_per_s", 0),
    ("rate_per_s", -2),
    ("steps", []),
    ("steps", [10, 5]),
    ("steps", [10, 10]),
    ("steps", "10,x"),
    ("steps", [0, 10]),
    ("step_hold_s", 0),
    ("flow_timeout_s", 0),
    ("flow_timeout_s", "long"),
    ("max_connections", 0),
    ("rpc_rate_limit", 0),
    ("rpc_rate_limit", "fast"),
    ("run_id", "../escape"),
    ("run_id", ""),
    ("run_id", 7),
    ("inference_prompt", ""),
    ("inference_prompt", "x" * 5000),
    ("relay", "gasless"),
    ("relay", None),
    ("client", "viem"),
    ("client", 3),
    ("workers", -1),
    ("workers", 65),
    ("workers", 1.5),
    ("scheduler", "127.0.0.1:8786"),
    ("scheduler", "http://host:8786"),
    ("scheduler", 8786),
]


@pytest.mark.parametrize(
    ("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}"[:40] for f, v in BAD_VALUES]
)
def test_a_bad_value_names_its_field_and_a_fix(ok, field, value):
    err = error_of(**{**ok, field: value})
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    assert err.fix and "Fix: " in str(err)


def test_every_field_has_a_bad_value_case():
    names = {f.name for f in dataclasses.fields(RunConfig)}
    assert names == {field for field, _ in BAD_VALUES}


def test_nothing_is_created_on_error_or_success(ok, tmp_path):
    out = Path(ok["output_dir"])
    error_of(**{**ok, "users": -3})
    cfg = RunConfig.from_params(**ok)
    assert not out.exists()
    assert cfg.results_dir() == out / cfg.run_id


def test_the_first_problem_is_reported(ok):
    assert error_of(**{**ok, "users": 0, "shape": "x"}).field == "users"
    # Unknown keys come first: a typo would otherwise silently leave a default in place.
    assert error_of(**{**ok, "users": 0, "usres": 5}).field == "usres"


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("usres", "users"), ("ramp", "ramp_s"), ("duration", "duration_s"), ("datasize", "data_size")],
)
def test_unknown_key_suggests_the_closest_name(ok, typo, meant):
    err = error_of(**{**ok, typo: 1})
    assert err.field == typo
    assert "unknown parameter" in err.problem
    assert f"`{meant}`" in err.fix


def test_unknown_key_without_a_close_name_lists_the_known_ones(ok):
    assert "users" in error_of(**{**ok, "zzzzzz": 1}).fix


def test_a_misspelt_choice_suggests_the_closest_option(ok):
    assert error_of(**{**ok, "shape": "bursts"}).fix == "pass -p shape burst"


def test_values_from_text_are_coerced(ok):
    cfg = RunConfig.from_params(
        **ok, users="30", ramp_s="2.5", fail_on_criteria="true", steps="5,10", rate_per_s="None"
    )
    assert (cfg.users, cfg.ramp_s, cfg.fail_on_criteria) == (30, 2.5, True)
    assert cfg.steps == (5, 10) and cfg.rate_per_s is None
    assert RunConfig.from_params(**ok, users=25.0).users == 25


def test_profile_by_name_or_path(ok, tmp_path):
    assert RunConfig.from_params(**ok, profile="fast").profile == "fast"
    cfg = RunConfig.from_params(**ok, profile="params/profiles/fast.yaml")
    assert cfg.profile_path == PROJECT_ROOT / "params/profiles/fast.yaml"
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\n")
    err = error_of(**ok, profile=str(broken))
    assert err.field == "profile" and "not a valid profile" in err.problem


def test_targets_and_faults_as_files(ok, tmp_path):
    target = tmp_path / "remote.yaml"
    target.write_text("rpc_url: http://example.invalid\n")
    faults = tmp_path / "slow-storage.yaml"
    faults.write_text("storage: {delay_ms: 100}\n")
    cfg = RunConfig.from_params(**ok, target=str(target), faults=str(faults))
    assert cfg.target_path == target and cfg.faults_path == faults
    local = RunConfig.from_params(**ok)
    assert local.target_path is None and local.faults_path is None


def test_relative_inputs_resolve_from_the_project_root_in_any_cwd(ok, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # as JupyterLab runs notebooks/ in its own directory
    cfg = RunConfig.from_params(**{**ok, "criteria": "params/profiles/fast.yaml"})
    assert cfg.criteria == "params/profiles/fast.yaml"
    assert cfg.criteria_path == PROJECT_ROOT / "params/profiles/fast.yaml"


def test_results_dir_of_a_relative_output_dir_is_under_the_project_root(ok):
    cfg = RunConfig.from_params(**{**ok, "output_dir": "outputs"}, run_id="abc")
    assert cfg.results_dir() == PROJECT_ROOT / "outputs" / "abc"
    assert project_path("/abs/x") == Path("/abs/x")


def test_output_dir_that_is_a_file_is_refused(ok, tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    assert error_of(**{**ok, "output_dir": str(file)}).field == "output_dir"


# ---- rules between fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"shape": "staggered", "duration_s": 30}, "duration_s"),
        ({"shape": "burst", "duration_s": 30}, "duration_s"),
        ({"shape": "hold", "ramp_s": 40, "duration_s": 30}, "ramp_s"),
        ({"shape": "steps", "users": 25}, "users"),
        ({"shape": "steps", "users": 50, "duration_s": 60}, "duration_s"),
        ({"shape": "steps", "users": 50, "step_hold_s": 5, "ramp_s": 10}, "ramp_s"),
    ],
)
def test_inconsistent_fields_name_the_one_to_change(ok, params, field):
    assert error_of(**ok, **params).field == field


def test_consistent_shapes_pass(ok):
    RunConfig.from_params(**ok, shape="hold", ramp_s=10, duration_s=10)
    RunConfig.from_params(**ok, shape="poisson", duration_s=60, rate_per_s=3)
    RunConfig.from_params(**ok, shape="steps", users=3, steps=[1, 2, 3], step_hold_s=10)


def test_an_explicit_run_id_refuses_an_existing_run(ok):
    results = Path(ok["output_dir"]) / "r1"
    results.mkdir(parents=True)
    (results / "run.ipynb").write_text("{}")  # papermill's output notebook alone is fine
    RunConfig.from_params(**ok, run_id="r1")
    (results / "events.jsonl").write_text("")
    err = error_of(**ok, run_id="r1")
    assert err.field == "run_id" and err.fix.startswith("choose another run_id")


def test_generated_run_ids_are_labelled(ok):
    a = RunConfig.from_params(**ok, shape="burst", users=7)
    b = RunConfig.from_params(**ok, shape="burst", users=7)
    assert re.fullmatch(r"\d{8}-\d{6}-burst-7u-[0-9a-f]{4}", a.run_id)
    assert re.fullmatch(r"\d{8}-\d{6}-burst-7u-[0-9a-f]{4}", b.run_id)
    assert RunConfig.new_run_id("steps", 50).split("-")[2:4] == ["steps", "50u"]


# ---- dicts, params files and the CLI ----------------------------------------------------------


def test_to_dict_is_json_safe_and_round_trips(ok):
    cfg = RunConfig.from_params(**ok, shape="steps", users=50, rate_per_s=1.5)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["steps"] == [10, 20, 30, 40, 50]
    assert RunConfig.from_params(**data) == cfg


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_values_and_override_precedence(ok, tmp_path):
    params = write(tmp_path / "p.yaml", "users: 12\nshape: burst\nseed: 3\n")
    cfg = RunConfig.from_yaml(params, **ok, seed=9)
    assert (cfg.users, cfg.shape, cfg.seed) == (12, "burst", 9)
    assert cfg.profile == "moksha"  # neither file nor override: the default


def test_yaml_errors_name_the_file_and_key(ok, tmp_path):
    params = write(tmp_path / "p.yaml", "users: ten\n")
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_yaml(params, **ok)
    assert info.value.field == "users"
    assert str(params) in info.value.problem and "set `users: 25`" in info.value.fix
    # An override that is bad is the override's fault, not the file's.
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_yaml(write(tmp_path / "q.yaml", "users: 5\n"), **ok, users=-1)
    assert "q.yaml" not in str(info.value) and info.value.fix == "pass -p users 25"


def test_yaml_unknown_key_is_caught(ok, tmp_path):
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_yaml(write(tmp_path / "p.yaml", "usrs: 5\n"), **ok)
    assert info.value.field == "usrs" and "`users`" in info.value.fix


@pytest.mark.parametrize("text", ["users: [1,\n", "- 1\n- 2\n"])
def test_unreadable_params_files_name_the_file(tmp_path, text):
    params = write(tmp_path / "p.yaml", text)
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_yaml(params)
    assert str(params) in str(info.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_yaml(tmp_path / "none.yaml")
    assert info.value.field == "params file"


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("run-smoke.yaml", {"users": 5, "profile": "fast", "shape": "burst"}),
        (
            "run-ms03.yaml",
            {
                "users": 25,
                "shape": "hold",
                "duration_s": 300,
                "data_size": "mixed",
                "client": "upstream",
            },
        ),
        ("rampup.yaml", {"shape": "steps", "steps": (10, 20, 30, 40, 50)}),
    ],
)
def test_shipped_params_files_load(ok, name, expect):
    cfg = RunConfig.from_yaml(PROJECT_ROOT / "params" / name, **ok)
    assert {k: getattr(cfg, k) for k in expect} == expect


def test_cli_fixes_use_flags_and_ignore_unset_options(ok):
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_cli({**ok, "duration_s": -1, "command": "run", "users": None})
    assert info.value.fix == "pass --duration-s 0"
    cfg = RunConfig.from_cli({**ok, "users": 4, "shape": None, "func": print})
    assert (cfg.users, cfg.shape) == (4, "staggered")


def test_relay_and_client_from_the_cli_name_their_flags(ok):
    cfg = RunConfig.from_cli({**ok, "relay": "direct", "client": "sdk"})
    assert (cfg.relay, cfg.client) == ("direct", "sdk")
    assert cfg.to_dict()["relay"] == "direct" and cfg.to_dict()["client"] == "sdk"
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_cli({**ok, "client": "sdkk"})
    assert info.value.field == "client" and info.value.fix == "pass --client sdk"
    with pytest.raises(WorkbenchError) as info:
        RunConfig.from_cli({**ok, "relay": "self"})
    assert "app, direct" in info.value.problem


def test_cli_over_a_params_file(ok, tmp_path):
    params = write(tmp_path / "p.yaml", "users: 12\nshape: burst\n")
    cfg = RunConfig.from_cli({**ok, "users": 3}, params_file=params)
    assert (cfg.users, cfg.shape) == (3, "burst")


# ---- properties over many values -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(users=st.integers(-(10**6), 10**6))
def test_users_valid_exactly_in_range(criteria, users):
    if 1 <= users <= MAX_USERS:
        assert RunConfig.from_params(criteria=criteria, users=users).users == users
    else:
        assert error_of(criteria=criteria, users=users).field == "users"


@settings(max_examples=60, deadline=None)
@given(shape=st.text(max_size=12))
def test_any_unknown_shape_is_refused(criteria, shape):
    if shape in SHAPES:
        return
    err = error_of(criteria=criteria, shape=shape)
    assert err.field == "shape" and repr(shape) in err.problem


def test_workers_and_scheduler(ok):
    cfg = RunConfig.from_params(**{**ok, "workers": "2", "scheduler": ""})
    assert cfg.workers == 2 and cfg.scheduler is None
    joined = RunConfig.from_params(**{**ok, "scheduler": "tcp://127.0.0.1:8786"})
    assert joined.scheduler == "tcp://127.0.0.1:8786" and joined.workers == 0
    err = error_of(**{**ok, "users": 3, "workers": 4})
    assert err.field == "workers" and "at most users" in err.problem
    cli = RunConfig.from_cli({"workers": 2, "scheduler": None, **ok})
    assert cli.workers == 2
