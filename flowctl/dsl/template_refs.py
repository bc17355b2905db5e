"""The variables a Jinja template reads from its context, found with Jinja's scoping rules.

A name bound inside the template is not a context variable, but only where it is bound: a `{% for %}` target and
`loop` exist inside the loop's body (so `{{ loop.index }}` there reads nothing from the context, while the same
name after `{% endfor %}` does), macro parameters inside the macro, `{% with %}` targets inside the block, and a
`{% set %}` from that point to the end of the enclosing scope.
"""

from __future__ import annotations

from collections.abc import Iterable

from jinja2 import nodes

Reference = tuple[str, ...]  # e.g. ("steps", "fetch", "output")

# Bound inside every macro body by Jinja itself.
_MACRO_NAMES = ("varargs", "kwargs", "caller")
# What Jinja's `loop` offers inside `{% for %}` (jinja2.runtime.LoopContext).
JINJA_LOOP_ATTRIBUTES = frozenset(
    {"index", "index0", "revindex", "revindex0", "first", "last", "length", "cycle", "depth", "depth0"}
    | {"previtem", "nextitem", "changed"}
)
# The marker a `{% for %}` body adds to its scope: `loop` there is Jinja's.
_JINJA_LOOP = "loop"
_IN_FOR = "\0for"


def template_references(tree: nodes.Node, known_globals: frozenset[str]) -> list[Reference]:
    """Attribute chains rooted at names the context must supply: `steps.a.output` → ("steps", "a", "output")."""
    walker = _Walker(known_globals)
    walker.visit(tree, set())
    return walker.found


def jinja_loop_misuses(tree: nodes.Node, known_globals: frozenset[str]) -> list[tuple[str, int]]:
    """(attribute, template line) of each `loop.X` inside a `{% for %}` body that Jinja's loop does not have —
    such as flowctl's `loop.iteration`, which the `{% for %}` hides there."""
    walker = _Walker(known_globals)
    walker.visit(tree, set())
    return walker.loop_misuses


def reference_lines(tree: nodes.Node, known_globals: frozenset[str]) -> dict[Reference, int]:
    """The template line (1-based) of each reference's first read: where a diagnostic about it should point."""
    walker = _Walker(known_globals)
    walker.visit(tree, set())
    lines: dict[Reference, int] = {}
    for ref, line in zip(walker.found, walker.lines, strict=True):
        lines.setdefault(ref, line)
    return lines


def _chain(node: nodes.Node) -> Reference | None:
    """("steps", "a", "output") for `steps.a.output` or `steps['a'].output`; None when not rooted at a loaded name."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            return (node.name, *reversed(parts))
        else:
            return None


def _targets(node: nodes.Node) -> list[str]:
    """The names an assignment target binds (`x`, `a, b`)."""
    return [n.name for n in node.find_all(nodes.Name) if n.ctx in ("store", "param")] + (
        [node.name] if isinstance(node, nodes.Name) and node.ctx in ("store", "param") else []
    )


class _Walker:
    def __init__(self, known_globals: frozenset[str]) -> None:
        self.known_globals = known_globals
        self.found: list[Reference] = []
        self.lines: list[int] = []  # the template line of each found reference
        self.loop_misuses: list[tuple[str, int]] = []

    def visit_all(self, items: Iterable[nodes.Node], bound: set[str]) -> None:
        for item in items:
            self.visit(item, bound)

    def visit(self, node: nodes.Node, bound: set[str]) -> None:
        """`bound` is the current scope's set of local names; statements that assign add to it in place."""
        if isinstance(node, nodes.For):
            self.visit(node.iter, bound)
            inner = bound | set(_targets(node.target))
            if node.test is not None:
                self.visit(node.test, inner)
            self.visit_all(node.body, inner | {_JINJA_LOOP, _IN_FOR})
            self.visit_all(node.else_, set(bound))
        elif isinstance(node, nodes.Macro | nodes.CallBlock):
            if isinstance(node, nodes.CallBlock):
                self.visit(node.call, bound)
            self.visit_all(node.defaults, bound)
            self.visit_all(node.body, bound | {a.name for a in node.args} | set(_MACRO_NAMES))
            if isinstance(node, nodes.Macro):
                bound.add(node.name)
        elif isinstance(node, nodes.With):
            self.visit_all(node.values, bound)
            self.visit_all(node.body, bound | {name for t in node.targets for name in _targets(t)})
        elif isinstance(node, nodes.Assign):
            self.visit(node.node, bound)
            self._bind(node.target, bound)
        elif isinstance(node, nodes.AssignBlock):
            self.visit_all(node.body, set(bound))
            if node.filter is not None:
                self.visit(node.filter, bound)
            self._bind(node.target, bound)
        elif isinstance(node, nodes.Import):
            bound.add(node.target)
        elif isinstance(node, nodes.FromImport):
            bound.update(name if isinstance(name, str) else name[1] for name in node.names)
        elif isinstance(node, nodes.NSRef):
            self._read((node.name,), bound, node.lineno)
        elif isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name) and (ref := _chain(node)) is not None:
            self._read(ref, bound, node.lineno)
        else:
            for child in node.iter_child_nodes():
                self.visit(child, bound)

    def _bind(self, target: nodes.Node, bound: set[str]) -> None:
        if isinstance(target, nodes.NSRef):
            self._read((target.name,), bound, target.lineno)  # `{% set ns.x = … %}` needs `ns` to exist
        else:
            bound.update(_targets(target))

    def _read(self, ref: Reference, bound: set[str], line: int) -> None:
        if ref[0] == _JINJA_LOOP and _IN_FOR in bound and len(ref) > 1 and ref[1] not in JINJA_LOOP_ATTRIBUTES:
            self.loop_misuses.append((ref[1], line))
        if ref[0] not in bound and ref[0] not in self.known_globals:
            self.found.append(ref)
            self.lines.append(line)
