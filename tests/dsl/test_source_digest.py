"""The recorded form of a pipeline's sources and what comparing it with the files now says."""

from __future__ import annotations

from pathlib import Path

from flowctl.dsl.frontend import load_pipeline
from flowctl.dsl.source_digest import edited_since, recorded_form, sources_of, text_digest

A, B, C = text_digest("a"), text_digest("b"), text_digest("c")


def test_a_single_file_records_its_bare_digest_as_before() -> None:
    sources = sources_of("p.yaml", {"p.yaml": "a"}, [])
    assert recorded_form(sources) == A
    assert edited_since(A, sources) == []
    assert edited_since(B, sources) == ["p.yaml"]


def test_several_files_record_one_line_each_pipeline_first() -> None:
    sources = sources_of("p.yaml", {"z.md": "b", "p.yaml": "a"}, [(("child.yaml", C),)])
    assert sources == (("p.yaml", A), ("child.yaml", C), ("z.md", B))
    assert recorded_form(sources) == f"{A}  p.yaml\n{C}  child.yaml\n{B}  z.md"


def test_edits_additions_and_removals_are_named() -> None:
    before = recorded_form((("p.yaml", A), ("gone.md", B), ("kept.md", C)))
    now = (("p.yaml", A), ("kept.md", B), ("new.md", C))
    assert edited_since(before, now) == ["kept.md", "new.md", "gone.md"]


def test_what_cannot_be_compared_says_nothing() -> None:
    now = (("p.yaml", A), ("x.md", B))
    assert edited_since("", now) is None  # a run recorded before digests were
    assert edited_since("not a listing\nat all", now) is None
    assert edited_since(A, now) is None  # the older form: the pipeline file unchanged, the rest unknown
    assert edited_since(C, now) == ["p.yaml"]


def test_the_graph_names_files_relative_to_the_root_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ask.md").write_text("Ask.\n")
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: p\nagents:\n  a: {instruction: x}\nsteps:\n  - {id: s, agent: a, prompt_file: sub/ask.md}\n"
    )
    graph, diagnostics, front = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, diagnostics
    assert [name for name, _ in graph.sources] == ["p.yaml", "sub/ask.md"]
    assert graph.sources[1][1] == text_digest("Ask.\n")
    # what `flowctl submit` sends to the workers: every file read, prompt files too
    assert sorted(front.files_read) == [str((tmp_path / n).resolve()) for n in ("p.yaml", "sub/ask.md")]
