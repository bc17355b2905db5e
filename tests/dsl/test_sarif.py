"""SARIF 2.1.0 output: the structure code scanning requires, rules from the catalogue, one result per diagnostic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from flowctl import __version__
from flowctl.cli import main
from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Diagnostic, Severity, Span
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.sarif import render_sarif

INVALID = Path(__file__).parent / "golden" / "invalid"
LEVELS = {"none", "note", "warning", "error"}


def check_sarif(log: dict[str, Any]) -> None:
    """The required properties of SARIF 2.1.0 (sarifLog, run, tool, reportingDescriptor, result, location)."""
    assert log["version"] == "2.1.0"
    assert log["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(log["runs"], list) and log["runs"]
    for run in log["runs"]:
        driver = run["tool"]["driver"]
        assert isinstance(driver["name"], str) and driver["name"]
        rule_ids = [rule["id"] for rule in driver.get("rules", [])]
        assert len(rule_ids) == len(set(rule_ids))
        for rule in driver.get("rules", []):
            assert isinstance(rule["shortDescription"]["text"], str)
            assert rule["defaultConfiguration"]["level"] in LEVELS
        for result in run["results"]:
            assert isinstance(result["message"]["text"], str) and result["message"]["text"]
            assert result["level"] in LEVELS
            if "ruleIndex" in result:
                assert rule_ids[result["ruleIndex"]] == result["ruleId"]
            for location in result["locations"] + result.get("relatedLocations", []):
                check_location(location)


def check_location(location: dict[str, Any]) -> None:
    physical = location["physicalLocation"]
    uri = physical["artifactLocation"]["uri"]
    assert uri and "\\" not in uri
    region = physical["region"]
    assert region["startLine"] >= 1 and region["startColumn"] >= 1
    if "endLine" in region:
        assert (region["endLine"], region["endColumn"]) >= (region["startLine"], region["startColumn"])


def test_empty_log_lists_every_rule_of_the_catalogue() -> None:
    log = json.loads(render_sarif([]))
    check_sarif(log)
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["name"] == "flowctl"
    assert driver["version"] == __version__
    assert [rule["id"] for rule in driver["rules"]] == list(cat.CODES)
    assert log["runs"][0]["results"] == []


def test_rules_carry_summary_fix_and_default_level() -> None:
    rules = {r["id"]: r for r in json.loads(render_sarif([]))["runs"][0]["tool"]["driver"]["rules"]}
    for code, info in cat.CODES.items():
        assert rules[code]["shortDescription"]["text"] == info.summary
        assert rules[code]["help"]["text"] == info.fix
    assert rules[cat.UNKNOWN_EVENT]["defaultConfiguration"]["level"] == "warning"
    assert rules[cat.UNKNOWN_KEY]["defaultConfiguration"]["level"] == "error"


def test_a_result_has_rule_level_message_and_region() -> None:
    span = Span("pipelines/a b.yaml", 3, 5, 3, 12)
    diagnostic = Diagnostic("unknown-key", "unknown key 'nmae' in the pipeline", span, hint="did you mean 'name'?")
    log = json.loads(render_sarif([diagnostic]))
    check_sarif(log)
    (result,) = log["runs"][0]["results"]
    assert result["ruleId"] == "unknown-key"
    assert result["level"] == "error"
    assert result["message"]["text"] == "unknown key 'nmae' in the pipeline (hint: did you mean 'name'?)"
    physical = result["locations"][0]["physicalLocation"]
    assert physical["artifactLocation"] == {"uri": "pipelines/a%20b.yaml", "uriBaseId": "%SRCROOT%"}
    assert physical["region"] == {"startLine": 3, "startColumn": 5, "endLine": 3, "endColumn": 12}


def test_unknown_end_positions_are_left_out_and_warnings_stay_warnings() -> None:
    diagnostic = Diagnostic("unknown-event", "no step emits event 'x'", Span("p.yaml", 2, 1), Severity.WARNING)
    (result,) = json.loads(render_sarif([diagnostic]))["runs"][0]["results"]
    assert result["level"] == "warning"
    assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": 2, "startColumn": 1}


def test_absolute_paths_become_file_uris() -> None:
    diagnostic = Diagnostic("yaml-syntax", "invalid YAML: x", Span("/tmp/x.yaml", 1, 1))
    (result,) = json.loads(render_sarif([diagnostic]))["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": "file:///tmp/x.yaml"}


def test_the_golden_corpus_renders_as_valid_sarif() -> None:
    diagnostics = [d for path in sorted(INVALID.glob("*.yaml")) for d in FrontEnd().process(path).diagnostics]
    log = json.loads(render_sarif(diagnostics))
    check_sarif(log)
    results = log["runs"][0]["results"]
    assert len(results) == len(diagnostics)
    duplicates = [r for r in results if r["ruleId"] == cat.DUPLICATE_ID]
    assert duplicates and all(r["relatedLocations"] for r in duplicates)


def test_validate_format_sarif_on_the_command_line() -> None:
    result = CliRunner().invoke(main, ["validate", "--format", "sarif", str(INVALID / "unknown_agent.yaml")])
    assert result.exit_code == 1
    log = json.loads(result.output)
    check_sarif(log)
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == [cat.UNKNOWN_AGENT] * 3
