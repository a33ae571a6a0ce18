"""Every run parameter in the notebooks, and an unknown `-p` name refused before anything runs.

The kernel side runs in an in-process IPython shell, cell by cell as papermill would send them
(the parameters cell, then papermill's injected cell): no kernel process, no stack.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import nbformat
import papermill
import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from workbench.__main__ import parser
from workbench.cli.notebook import notebook_command
from workbench.driver.config import RunConfig
from workbench.errors import WorkbenchError
from workbench.notebook import RUN_PARAMETERS
from workbench.params import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"
RUN_NOTEBOOKS = ("run.ipynb", "rampup.ipynb")


def declared(notebook: str) -> dict[str, object]:
    """The parameters cell as papermill reads it: name -> default value."""
    cell = papermill.inspect_notebook(str(NOTEBOOKS / notebook))
    return {name: ast.literal_eval(p["default"]) for name, p in cell.items()}


def parameters_source(notebook: str) -> str:
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


# ---- the notebooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("notebook", RUN_NOTEBOOKS)
def test_run_notebooks_declare_every_run_config_field(notebook):
    assert sorted(declared(notebook)) == sorted(f.name for f in fields(RunConfig))


def test_run_notebook_defaults_are_run_configs_defaults():
    defaults = {f.name: f.default for f in fields(RunConfig)}
    params = declared("run.ipynb")
    params["steps"] = tuple(params["steps"])  # a list in the cell, a tuple in RunConfig
    assert params == defaults


@pytest.mark.parametrize("notebook", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebooks_are_committed_without_outputs(notebook):
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


# ---- the kernel side: plain papermill ---------------------------------------------------------


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    yield shell
    InteractiveShell.clear_instance()


def run_cells(shell: InteractiveShell, *sources: str):
    for source in sources:
        result = shell.run_cell(source, store_history=True)  # as a kernel runs a cell
    return result


def papermill_cell(**params) -> str:
    """What papermill injects after the parameters cell for `-p NAME VALUE`."""
    from papermill.translators import PythonTranslator

    return PythonTranslator.codify(params)


@pytest.mark.parametrize("notebook", RUN_NOTEBOOKS)
def test_a_name_papermill_injected_that_is_no_parameter_is_refused(shell, notebook, tmp_path):
    result = run_cells(
        shell,
        parameters_source(notebook),
        papermill_cell(users=2, no_such_param=1, output_dir=str(tmp_path)),
        "from workbench.notebook import run_config\nconfig = run_config(globals())",
    )
    error = result.error_in_exec
    assert isinstance(error, WorkbenchError) and error.field == "no_such_param"
    assert all(name in error.fix for name in RUN_PARAMETERS)  # the list of valid ones
    assert "config" not in shell.user_ns


def test_a_misspelt_name_gets_the_likely_one(shell, tmp_path):
    result = run_cells(
        shell,
        parameters_source("run.ipynb"),
        papermill_cell(rate_per_sec=5),
        "from workbench.notebook import run_config\nconfig = run_config(globals())",
    )
    assert "did you mean `rate_per_s`?" in result.error_in_exec.fix


def test_every_run_parameter_injected_reaches_the_config(shell, tmp_path):
    result = run_cells(
        shell,
        parameters_source("run.ipynb"),
        papermill_cell(
            shape="poisson",
            rate_per_s=5,
            duration_s=30,
            flow_timeout_s=120,
            max_connections=50,
            inference_prompt="One line.",
            output_dir=str(tmp_path),
            run_id="",  # the old default: still means "generate one"
        ),
        "from workbench.notebook import run_config\nconfig = run_config(globals())",
    )
    assert result.success, result.error_in_exec
    config = shell.user_ns["config"]
    assert (config.shape, config.rate_per_s, config.duration_s) == ("poisson", 5, 30)
    assert (config.flow_timeout_s, config.max_connections) == (120, 50)
    assert config.inference_prompt == "One line." and config.run_id


def test_rampups_steps_come_as_text_and_users_default_to_the_top_level(shell, tmp_path):
    result = run_cells(
        shell,
        parameters_source("rampup.ipynb"),
        papermill_cell(steps="2,4", step_hold_s=3, ramp_s=1, output_dir=str(tmp_path)),
        "from workbench.driver.config import parse_steps\n"
        "from workbench.notebook import run_config\n"
        "config = run_config(globals(), users=users or max(parse_steps(steps)))",
    )
    assert result.success, result.error_in_exec
    assert (shell.user_ns["config"].steps, shell.user_ns["config"].users) == ((2, 4), 4)


def test_outside_papermill_nothing_is_injected(shell, tmp_path):
    # JupyterLab: the parameters cell alone, edited in place.
    result = run_cells(
        shell,
        parameters_source("run.ipynb").replace("users = 25", "users = 3"),
        f"output_dir = {str(tmp_path)!r}",
        "from workbench.notebook import run_config\nconfig = run_config(globals())",
    )
    assert result.success, result.error_in_exec
    assert shell.user_ns["config"].users == 3


# ---- python -m workbench notebook ------------------------------------------------------------


@pytest.fixture
def executed(monkeypatch) -> list[dict]:
    """papermill.execute_notebook calls, recorded instead of run."""
    calls: list[dict] = []
    monkeypatch.setattr(
        papermill, "execute_notebook", lambda src, dst, **kw: calls.append({"dst": dst, **kw})
    )
    return calls


def cli(*argv: str) -> int:
    return notebook_command(parser().parse_args(["notebook", *argv]))


@pytest.mark.parametrize("notebook", [*RUN_NOTEBOOKS, "compare.ipynb"])
def test_the_cli_refuses_an_unknown_name_before_anything_is_created(executed, tmp_path, notebook):
    out = tmp_path / "runs"
    with pytest.raises(WorkbenchError) as info:
        cli(f"notebooks/{notebook}", "--output-dir", str(out), "-p", "no_such_param", "1")
    assert info.value.field == "no_such_param" and notebook in info.value.problem
    assert all(name in info.value.fix for name in declared(notebook))
    assert executed == [] and not out.exists()


def test_the_cli_passes_every_run_parameter_and_validates_it(executed, tmp_path):
    argv = ["notebooks/run.ipynb", "--output-dir", str(tmp_path), "-p", "profile", "fast"]
    assert cli(*argv, "-p", "shape", "poisson", "-p", "rate_per_s", "5") == 0
    assert executed[0]["parameters"]["rate_per_s"] == 5
    with pytest.raises(WorkbenchError) as info:
        cli(*argv, "-p", "shape", "steps", "-p", "steps", "30,20")
    assert info.value.field == "steps" and len(executed) == 1


def test_the_cli_gives_a_notebook_only_the_names_it_declares(executed, tmp_path):
    # compare.ipynb has no run_id or output_dir: papermill must not be handed them.
    assert cli("notebooks/compare.ipynb", "--output-dir", str(tmp_path), "-p", "run_a", "a") == 0
    assert executed[0]["parameters"] == {"run_a": "a"}
    assert Path(executed[0]["dst"]).parent.parent == tmp_path
    with pytest.raises(WorkbenchError, match="users"):
        cli("notebooks/compare.ipynb", "--users", "3")


def test_the_cli_takes_a_params_file_as_papermill_f_does(executed, tmp_path):
    argv = ["notebooks/run.ipynb", "--output-dir", str(tmp_path), "-f", "params/run-ms03.yaml"]
    assert cli(*argv, "-p", "profile", "fast") == 0
    params = executed[0]["parameters"]
    assert (params["shape"], params["duration_s"], params["users"]) == ("hold", 300, 25)
    assert params["profile"] == "fast"  # -p wins over the file
    typo = tmp_path / "typo.yaml"
    typo.write_text("users: 5\nusres: 6\n")
    with pytest.raises(WorkbenchError) as info:
        cli("notebooks/run.ipynb", "-f", str(typo))
    assert info.value.field == "usres" and "did you mean `users`?" in info.value.fix
