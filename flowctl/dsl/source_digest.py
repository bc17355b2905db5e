"""What a run records of the files its pipeline was compiled from, and what a resume learns by comparing.

A pipeline reads more than its own file when it is loaded: prompt files (`prompt_file:`, `instruction_file:`), the
child pipeline files it calls (and theirs), and the template files its templates `{% include %}`. Each is one entry
of the pipeline's *sources*: its path relative to the root pipeline's folder (so a folder moved or materialised
elsewhere, as a `flowctl scale` worker does, names the same files) and the sha256 of its text, the pipeline file
first and the others sorted by path.

The form recorded with each run (`Graph.source_digest`, the run record's `source_digest`):
- a pipeline that reads only its own file: the sha256 of its text, as runs recorded it before other files counted
  (a run recorded then compares equal to the same file now);
- otherwise one `SHA256  PATH` line per file, as `sha256sum` prints them.

A resume refused because a recorded request changed (`ResumeRefused`) compares the run's recorded form with the files
now (`edited_since`) to say which file was edited, or that none was (the request changed for another reason: an
input, an environment variable, a server's prompt).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

Sources = tuple[tuple[str, str], ...]  # (path relative to the root pipeline's folder, sha256 of the text)


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def relative_name(path: Path | str, root: Path | None) -> str:
    """`path` as sources name it: relative to the root pipeline's folder, with `/` (the absolute path if outside)."""
    absolute = os.path.abspath(path)
    if root is not None:
        relative = os.path.relpath(absolute, os.path.abspath(root))
        if not relative.startswith(".."):
            return Path(relative).as_posix()
    return Path(absolute).as_posix()


def sources_of(own: str, texts: dict[str, str], children: Iterable[Sources]) -> Sources:
    """The sources of a pipeline: its own file `own` (in `texts`, by name, with the other files it reads) first,
    then every other file, its own and its children's, sorted by name and each once."""
    digests = {name: text_digest(text) for name, text in texts.items()}
    for child in children:
        digests.update(child)
    first = (own, digests.pop(own))
    return (first, *sorted(digests.items()))


def recorded_form(sources: Sources) -> str:
    """What a run records: the bare digest for a single file, else one `SHA256  PATH` line per file."""
    if len(sources) == 1:
        return sources[0][1]
    return "\n".join(f"{digest}  {name}" for name, digest in sources)


def parse_recorded(recorded: str, own: str) -> dict[str, str] | None:
    """The files a recorded form names, by name (a bare digest names the pipeline file `own`); None when it is
    empty or not a form this module writes."""
    recorded = recorded.strip()
    if not recorded:
        return None
    if "\n" not in recorded and "  " not in recorded:
        return {own: recorded}
    files: dict[str, str] = {}
    for line in recorded.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or not name:
            return None
        files[name] = digest
    return files


def edited_since(recorded: str, sources: Sources) -> list[str] | None:
    """The files of `sources` added, removed or edited since `recorded` was written ([] when none was); None when the
    recorded form says nothing comparable (an empty digest, from before runs recorded one)."""
    if not sources:
        return None
    now = dict(sources)
    before = parse_recorded(recorded, sources[0][0])
    if before is None:
        return None
    if len(before) == 1 and len(now) > 1 and sources[0][0] in before and "\n" not in recorded.strip():
        # a bare digest is the pipeline file's alone: the other files were not recorded, so only it can be judged
        return [sources[0][0]] if before[sources[0][0]] != now[sources[0][0]] else None
    names = [name for name, _ in sources] + sorted(set(before) - set(now))
    return [name for name in names if before.get(name) != now.get(name)]


def describe_edits(edited: list[str] | None) -> str:
    """The sentence a refused resume adds about the pipeline's files; empty when nothing can be said."""
    if edited is None:
        return ""
    if not edited:
        return (
            "the pipeline's files are as they were when the run started (what changed is outside them: an "
            "environment variable, the fixture, or a server's prompt or resource)"
        )
    shown = ", ".join(edited[:5]) + (f" and {len(edited) - 5} more" if len(edited) > 5 else "")
    return f"edited since the run started: {shown}"
