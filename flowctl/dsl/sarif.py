"""Diagnostics as SARIF 2.1.0 (`flowctl validate --format sarif`), for code scanning tools such as GitHub's.

One run, whose tool driver lists every code of the catalogue as a rule (summary, fix, default level); each diagnostic
becomes a result that points at its rule and its region. Columns count characters (`unicodeCodePoints`), and end
positions are exclusive, as in flowctl's spans.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flowctl import __version__
from flowctl.dsl.catalogue import CODES, CodeInfo
from flowctl.dsl.diagnostics import Diagnostic, Severity, Span

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"


def _level(severity: Severity) -> str:
    return "error" if severity is Severity.ERROR else "warning"


def _rule(info: CodeInfo) -> dict[str, Any]:
    return {
        "id": info.code,
        "name": "".join(part.capitalize() for part in info.code.split("-")),
        "shortDescription": {"text": info.summary},
        "help": {"text": info.fix, "markdown": info.fix},
        "defaultConfiguration": {"level": _level(info.severity)},
    }


def _artifact(file: str) -> dict[str, str]:
    """A relative path stays relative to the source root; an absolute one becomes a `file://` URI."""
    path = Path(file)
    if path.is_absolute():
        return {"uri": path.as_uri()}
    return {"uri": quote(path.as_posix()), "uriBaseId": SRCROOT}


def _region(span: Span) -> dict[str, int]:
    region = {"startLine": max(span.line, 1), "startColumn": max(span.col, 1)}
    if span.end_line >= span.line >= 1 and span.end_col >= 1:
        region.update(endLine=span.end_line, endColumn=span.end_col)
    return region


def _location(span: Span, message: str = "") -> dict[str, Any]:
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": _artifact(span.file), "region": _region(span)}}
    if message:
        location["message"] = {"text": message}
    return location


def _result(diagnostic: Diagnostic, rule_index: dict[str, int]) -> dict[str, Any]:
    text = diagnostic.message + (f" (hint: {diagnostic.hint})" if diagnostic.hint else "")
    result: dict[str, Any] = {
        "ruleId": diagnostic.code,
        "level": _level(diagnostic.severity),
        "message": {"text": text},
        "locations": [_location(diagnostic.span)],
    }
    if diagnostic.code in rule_index:
        result["ruleIndex"] = rule_index[diagnostic.code]
    if diagnostic.related:
        result["relatedLocations"] = [
            {**_location(span, "first defined here"), "id": i} for i, span in enumerate(diagnostic.related, 1)
        ]
    return result


def sarif_log(diagnostics: Iterable[Diagnostic]) -> dict[str, Any]:
    """The SARIF log as a JSON-ready mapping."""
    rules = [_rule(info) for info in CODES.values()]
    rule_index = {rule["id"]: i for i, rule in enumerate(rules)}
    driver = {
        "name": "flowctl",
        "version": __version__,
        "semanticVersion": __version__,
        "rules": rules,
    }
    run = {
        "tool": {"driver": driver},
        "columnKind": "unicodeCodePoints",
        "originalUriBaseIds": {SRCROOT: {"uri": Path.cwd().as_uri() + "/"}},
        "results": [_result(d, rule_index) for d in diagnostics],
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def render_sarif(diagnostics: Iterable[Diagnostic]) -> str:
    """SARIF 2.1.0 text for `diagnostics` (an empty result list when there are none)."""
    return json.dumps(sarif_log(diagnostics), indent=2, ensure_ascii=False)
