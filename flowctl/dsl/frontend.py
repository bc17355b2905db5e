"""The front end in plain sight: load → schema → checks → compile, for a file and the child files it names.

`FrontEnd` keeps every file it loaded (for rendering source lines in diagnostics) and compiles each child file once.
Child files must live inside the root pipeline's folder tree, and a child may not (transitively) include itself.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flowctl.dsl import catalogue as cat
from flowctl.dsl.check_context import without_rejected
from flowctl.dsl.checks import CheckContext, ChildInfo, check_document
from flowctl.dsl.compile import compile_graph
from flowctl.dsl.diagnostics import Diagnostic, Span, finalize, has_errors
from flowctl.dsl.index import build_index
from flowctl.dsl.ir import Graph
from flowctl.dsl.kinds import is_file_reference, refs
from flowctl.dsl.loader import LoadedDocument, load_file
from flowctl.dsl.prompt_files import inline_prompt_files
from flowctl.dsl.schema import check_schema
from flowctl.dsl.source_digest import relative_name, sources_of


@dataclass(slots=True)
class FileResult:
    doc: LoadedDocument
    diagnostics: list[Diagnostic]
    graph: Graph | None = None


@dataclass(slots=True)
class FrontEnd:
    """Validates and compiles pipeline files; one instance per command invocation."""

    root_dir: Path | None = None
    env: Mapping[str, str] | None = None  # where `${VAR}` is looked up for `unset-variable` (default: os.environ)
    files: dict[str, FileResult] = field(default_factory=dict)  # by resolved path
    prompt_texts: dict[str, str] = field(default_factory=dict)  # prompt files read, by the name diagnostics give
    files_read: dict[str, str] = field(default_factory=dict)  # every file read (pipelines, prompts), by resolved path
    _in_progress: list[str] = field(default_factory=list)  # the chain of files being processed, outermost first

    def sources(self) -> dict[str, str]:
        return {**self.prompt_texts, **{r.doc.file: r.doc.source for r in self.files.values()}}

    def process(self, path: str | Path, *, display: str | None = None) -> FileResult:
        resolved = str(Path(path).resolve())
        if resolved in self.files:
            return self.files[resolved]
        if self.root_dir is None:
            self.root_dir = Path(resolved).parent
        self._in_progress.append(resolved)
        try:
            result = self._process(resolved, display or _display_name(path))
        finally:
            self._in_progress.pop()
        self.files[resolved] = result
        return result

    def _process(self, resolved: str, display: str) -> FileResult:
        doc = load_file(resolved, display)
        diagnostics = list(doc.diagnostics)
        if doc.data is None or has_errors(doc.diagnostics):
            return FileResult(doc, finalize(diagnostics))
        schema = check_schema(doc)
        diagnostics += schema.diagnostics
        # the checks see only values of the types the schema allows: each may trust the shape of what it finds
        checked = dataclasses.replace(doc, data=without_rejected(doc.data, schema.rejected))
        index = build_index(checked.data)
        read = {Path(resolved): doc.source}  # every file the pipeline reads at load time: its sources
        if index is not None and not _fatal_schema_errors(diagnostics):
            resolver = _ChildResolver(self, Path(resolved).parent)
            folders = (Path(resolved).parent, self.root_dir or Path(resolved).parent)
            # prompt files become the fields they stand for, in `doc` too (the compiler reads it)
            problems, texts = inline_prompt_files(checked, index, *folders, read)
            self.prompt_texts.update(texts)
            diagnostics += problems
            env = os.environ if self.env is None else self.env
            context = CheckContext(checked, index, resolver, folders=folders, texts=texts, env=env)
            diagnostics += check_document(context)
        self.files_read.update((str(path), text) for path, text in read.items())
        diagnostics = finalize(diagnostics)
        result = FileResult(doc, diagnostics)
        if not has_errors(diagnostics):
            found = {key: self.files[key].graph for key in _child_keys(self, Path(resolved).parent, doc)}
            children = {k: g for k, g in found.items() if g is not None}
            texts = {relative_name(path, self.root_dir): text for path, text in read.items()}
            own = relative_name(resolved, self.root_dir)
            sources = sources_of(own, texts, [child.sources for child in children.values()])
            result.graph = compile_graph(
                doc, children, lambda ref: str(_child_path(Path(resolved).parent, ref)), sources
            )
        return result


def _fatal_schema_errors(diagnostics: list[Diagnostic]) -> bool:
    """An unsupported version or a non-mapping document makes the semantic checks meaningless."""
    return any(d.code in (cat.UNSUPPORTED_VERSION, cat.EMPTY_DOCUMENT) for d in diagnostics)


def _display_name(path: str | Path) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _child_keys(front: FrontEnd, base: Path, doc: LoadedDocument) -> list[str]:
    index = build_index(doc.data)
    keys = []
    for pipeline in index.pipelines() if index else ():
        for step in pipeline.ordered:
            for ref, _ in refs(step.kind, step.raw, step.path, "pipeline"):
                target = _child_path(base, ref) if is_file_reference(ref) else None
                if isinstance(target, Path) and str(target) in front.files:
                    keys.append(str(target))
    return keys


def _child_path(base: Path, ref: str) -> Path | str:
    """The resolved path of a child pipeline reference, or why it has none (a NUL character, a name longer than
    the system allows, a symlink loop): every place that follows a reference uses this, so none can raise."""
    if "\0" in ref:
        return "it contains a NUL character"
    try:
        return (base / ref).resolve()
    except RuntimeError:  # Python < 3.13 reports a symlink loop so
        return "it leads into a symlink loop"
    except (OSError, ValueError) as exc:
        return _reason(exc)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "it leads into a symlink loop"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return "a name in it is longer than the system allows"
    return f"it cannot be used: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"


class _ChildResolver:
    def __init__(self, front: FrontEnd, base: Path) -> None:
        self.front = front
        self.base = base

    def __call__(self, ref: str, span: Span) -> ChildInfo | Diagnostic:
        target = _child_path(self.base, ref)
        if isinstance(target, str):
            return cat.child_path_unusable(span, ref, target)
        root = self.front.root_dir or self.base
        if not target.is_relative_to(root.resolve()):
            return cat.path_escape(span, ref)
        try:
            is_file = target.is_file()
        except OSError as exc:
            return cat.child_path_unusable(span, ref, _reason(exc))
        if not is_file:
            return cat.child_not_found(span, ref)
        key = str(target)
        if key in self.front._in_progress:
            return cat.dependency_cycle(span, self._cycle(key))
        child = self.front.process(target)
        errors = sum(1 for d in child.diagnostics if d.severity.value == "error")
        if errors:
            return cat.child_invalid(span, ref, errors)
        data = child.doc.data if isinstance(child.doc.data, dict) else {}
        inputs, shared = data.get("inputs"), data.get("parent_state")
        keys = tuple(k for k in shared if isinstance(k, str)) if isinstance(shared, list) else ()
        return ChildInfo(key, inputs if isinstance(inputs, dict) else {}, errors, keys)

    def _cycle(self, key: str) -> list[str]:
        """The files of an include cycle, relative to the root folder: `a.yaml -> children/b.yaml -> a.yaml`."""
        chain = [*self.front._in_progress[self.front._in_progress.index(key) :], key]
        root = (self.front.root_dir or self.base).resolve()
        return [Path(os.path.relpath(file, root)).as_posix() for file in chain]


def load_pipeline(path: str | Path) -> tuple[Graph | None, list[Diagnostic], FrontEnd]:
    """Validate and compile one pipeline file (and its children). The graph is None when there are errors."""
    front = FrontEnd()
    result = front.process(path)
    diagnostics = [
        d for r in front.files.values() for d in r.diagnostics if r is result or d.span.file == result.doc.file
    ]
    return result.graph, finalize(diagnostics), front
