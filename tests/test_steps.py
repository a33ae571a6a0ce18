"""workbench.steps: the one step table and failure taxonomy the flow, stats, plots and report share."""

from __future__ import annotations

import pytest

from workbench import steps
from workbench.driver.flow import HttpStatusError, classify
from workbench.vana.chain import ReceiptTimeout


def test_the_thirteen_steps_in_flow_order():
    assert len(steps.STEPS) == 13 == len(set(steps.STEPS))
    assert steps.STEPS[0] == "derive_key" and steps.STEPS[-1] == "inference_poll"
    assert steps.STEPS.index("relay") < steps.STEPS.index("confirm")


def test_derived_groups_come_from_the_table():
    assert steps.UPLOAD_STEPS == ("upload_file", "upload_grant")
    assert steps.API_STEPS == ("relay", "inference_submit", "inference_poll")
    assert steps.BY_STEP_CLASSES == ("http", "timeout")
    for step in steps.STEP_TABLE:
        assert step.error_class in steps.ERROR_CLASSES
        assert step.component and steps.step_component(step.name) == step.component


@pytest.mark.parametrize(
    ("error_class", "step", "component"),
    [
        ("storage", None, "storage server"),
        ("nonce", "relay", "chain / relayer"),
        ("timeout", "inference_poll", "personal server (via API server)"),
        ("http", "upload_file", "storage server"),
        ("http", None, "API server"),
        ("http", "no_such_step", "API server"),
        ("timeout", None, "unknown step"),
        ("cancelled", "relay", "none: stopped by the run's end"),
        ("no_such_class", "relay", "unknown"),
        (None, None, "unknown"),
    ],
)
def test_fault_component_uses_the_step_for_timeouts_and_http(error_class, step, component):
    assert steps.fault_component(error_class, step) == component


def test_every_error_class_points_at_a_component():
    for cls in steps.ERROR_CLASSES:
        assert steps.fault_component(cls) not in ("", "unknown")


def test_in_flow_order_puts_unknown_names_last_sorted():
    names = ["zeta", "confirm", "derive_key", "alpha", "relay"]
    assert steps.in_flow_order(names) == ["derive_key", "relay", "confirm", "alpha", "zeta"]
    assert steps.in_flow_order([]) == []


@pytest.mark.parametrize("step", steps.STEPS)
def test_a_plain_failure_takes_its_steps_class(step):
    expected = steps.step_class(step, unknown="?")
    assert expected in steps.ERROR_CLASSES
    assert classify(step, RuntimeError("boom")) == expected


def test_failures_outside_the_table_are_internal_or_http():
    assert classify("no_such_step", RuntimeError("boom")) == "internal"
    assert classify("no_such_step", HttpStatusError(500, "x")) == "http"
    assert classify("read_nonce", ReceiptTimeout("slow")) == "timeout"
