"""Confining file references to a folder tree: a pipeline's child pipelines and model fixtures stay in the root
pipeline's folder, a test file's pipeline and fixtures in the folder `flowctl test` searched (`path-escape`
otherwise).

Why: `validate`, `run` and `flowctl test` quote the files they read in their diagnostics, so a reference such as
`../outside.env` or `/etc/passwd` in a file someone else wrote would print that file to a terminal or a CI log.
"""

from __future__ import annotations

import os
from pathlib import Path


def confine(root: Path, base: Path, ref: str) -> Path | None:
    """`base / ref` with symlinks resolved, or None when it leaves `root`'s folder tree (an absolute `ref`, `..`, or
    a symlink pointing out). A path that cannot be resolved (a NUL byte, a symlink loop) is judged as written and
    comes back unresolved: reading it then fails as a missing file does."""
    try:
        target = (base / ref).resolve()
        top = root.resolve()
    except (OSError, RuntimeError, ValueError):
        target, top = Path(os.path.normpath(base / ref)), Path(os.path.normpath(root.absolute()))
        if not target.is_absolute():
            target = Path(os.path.normpath(Path.cwd() / target))
    return target if target.is_relative_to(top) else None


def is_file(path: Path) -> bool:
    """Whether `path` is a regular file; a path the system cannot even look up (a name too long, a symlink loop)
    is not one, rather than an error (`Path.is_file` raises for those)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
