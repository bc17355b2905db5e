"""docs/examples.md shows each example's graph as `flowctl graph` draws it; this keeps the page true.

Run with FLOWCTL_UPDATE_DOCS=1 to rewrite the Mermaid blocks after changing the drawing or an example.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from flowctl.dsl.draw import to_mermaid
from flowctl.dsl.frontend import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "examples.md"
SECTION = re.compile(r"^## (?P<name>\w+)\n(?P<body>.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)
MERMAID = re.compile(r"```mermaid\n.*?```", re.DOTALL)


def _drawn(name: str) -> str:
    graph, diagnostics, _ = load_pipeline(ROOT / "pipelines" / f"{name}.yaml")
    assert graph is not None, diagnostics
    return "```mermaid\n" + to_mermaid(graph) + "```"


def _rendered(text: str) -> str:
    def section(match: re.Match[str]) -> str:
        name, body = match.group("name"), match.group("body")
        if not (ROOT / "pipelines" / f"{name}.yaml").exists() or not MERMAID.search(body):
            return match.group(0)
        return f"## {name}\n" + MERMAID.sub(lambda _: _drawn(name), body, count=1)

    return SECTION.sub(section, text)


def test_every_example_has_its_current_graph_in_the_examples_page() -> None:
    text = DOC.read_text(encoding="utf-8")
    expected = _rendered(text)
    if os.environ.get("FLOWCTL_UPDATE_DOCS") == "1":
        DOC.write_text(expected, encoding="utf-8")
        text = expected
    documented = {m.group("name") for m in SECTION.finditer(text) if MERMAID.search(m.group("body"))}
    examples = {
        p.stem for p in (ROOT / "pipelines").glob("*.yaml") if not p.name.endswith((".fixture.yaml", ".test.yaml"))
    }
    assert examples <= documented, f"examples without a graph in docs/examples.md: {sorted(examples - documented)}"
    assert text == expected, "docs/examples.md is out of date: rerun with FLOWCTL_UPDATE_DOCS=1"
