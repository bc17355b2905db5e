"""An index of a loaded document: its pipelines and steps, with paths, kinds, dependencies and scopes.

Built once and shared by the semantic checks and the compiler. It is defensive: the schema stage may have found
errors, and the checks still run on whatever is well-formed enough to index, so a user sees every problem at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flowctl.dsl.kinds import FALLBACK_STEPS, STEP_KINDS, is_file_reference, nested_lists, step_kind
from flowctl.dsl.loader import JsonPath

__all__ = ["STEP_KINDS", "DocIndex", "PipelineInfo", "Region", "StepInfo", "build_index", "is_file_reference"]
__all__ += ["step_kind"]


class Region:
    MAIN = "main"
    TRIGGER = "trigger"
    FINALLY = "finally"
    FALLBACK = "fallback"


@dataclass(slots=True)
class StepInfo:
    id: str
    kind: str
    raw: dict[str, Any]
    path: JsonPath  # of the step mapping
    pipeline: str  # "" for the root pipeline, else the name under `pipelines:`
    region: str
    container: StepInfo | None  # the enclosing parallel/route/loop step, if any
    trigger: str | None  # the trigger id, for steps in a trigger
    siblings_concurrent: bool  # parallel branches do not depend on the previous list item
    list_ids: tuple[str, ...] = ()  # ids of the steps in the same list
    deps: tuple[str, ...] = ()  # explicit `needs`, or the previous step in the list
    in_loop: bool = False
    nested: list[StepInfo] = field(default_factory=list)

    @property
    def fan_out_var(self) -> str | None:
        if "for_each" not in self.raw:
            return None
        value = self.raw.get("as", "item")
        return value if isinstance(value, str) else "item"


@dataclass(slots=True)
class PipelineInfo:
    name: str  # "" for the root
    raw: dict[str, Any]
    path: JsonPath
    steps: dict[str, StepInfo] = field(default_factory=dict)  # first definition of each id
    ordered: list[StepInfo] = field(default_factory=list)  # every step, document order
    triggers: dict[str, JsonPath] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"pipeline {self.name!r}" if self.name else "the pipeline"

    def inputs(self) -> dict[str, Any]:
        value = self.raw.get("inputs")
        return value if isinstance(value, dict) else {}

    def state_keys(self) -> dict[str, Any]:
        """The state keys this pipeline may read and write: its own, and the caller's it names in `parent_state`."""
        value = self.raw.get("state")
        own = value if isinstance(value, dict) else {}
        return {**{key: {} for key in self.parent_state()}, **own}

    def parent_state(self) -> list[str]:
        value = self.raw.get("parent_state")  # a child under `pipelines:`, or a file's root run as a child
        return [key for key in value if isinstance(key, str)] if isinstance(value, list) else []


@dataclass(slots=True)
class DocIndex:
    data: dict[str, Any]
    root: PipelineInfo
    children: dict[str, PipelineInfo]  # named pipelines defined in this file

    def pipelines(self) -> Iterator[PipelineInfo]:
        yield self.root
        yield from self.children.values()

    def section(self, key: str) -> dict[str, Any]:
        """A top-level mapping such as `agents`; `servers` also accepts an mcp-agent / fast-agent `mcp: {servers: …}`
        block and Claude Desktop's `mcpServers`."""
        if key == "servers":
            key_path = self.servers_path()
            value = self.data.get(str(key_path[0]))
            value = value.get("servers") if len(key_path) == 2 and isinstance(value, dict) else value
        else:
            value = self.data.get(key)
        return value if isinstance(value, dict) else {}

    def servers_path(self) -> JsonPath:
        return servers_path(self.data)


def servers_path(data: dict[str, Any]) -> JsonPath:
    """Where a document's servers are: `servers`, `mcp.servers` or `mcpServers` (the first one present)."""
    if isinstance(data.get("servers"), dict):
        return ("servers",)
    mcp = data.get("mcp")
    if isinstance(mcp, dict) and isinstance(mcp.get("servers"), dict):
        return ("mcp", "servers")
    if isinstance(data.get("mcpServers"), dict):
        return ("mcpServers",)
    return ("servers",)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _needs(raw: dict[str, Any]) -> tuple[str, ...] | None:
    needs = raw.get("needs")
    if isinstance(needs, str):
        return (needs,)
    if isinstance(needs, list):
        return tuple(n for n in needs if isinstance(n, str))
    return None


class _IndexBuilder:
    def __init__(self, pipeline: PipelineInfo) -> None:
        self.pipeline = pipeline

    def add_list(
        self,
        items: Any,
        path: JsonPath,
        region: str,
        container: StepInfo | None,
        trigger: str | None,
        *,
        concurrent: bool = False,
        in_loop: bool = False,
    ) -> list[StepInfo]:
        added: list[StepInfo] = []
        previous: str | None = None
        for index, raw in enumerate(_as_list(items)):
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
                continue
            kind = step_kind(raw) or "unknown"
            info = StepInfo(
                raw["id"],
                kind,
                raw,
                (*path, index),
                self.pipeline.name,
                region,
                container,
                trigger,
                concurrent,
                in_loop=in_loop,
            )
            explicit = _needs(raw)
            if explicit is not None:
                info.deps = explicit
            elif previous is not None and not concurrent:
                info.deps = (previous,)
            previous = info.id
            self.pipeline.steps.setdefault(info.id, info)
            self.pipeline.ordered.append(info)
            added.append(info)
            self.add_nested(info, region, trigger, in_loop)
        ids = tuple(i.id for i in added)
        for info in added:
            info.list_ids = ids
        return added

    def add_nested(self, info: StepInfo, region: str, trigger: str | None, in_loop: bool) -> None:
        nested: list[StepInfo] = []
        for spec, path, items in nested_lists(info.kind, info.raw, info.path):
            nested += self.add_list(
                items,
                path,
                Region.FALLBACK if spec is FALLBACK_STEPS else region,
                info,
                trigger,
                concurrent=spec.concurrent,
                in_loop=in_loop or spec.loop,
            )
        info.nested = nested


def _index_pipeline(name: str, raw: dict[str, Any], path: JsonPath) -> PipelineInfo:
    info = PipelineInfo(name, raw, path)
    builder = _IndexBuilder(info)
    builder.add_list(raw.get("steps"), (*path, "steps"), Region.MAIN, None, None)
    for index, trigger in enumerate(_as_list(raw.get("triggers"))):
        if not isinstance(trigger, dict) or not isinstance(trigger.get("id"), str):
            continue
        info.triggers.setdefault(trigger["id"], (*path, "triggers", index))
        builder.add_list(trigger.get("steps"), (*path, "triggers", index, "steps"), Region.TRIGGER, None, trigger["id"])
    builder.add_list(raw.get("finally"), (*path, "finally"), Region.FINALLY, None, None)
    return info


def build_index(data: Any) -> DocIndex | None:
    """Index a loaded document; None when it is not a mapping at all."""
    if not isinstance(data, dict):
        return None
    root = _index_pipeline("", data, ())
    children: dict[str, PipelineInfo] = {}
    pipelines = data.get("pipelines")
    if isinstance(pipelines, dict):
        for name, raw in pipelines.items():
            if isinstance(raw, dict):
                children[name] = _index_pipeline(name, raw, ("pipelines", name))
    return DocIndex(data, root, children)
