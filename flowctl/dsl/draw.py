"""Drawing the execution graph: Mermaid and Graphviz DOT text from the IR (`flowctl graph`).

Containers (parallel, route branches, loops, fan-outs, child pipelines defined in the file) become subgraphs so the
composition is visible; edges are the resolved dependencies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from flowctl.dsl import ir


@dataclass(slots=True)
class _Cluster:
    id: str
    label: str
    nodes: list[tuple[str, str, str]] = field(default_factory=list)  # (node id, label, shape)
    clusters: list[_Cluster] = field(default_factory=list)


@dataclass(slots=True)
class _Drawing:
    root: _Cluster
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, label)


def _node_id(scope: str, step_id: str) -> str:
    return f"{scope}__{step_id}".replace("-", "_").replace(".", "_").replace("/", "_")


def _label(step: ir.Step) -> str:
    body = step.body
    detail = {
        ir.AgentCall: lambda b: f"agent: {b.agent}" if b.choose is None else "agent: chosen at run time",
        ir.ToolCall: lambda b: f"tool: {b.server}.{b.tool}",
        ir.ChildPipeline: lambda b: (
            f"pipeline: {b.ref.rsplit('/', 1)[-1]}"
            if b.dispatch is None
            else f"pipeline: one of {len(b.dispatch.choices)}"
        ),
        ir.Wait: lambda b: f"wait: {b.event}",
        ir.EmitSpec: lambda b: f"emit: {b.event}",
        ir.SetState: lambda b: "set: " + ", ".join(k for k, _ in step.updates),
    }.get(type(body))
    text = step.id + (f"\\n{detail(body)}" if detail else "")
    if step.fan_out is not None:
        text += f"\\nfor each {step.fan_out.var}"
    return text


class _Builder:
    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.edges: list[tuple[str, str, str]] = []

    def steps(self, steps: tuple[ir.Step, ...], scope: str, cluster: _Cluster) -> None:
        for step in steps:
            node = _node_id(scope, step.id)
            nested = self.nested(step, scope)
            if nested is None:
                shape = "event" if step.kind in (ir.NodeKind.WAIT, ir.NodeKind.EMIT) else "box"
                cluster.nodes.append((node, _label(step), shape))
            else:
                cluster.clusters.append(nested)
            for dep in step.needs:
                self.edges.append((_node_id(scope, dep), node, ""))

    def nested(self, step: ir.Step, scope: str) -> _Cluster | None:
        body, node = step.body, _node_id(scope, step.id)
        if isinstance(body, ir.ParallelGroup):
            cluster = _Cluster(node, f"{step.id} (parallel, join {body.join.kind.value})")
            self.steps(body.branches, scope, cluster)
            return cluster
        if isinstance(body, ir.Loop):
            cluster = _Cluster(node, f"{step.id} (loop ≤ {body.max_iterations})")
            self.steps(body.steps, scope, cluster)
            return cluster
        if isinstance(body, ir.Route):
            cluster = _Cluster(node, f"{step.id} (route)")
            cluster.nodes.append((node + "__choose", f"{step.id}\\nchoose", "decision"))
            for name, steps in body.branches.items():
                branch = _Cluster(f"{node}__{name}", name)
                self.steps(steps, scope, branch)
                cluster.clusters.append(branch)
                if steps:
                    self.edges.append((node + "__choose", _node_id(scope, steps[0].id), name))
            return cluster
        if isinstance(body, ir.ChildPipeline) and not body.is_file and body.ref in self.graph.pipelines:
            child = self.graph.pipelines[body.ref]
            label = f"{step.id} → pipeline {child.name}" + (" (for each)" if step.fan_out else "")
            cluster = _Cluster(node, label)
            self.steps(child.steps, f"{node}__{child.name}", cluster)
            return cluster
        return None

    def triggers(self, pipeline: ir.PipelineDef, scope: str, cluster: _Cluster) -> None:
        for trigger in pipeline.triggers:
            sub = _Cluster(
                _node_id(scope, "trigger_" + trigger.id),
                f"on {trigger.kind.value}: {trigger.target or (trigger.condition.source if trigger.condition else '')}",
            )
            self.steps(trigger.steps, scope, sub)
            cluster.clusters.append(sub)
            if trigger.kind in (ir.TriggerKind.FAILED, ir.TriggerKind.COMPLETED) and trigger.steps:
                label = "on failure" if trigger.kind is ir.TriggerKind.FAILED else "on completion"
                self.edges.append((_node_id(scope, trigger.target), _node_id(scope, trigger.steps[0].id), label))
            if trigger.kind is ir.TriggerKind.EVENT:  # dashed in spirit: whoever emits the event starts it
                for emitter in _emitters(pipeline, trigger.target):
                    self.edges.append((_node_id(scope, emitter), sub.id, f"emits {trigger.target}"))
        if pipeline.finally_steps:
            sub = _Cluster(_node_id(scope, "finally"), "finally")
            self.steps(pipeline.finally_steps, scope, sub)
            cluster.clusters.append(sub)
            if pipeline.steps:  # `finally` runs after the main steps end, however they ended
                self.edges.append((_node_id(scope, pipeline.steps[-1].id), sub.id, "finally"))


def _emitters(pipeline: ir.PipelineDef, event: str) -> list[str]:
    """Ids of the steps that emit `event` (emit steps and steps with an `emit:`)."""
    found = []
    for step in pipeline.all_steps():
        spec = step.body if isinstance(step.body, ir.EmitSpec) else step.emit
        if spec is not None and spec.event == event:
            found.append(step.id)
    return found


def _drawing(graph: ir.Graph) -> _Drawing:
    builder = _Builder(graph)
    root = _Cluster("root", graph.root.name)
    builder.steps(graph.root.steps, "root", root)
    builder.triggers(graph.root, "root", root)
    for step in graph.root.all_steps():  # a wait is released by whoever emits its event
        if isinstance(step.body, ir.Wait):
            for emitter in _emitters(graph.root, step.body.event):
                builder.edges.append((_node_id("root", emitter), _node_id("root", step.id), f"emits {step.body.event}"))
    known = {n for n, _, _ in _all_nodes(root)} | {c.id for c in _all_clusters(root)}
    edges = [e for e in builder.edges if e[0] in known and e[1] in known]
    return _Drawing(root, edges)


def _all_nodes(cluster: _Cluster) -> Iterator[tuple[str, str, str]]:
    yield from cluster.nodes
    for sub in cluster.clusters:
        yield from _all_nodes(sub)


def _all_clusters(cluster: _Cluster) -> Iterator[_Cluster]:
    for sub in cluster.clusters:
        yield sub
        yield from _all_clusters(sub)


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: quotes become entity codes (a `"` would end the label)."""
    return text.replace('"', "#quot;")


def _dot_text(text: str) -> str:
    """Text inside a quoted DOT string; our own `\\n` line breaks are kept, any other backslash is escaped."""
    return text.replace("\\", "\\\\").replace("\\\\n", "\\n").replace('"', '\\"')


def to_mermaid(graph: ir.Graph) -> str:
    drawing = _drawing(graph)
    lines = ["flowchart TD"]
    shapes = {"box": ('["', '"]'), "event": ('>"', '"]'), "decision": ('{"', '"}')}

    def emit(cluster: _Cluster, indent: str) -> None:
        for node, label, shape in cluster.nodes:
            left, right = shapes[shape]
            lines.append(f"{indent}{node}{left}{_mermaid_text(label).replace(chr(92) + 'n', '<br/>')}{right}")
        for sub in cluster.clusters:
            lines.append(f'{indent}subgraph {sub.id}["{_mermaid_text(sub.label)}"]')
            emit(sub, indent + "  ")
            lines.append(f"{indent}end")

    emit(drawing.root, "  ")
    for src, dst, label in drawing.edges:
        lines.append(f"  {src} -->|{_mermaid_text(label)}| {dst}" if label else f"  {src} --> {dst}")
    return "\n".join(lines) + "\n"


def to_dot(graph: ir.Graph) -> str:
    drawing = _drawing(graph)
    lines = [
        f'digraph "{graph.root.name}" {{',
        "  rankdir=TB; compound=true;",
        '  node [shape=box, fontname="Helvetica"];',
    ]
    shapes = {"box": "box", "event": "cds", "decision": "diamond"}

    def emit(cluster: _Cluster, indent: str) -> None:
        for node, label, shape in cluster.nodes:
            lines.append(f'{indent}{node} [label="{_dot_text(label)}", shape={shapes[shape]}];')
        for sub in cluster.clusters:
            lines.append(f"{indent}subgraph cluster_{sub.id} {{")
            lines.append(f'{indent}  label="{_dot_text(sub.label)}";')
            emit(sub, indent + "  ")
            lines.append(f"{indent}}}")

    emit(drawing.root, "  ")
    # DOT edges cannot end at a cluster: attach them to a node inside it and clip at the cluster's border
    clusters = {c.id: c for c in _all_clusters(drawing.root)}

    def anchor(name: str) -> str:
        cluster = clusters.get(name)
        return anchor(cluster.nodes[0][0] if cluster.nodes else cluster.clusters[0].id) if cluster else name

    for src, dst, label in drawing.edges:
        attrs = [f'label="{_dot_text(label)}"'] if label else []
        if src in clusters:
            attrs.append(f"ltail=cluster_{src}")
        if dst in clusters:
            attrs.append(f"lhead=cluster_{dst}")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {anchor(src)} -> {anchor(dst)}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
