"""Pipelines as MCP tools, in plain data: the tool's name (the pipeline's `name`), its title and annotations (from
`serve:`), its description, its input schema (the pipeline's `inputs`, each a JSON schema; an input without `default`
is required) and its output schema (the pipeline's `output_schema`, when it declares one). No MCP SDK here:
`server.py` turns these into the SDK's types."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from flowctl.dsl import ir

# what MCP clients accept as a tool name (the 2025-11-25 specification's rule)
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True, slots=True)
class ServedPipeline:
    """One pipeline offered as a tool."""

    name: str
    file: str
    graph: ir.Graph
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    title: str = ""
    annotations: dict[str, bool] = field(default_factory=dict)  # MCP ToolAnnotations by their wire names


def input_schema(pipeline: ir.PipelineDef) -> dict[str, Any]:
    """The pipeline's inputs as one object schema (unknown keys refused, as `flowctl run` refuses them)."""
    properties = {name: copy.deepcopy(spec.schema) for name, spec in pipeline.inputs.items()}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [name for name, spec in pipeline.inputs.items() if spec.required]
    if required:
        schema["required"] = required
    return schema


def default_title(name: str) -> str:
    """A pipeline's name as words, for the tool's default title: `review_doc` and `review-doc` → `Review doc`."""
    words = " ".join(part for part in re.split(r"[_-]+", name) if part)
    return words[:1].upper() + words[1:] if words else name


def uses_servers(graph: ir.Graph) -> bool:
    """Whether the file, or a child file it runs, declares an MCP server: without one a run can only call models and
    compute, which modifies nothing outside flowctl's own run store."""
    return bool(graph.servers) or any(uses_servers(child) for child in graph.children.values())


def tool_annotations(graph: ir.Graph) -> dict[str, bool]:
    """The hints `serve:` declares, as MCP's ToolAnnotations fields; `readOnlyHint` defaults to true for a pipeline
    that uses no MCP server. A hint neither declared nor known is left out (clients then assume the cautious
    default: may modify, may destroy, not idempotent, open world)."""
    hints = graph.serve
    read_only = hints.read_only if hints.read_only is not None else (True if not uses_servers(graph) else None)
    found = {
        "readOnlyHint": read_only,
        "destructiveHint": hints.destructive,
        "idempotentHint": hints.idempotent,
        "openWorldHint": hints.open_world,
    }
    return {key: value for key, value in found.items() if value is not None}


def describe(graph: ir.Graph) -> ServedPipeline:
    """The tool a compiled pipeline file becomes."""
    root = graph.root
    description = root.description.strip() or f"Runs the flowctl pipeline {root.name!r} ({graph.file})."
    output = copy.deepcopy(root.output_schema) if root.output_schema is not None else None
    return ServedPipeline(
        root.name,
        graph.file,
        graph,
        description,
        input_schema(root),
        output,
        title=graph.serve.title or default_title(root.name),
        annotations=tool_annotations(graph),
    )


def name_problems(served: list[ServedPipeline]) -> list[str]:
    """Names no MCP client would accept, and names two pipelines share (a tool name must say which one runs)."""
    problems = []
    seen: dict[str, str] = {}
    for pipeline in served:
        if not TOOL_NAME.fullmatch(pipeline.name):
            problems.append(
                f"{pipeline.file}: the name {pipeline.name!r} is not a valid MCP tool name ([A-Za-z0-9_.-])"
            )
        if pipeline.name in seen:
            problems.append(
                f"{pipeline.file}: the name {pipeline.name!r} is taken by {seen[pipeline.name]}; rename one"
            )
        seen.setdefault(pipeline.name, pipeline.file)
    return problems
