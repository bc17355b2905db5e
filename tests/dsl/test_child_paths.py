"""A child pipeline path that cannot be followed is a diagnostic at the path: symlink loops (the golden corpus has
the NUL and too-long cases, which need no symlinks)."""

from __future__ import annotations

from pathlib import Path

from flowctl.dsl import catalogue as cat
from flowctl.dsl.frontend import load_pipeline


def test_a_child_path_into_a_symlink_loop_is_a_diagnostic(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").symlink_to("two.yaml")
    (tmp_path / "two.yaml").symlink_to("one.yaml")
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: p\nsteps:\n"
        "  - {id: direct, pipeline: one.yaml}\n"
        "  - {id: through, pipeline: one.yaml/child.yaml}\n",
        "utf-8",
    )
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is None
    assert [(d.code, d.span.line) for d in diagnostics] == [(cat.CHILD_PATH_UNUSABLE, 4), (cat.CHILD_PATH_UNUSABLE, 5)]
    assert all("symlink loop" in d.message for d in diagnostics)
