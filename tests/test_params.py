"""workbench.params: one lookup of params files by name or path, one YAML reader, display paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench import params
from workbench.analysis.criteria import load_criteria
from workbench.driver.config import RunConfig
from workbench.errors import WorkbenchError
from workbench.params import PROJECT_ROOT
from workbench.stack.faults import load_faults
from workbench.vana.target import load_target


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["profiles", "criteria", "faults", "targets"])
def test_every_shipped_file_reads_as_a_mapping(kind):
    assert params.names(kind), f"params/{kind}/ ships at least one file"
    for name in params.names(kind):
        found = params.load(name, kind)
        assert found.path == PROJECT_ROOT / "params" / kind / f"{name}.yaml"
        assert found.shown == f"params/{kind}/{name}.yaml"
        assert isinstance(found.data, dict) and found.data


def test_a_name_is_looked_up_in_its_kind_folder_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "fast", "chain: {}\n")  # a file in the cwd named like the profile
    assert params.resolve("fast", "profiles") == PROJECT_ROOT / "params/profiles/fast.yaml"
    with pytest.raises(WorkbenchError) as err:
        params.resolve("fast", "targets")
    assert err.value.field == "target" and "no target file 'fast'" in err.value.problem


def test_a_path_is_tried_from_the_cwd_then_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert params.resolve("params/criteria/ms03.yaml", "criteria") == (
        PROJECT_ROOT / "params/criteria/ms03.yaml"
    )
    (tmp_path / "params" / "criteria").mkdir(parents=True)
    mine = write(tmp_path / "params/criteria/ms03.yaml", "criteria: []\n")
    assert params.resolve("params/criteria/ms03.yaml", "criteria") == mine.resolve()


def test_recorded_values_are_read_from_the_project_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert params.stored_path("moksha", "profiles") == PROJECT_ROOT / "params/profiles/moksha.yaml"
    assert params.stored_path("params/x.yaml", "faults") == PROJECT_ROOT / "params/x.yaml"
    assert params.stored_path("/abs/x.yaml", "faults") == Path("/abs/x.yaml")


@pytest.mark.parametrize(
    ("kind", "keyword", "field"),
    [
        ("profiles", None, "profile"),
        ("criteria", None, "criteria"),
        ("faults", "none", "faults"),
        ("targets", "local", "target"),
    ],
)
def test_an_unknown_name_lists_the_known_ones(kind, keyword, field):
    with pytest.raises(WorkbenchError) as err:
        params.resolve("no-such-file", kind)
    assert err.value.field == field and "'no-such-file'" in err.value.problem
    for name in params.names(kind):
        assert name in err.value.fix
    assert "path to a YAML file" in err.value.fix
    assert (keyword in err.value.fix) if keyword else err.value.fix.startswith("use one of")


@pytest.mark.parametrize("value", ["", "   ", None, 3])
def test_a_value_that_is_no_name_or_path_is_refused(value):
    with pytest.raises(WorkbenchError) as err:
        params.resolve(value, "faults")
    assert err.value.field == "faults"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("- a\n- b\n", "is not a mapping of keys (it holds a list)"),
        ("just text\n", "is not a mapping of keys (it holds a str)"),
        ("a: [1,\n", "cannot read it as YAML"),
    ],
)
@pytest.mark.parametrize("kind", ["profiles", "criteria", "faults", "targets"])
def test_bad_files_name_the_file_and_what_it_should_contain(tmp_path, kind, text, problem):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(WorkbenchError) as err:
        params.load(str(path), kind)
    assert err.value.field == str(path.resolve())
    assert err.value.problem.startswith(problem)
    assert params.KINDS[kind].contents in err.value.fix


@pytest.mark.parametrize(
    "loader",
    [params.load_profile, load_criteria, load_faults, load_target],
    ids=lambda f: f.__name__,
)
def test_every_loader_refuses_an_empty_file_naming_it(tmp_path, loader):
    path = write(tmp_path / "empty.yaml", "")
    with pytest.raises(WorkbenchError) as err:
        loader(str(path))
    assert str(path.resolve()) in str(err.value) and "is empty" in str(err.value)


def test_an_empty_params_file_means_no_parameters(tmp_path):
    assert params.load(str(write(tmp_path / "p.yaml", "# nothing set\n")), "params").data == {}
    assert params.resolve("run-ms03", "params") == PROJECT_ROOT / "params/run-ms03.yaml"


def test_a_profile_missing_a_section_names_it(tmp_path):
    path = write(tmp_path / "p.yaml", "name: partial\nchain: {}\n")
    with pytest.raises(WorkbenchError) as err:
        params.load_profile(path)
    assert err.value.field == "profile.storage" and str(path.resolve()) in err.value.problem


def test_display_is_project_relative_inside_the_project_else_absolute(tmp_path):
    assert params.display(PROJECT_ROOT / "params" / ".." / "params/run-ms03.yaml") == (
        "params/run-ms03.yaml"
    )
    assert params.display(tmp_path / "x.yaml") == str((tmp_path / "x.yaml").resolve())


def test_an_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown params kind"):
        params.names("profile")


@pytest.mark.parametrize(("field", "kind"), [("profile", "profiles"), ("target", "targets")])
def test_run_parameters_name_the_empty_file_behind_them(tmp_path, field, kind):
    path = write(tmp_path / "empty.yaml", "")
    with pytest.raises(WorkbenchError) as err:
        RunConfig.from_params(**{field: str(path)}, criteria="params/criteria/ms03.yaml")
    assert err.value.field == field
    assert f"{path.resolve()} is empty" in err.value.problem
    assert params.KINDS[kind].contents in err.value.fix


def test_a_missing_path_is_quoted_as_typed(tmp_path):
    with pytest.raises(WorkbenchError) as err:
        params.resolve(tmp_path / "none.yaml", "params")
    assert err.value.problem == f"no params file {str(tmp_path / 'none.yaml')!r}"
