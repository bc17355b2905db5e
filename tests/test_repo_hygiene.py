"""The repository holds no leftovers of a merge: a conflict marker in a doc or a module is a bug nobody meant."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^(<{7}|>{7})( |$)", re.MULTILINE)


def test_no_file_holds_a_merge_conflict_marker() -> None:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if listed.returncode != 0:  # not a git checkout (an sdist): look at the usual folders
        files = [p for folder in ("flowctl", "docs", "tests", "pipelines", "bench") for p in (ROOT / folder).rglob("*")]
        files += [ROOT / "README.md"]
    else:
        files = [ROOT / line for line in listed.stdout.splitlines()]
    spoiled = []
    for path in files:
        if not path.is_file() or path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".txt", ""}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if MARKER.search(text):
            spoiled.append(str(path.relative_to(ROOT)))
    assert not spoiled, f"merge conflict markers left in: {spoiled}"
