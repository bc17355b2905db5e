"""Drawing the graph: Mermaid and DOT show compositions as subgraphs and dependencies as edges."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from flowctl.dsl import ir
from flowctl.dsl.draw import to_dot, to_mermaid
from flowctl.dsl.frontend import FrontEnd

VALID = Path(__file__).parent / "golden" / "valid"
ALL_VALID = sorted(VALID.rglob("*.yaml"))


def golden(name: str) -> ir.Graph:
    graph = FrontEnd().process(VALID / name).graph
    assert graph is not None
    return graph


def mermaid_subgraphs(text: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*subgraph (\S+)\["(.*)"\]$', text, re.MULTILINE))


def dot_clusters(text: str) -> list[str]:
    return re.findall(r"^\s*subgraph (cluster_\S+) \{$", text, re.MULTILINE)


# --- Mermaid ----------------------------------------------------------------------------------------------------


def test_mermaid_parallel_is_a_subgraph_with_its_join() -> None:
    text = to_mermaid(golden("parallel.yaml"))
    assert text.startswith("flowchart TD\n")
    subgraphs = mermaid_subgraphs(text)
    assert subgraphs["root__analyses"] == "analyses (parallel, join all)"
    assert subgraphs["root__quorum"] == "quorum (parallel, join at_least)"
    assert "  root__short --> root__after_short" in text.splitlines()
    assert "  root__analyses --> root__best_effort" in text.splitlines()


def test_mermaid_route_has_a_decision_and_a_subgraph_per_branch() -> None:
    text = to_mermaid(golden("route.yaml"))
    subgraphs = mermaid_subgraphs(text)
    assert subgraphs["root__analyse"] == "analyse (route)"
    assert {"root__analyse__rapid", "root__analyse__detailed", "root__analyse__compliance"} <= set(subgraphs)
    assert 'root__analyse__choose{"analyse<br/>choose"}' in text
    assert "  root__analyse__choose -->|detailed| root__deep" in text.splitlines()


def test_mermaid_loop_is_a_bounded_subgraph() -> None:
    text = to_mermaid(golden("loop.yaml"))
    assert mermaid_subgraphs(text)["root__refine"] == "refine (loop ≤ 4)"
    assert "  root__draft --> root__judge" in text.splitlines()
    assert "  root__refine --> root__final" in text.splitlines()


def test_mermaid_named_child_is_expanded_and_file_child_is_a_node() -> None:
    text = to_mermaid(golden("nested.yaml"))
    subgraphs = mermaid_subgraphs(text)
    assert subgraphs["root__first_task"] == "first_task → pipeline execute_task"
    assert subgraphs["root__per_task"] == "per_task → pipeline execute_task (for each)"
    assert "root__per_task__execute_task__do" in text
    assert 'root__summary["summary<br/>pipeline: summarise.yaml"]' in text
    assert "<br/>for each item" in text


def test_mermaid_triggers_and_finally() -> None:
    events = to_mermaid(golden("events.yaml"))
    subgraphs = mermaid_subgraphs(events)
    assert subgraphs["root__trigger_on_ingested"] == "on event: ingested"
    assert subgraphs["root__trigger_big_batch"] == "on when: state.items | length > 1000"
    assert "  root__ingest -->|on failure| root__fallback_source" in events.splitlines()
    assert "  root__publish -->|on completion| root__thank" in events.splitlines()
    assert 'root__approval>"approval<br/>wait: approved"]' in events
    failure = to_mermaid(golden("failure.yaml"))
    assert mermaid_subgraphs(failure)["root__finally"] == "finally"


def test_mermaid_labels_escape_quotes(tmp_path: Path) -> None:
    path = tmp_path / "quotes.yaml"
    path.write_text(
        "flowctl: 1\nname: q\nstate:\n  x: {}\nsteps:\n  - {id: a, set: {x: 1}}\n"
        "triggers:\n  - id: t\n    when: 'state.x == \"a\"'\n    steps: [{id: s, set: {}}]\n",
        encoding="utf-8",
    )
    graph = FrontEnd().process(path).graph
    assert graph is not None
    assert mermaid_subgraphs(to_mermaid(graph))["root__trigger_t"] == "on when: state.x == #quot;a#quot;"
    assert 'label="on when: state.x == \\"a\\"";' in to_dot(graph)


# --- DOT --------------------------------------------------------------------------------------------------------


def test_dot_clusters_for_compositions() -> None:
    assert dot_clusters(to_dot(golden("parallel.yaml"))) == [
        "cluster_root__analyses",
        "cluster_root__best_effort",
        "cluster_root__fastest",
        "cluster_root__quorum",
    ]
    route = dot_clusters(to_dot(golden("route.yaml")))
    assert "cluster_root__analyse" in route and "cluster_root__analyse__detailed" in route
    assert dot_clusters(to_dot(golden("loop.yaml"))) == ["cluster_root__refine"]
    assert "cluster_root__first_task" in dot_clusters(to_dot(golden("nested.yaml")))


def test_dot_edges_into_clusters_are_clipped_at_the_border() -> None:
    text = to_dot(golden("parallel.yaml"))
    assert "  root__short -> root__after_short;" in text.splitlines()
    edge = "  root__mood -> root__a1 [ltail=cluster_root__analyses, lhead=cluster_root__best_effort];"
    assert edge in text.splitlines()
    assert "compound=true" in text


def test_dot_route_edges_are_labelled() -> None:
    assert '  root__analyse__choose -> root__deep [label="detailed"];' in to_dot(golden("route.yaml")).splitlines()


@pytest.mark.parametrize("path", ALL_VALID, ids=lambda p: p.stem)
def test_every_valid_pipeline_draws_balanced_output(path: Path) -> None:
    graph = FrontEnd().process(path).graph
    assert graph is not None
    mermaid = to_mermaid(graph).splitlines()
    assert sum(line.strip().startswith("subgraph ") for line in mermaid) == sum(
        line.strip() == "end" for line in mermaid
    )
    dot = to_dot(graph)
    assert dot.count("{") == dot.count("}")
    nodes = set(re.findall(r"^\s*(\w+) \[label=", dot, re.MULTILINE))
    for src, dst in re.findall(r"^\s*(\w+) -> (\w+)", dot, re.MULTILINE):
        assert {src, dst} <= nodes
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg"], input=dot.encode(), check=True, capture_output=True)
