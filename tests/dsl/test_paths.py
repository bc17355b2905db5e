"""`confine`: a file reference stays in its folder tree, whatever the path looks like."""

from __future__ import annotations

from pathlib import Path

from flowctl.dsl.paths import confine


def test_paths_inside_the_tree_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert confine(tmp_path, tmp_path / "sub", "../a.yaml") == (tmp_path / "a.yaml").resolve()
    assert confine(tmp_path, tmp_path, "sub/./b.yaml") == (tmp_path / "sub" / "b.yaml").resolve()


def test_paths_leaving_the_tree_are_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert confine(tmp_path / "sub", tmp_path / "sub", "../outside.env") is None
    assert confine(tmp_path, tmp_path, "/etc/passwd") is None
    (tmp_path / "sub" / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    assert confine(tmp_path / "sub", tmp_path / "sub", "link.yaml") is None


def test_unresolvable_paths_are_judged_as_written(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    assert confine(tmp_path, tmp_path, "loop.yaml") is not None  # then reading it fails as a missing file
    assert confine(tmp_path, tmp_path, "a\0b.yaml") is not None
    assert confine(tmp_path, tmp_path, "../a\0b.yaml") is None
    assert not (confine(tmp_path, tmp_path, "a\0b.yaml") or tmp_path).is_file()
