"""Prompts in their own files: `instruction_file:` (an agent) and `prompt_file:` (an agent step's prompt, a route's:
the kinds' `files` in the registry), read after the schema check and before the semantic checks.

Each file's text becomes the `instruction` or `prompt` it stands for, so every later stage treats it like an inline
template: the template checks, the compiler, the run. Its position is the file's own: the source map points the
field at `prompts/x.md:1:1`, and the template checks look up lines and references in that file's text
(`CheckContext.texts`), so a problem is reported at `prompts/x.md:LINE:COL`.

Paths are relative to the pipeline file and must stay in the root pipeline's folder tree: an absolute path, `..`
out of it, or a symlink pointing out is refused (`path-escape`), as is a file that cannot be read, is too large or
is not UTF-8 text.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowctl.dsl import catalogue as cat
from flowctl.dsl.characters import editor_lines
from flowctl.dsl.diagnostics import Diagnostic, Span
from flowctl.dsl.index import DocIndex
from flowctl.dsl.kinds import ANY, KINDS, FileField, at
from flowctl.dsl.loader import MAX_FILE_BYTES, JsonPath, LoadedDocument
from flowctl.dsl.paths import confine

INSTRUCTION_FILE = FileField(("agents", ANY), "instruction_file", "instruction")  # an agent's, not a step's


def _file_fields(data: Any, index: DocIndex | None) -> Iterator[tuple[JsonPath, dict[str, Any], FileField]]:
    """(path of the mapping, the mapping, its file field) for every agent and step that names a prompt file (the
    steps' from the kind registry: an agent step's `prompt_file`, a route's)."""
    for path, agent in at(data, INSTRUCTION_FILE.where, ()):
        if isinstance(agent, dict) and isinstance(agent.get(INSTRUCTION_FILE.key), str):
            yield path, agent, INSTRUCTION_FILE
    for pipeline in index.pipelines() if index is not None else ():
        for step in pipeline.ordered:
            spec = KINDS.get(step.kind) if step.kind is not None else None
            for file in spec.files if spec is not None else ():
                for path, mapping in at(step.raw, file.where, step.path):
                    if isinstance(mapping, dict) and isinstance(mapping.get(file.key), str):
                        yield path, mapping, file


def inline_prompt_files(
    doc: LoadedDocument, index: DocIndex | None, base: Path, root: Path, read: dict[Path, str] | None = None
) -> tuple[list[Diagnostic], dict[str, str]]:
    """Put each named file's text in the document (in place), and its span in the source map. Returns the problems
    and the texts read, by the name diagnostics give them; `read` gets them by resolved path (the run's sources)."""
    problems: list[Diagnostic] = []
    texts: dict[str, str] = {}
    for path, mapping, file in list(_file_fields(doc.data, index)):
        if file.field in mapping:
            continue  # both the text and the file: the schema reported it
        ref: str = mapping[file.key]
        span = doc.source_map.value((*path, file.key))
        target, text, problem = _read(ref, span, base, root)
        if problem is not None:
            problems.append(problem)
            continue
        assert target is not None and text is not None
        if read is not None:
            read[target] = text
        shown = os.path.normpath(os.path.join(os.path.dirname(doc.file), ref))
        lines = editor_lines(text)
        end = Span(shown, 1, 1, max(len(lines), 1), (len(lines[-1]) if lines else 0) + 1)
        mapping[file.field] = text
        doc.source_map.values[(*path, file.field)] = end
        doc.source_map.keys[(*path, file.field)] = doc.source_map.key((*path, file.key))
        texts[shown] = text
    return problems, texts


Read = tuple[Path | None, str | None, Diagnostic | None]  # the file's resolved path and text, or the problem


def _read(ref: str, span: Span, base: Path, root: Path) -> Read:
    if os.path.isabs(ref) or ref.startswith("~"):
        where = "the pipeline's folder (give a relative path)"
        return None, None, cat.path_escape(span, ref, "prompt file path", where)
    target = confine(root, base, ref)
    if target is None:
        return None, None, cat.path_escape(span, ref, "prompt file path", "the pipeline's folder")
    try:
        size = target.stat().st_size
        if size > MAX_FILE_BYTES:
            reason = f"it is {size} bytes; the limit is {MAX_FILE_BYTES}"
            return None, None, cat.prompt_file_unreadable(span, ref, reason)
        raw = target.read_bytes()
    except OSError as exc:
        return None, None, cat.prompt_file_unreadable(span, ref, exc.strerror or str(exc))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, None, cat.prompt_file_unreadable(span, ref, f"it is not UTF-8 text (byte {exc.start})")
    return target, text.replace("\r\n", "\n"), None
