"""`criteria.xml`: the run's judgement as JUnit XML, the format CI systems show as test results.

One `<testcase>` per criterion (classname `criteria.<name>`, name = the criterion's label and id):
FAIL is a `<failure>`, N/A (an optional criterion without data) is `<skipped>`, TARGET and
ACCEPTABLE pass (ACCEPTABLE says so in `<system-out>`). One more test case, `run completed`,
fails when the run has no clean end (INCOMPLETE), since such a run cannot pass either.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workbench.analysis import criteria as crit

FILE = "criteria.xml"


def criteria_junit(summary: Mapping[str, Any]) -> str:
    """The JUnit XML document of a summary's criteria rows and completeness."""
    name = str(summary.get("criteria_name") or "criteria")
    suite = ET.Element(
        "testsuite",
        name=str(summary.get("criteria_title") or name),
        timestamp=str(summary.get("started_at") or ""),
        time=f"{summary.get('wall_s') or 0:.3f}",
    )
    properties = ET.SubElement(suite, "properties")
    for key in ("run_id", "verdict", "outcome", "shape", "profile", "users"):
        ET.SubElement(properties, "property", name=key, value=str(summary.get(key, "")))
    for row in summary.get("criteria", []):
        _testcase(suite, name, row)
    done = ET.SubElement(suite, "testcase", classname=f"criteria.{name}", name="run completed")
    if not summary.get("complete", True):
        reason = summary.get("end_reason") or "no end mark: killed or crashed"
        ET.SubElement(done, "failure", message=f"INCOMPLETE run ({reason})", type="INCOMPLETE")
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
    suite.set("errors", "0")
    root = ET.Element("testsuites", name="workbench")
    root.append(suite)
    for key in ("tests", "failures", "skipped", "errors"):
        root.set(key, suite.get(key, "0"))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _testcase(suite: ET.Element, name: str, row: Mapping[str, Any]) -> None:
    case = ET.SubElement(
        suite, "testcase", classname=f"criteria.{name}", name=f"{row['label']} ({row['id']})"
    )
    unit = row.get("unit", "")
    value = crit.format_value(row.get("value"), unit)
    target = crit.format_threshold(row["op"], row["target"], unit)
    acceptable = crit.format_threshold(row["op"], row["acceptable"], unit)
    detail = f"{row['metric']} = {value}; target {target}, acceptable {acceptable}"
    if row.get("note"):
        detail += f" ({row['note']})"
    status = row["status"]
    if status == "FAIL":
        ET.SubElement(case, "failure", message=detail, type="FAIL")
    elif status == "N/A":
        ET.SubElement(case, "skipped", message=detail)
    else:
        ET.SubElement(case, "system-out").text = f"{status}: {detail}"


def write_junit(results_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    path = Path(results_dir) / FILE
    path.write_text(criteria_junit(summary), encoding="utf-8")
    return path
