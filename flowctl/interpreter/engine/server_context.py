"""What an agent takes from its servers besides tools, at step start: its instruction from a server's prompt
(`instruction: {server, prompt, arguments}`) and the resources it is given as context (`resources:`); and the
`resource:` step's read. Each read is a journaled side effect like a tool call, so a resumed run replays it instead
of asking the server again."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from flowctl.dsl.ir import AgentDef, ServerPrompt
from flowctl.interpreter.engine.context import RunContext
from flowctl.interpreter.providers.llm import Message

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

Keys = Callable[[str], str]  # journal key of the step attempt's next side effect, from what it is


async def agent_instruction(ctx: RunContext, agent: AgentDef, context: Mapping[str, Any], keys: Keys) -> str:
    """The agent's system message: its rendered `instruction`, or the text of its server prompt's messages."""
    prompt = agent.instruction_prompt
    if prompt is None:
        return agent.instruction.render(context)
    messages = await server_prompt(ctx, prompt, context, keys)
    return "\n\n".join(m["text"] for m in messages)


async def server_prompt(
    ctx: RunContext, prompt: ServerPrompt, context: Mapping[str, Any], keys: Keys
) -> list[dict[str, Any]]:
    """prompts/get with the arguments rendered as text, journaled: the prompt's messages as `{role, text}`."""
    arguments = _texts(prompt.arguments.evaluate(context))
    request = {"server": prompt.server, "prompt": prompt.name, "arguments": arguments}
    server = ctx.graph.servers[prompt.server]
    key = keys(f"prompt:{prompt.server}.{prompt.name}")

    async def get() -> dict[str, Any]:
        return {"messages": await ctx.runtime.tools.get_prompt(server, prompt.name, arguments)}

    result = await _journaled(ctx, key, request, get)
    return list(result["messages"])


async def resource_messages(ctx: RunContext, agent: AgentDef, context: Mapping[str, Any], keys: Keys) -> list[Message]:
    """One user message per resource of the agent, before the step's prompt, read in declaration order."""
    messages = []
    for resource in agent.resources:
        uri = fill_uri(resource.uri, resource.arguments.evaluate(context))
        contents = await read_resource(ctx, resource.server, uri, keys)
        messages.append(Message("user", "\n\n".join(_content_text(uri, c) for c in contents)))
    return messages


def fill_uri(uri: str, arguments: Any) -> str:
    """A URI template with its `{name}`s filled from the rendered arguments (RFC 6570 simple expansion: reserved
    characters are percent-encoded)."""
    values = _texts(arguments)
    return _PLACEHOLDER.sub(lambda m: quote(values.get(m.group(1), ""), safe=""), uri)


async def read_resource(ctx: RunContext, server_name: str, uri: str, keys: Keys) -> list[dict[str, Any]]:
    """resources/read, journaled: the contents as MCP JSON."""
    server = ctx.graph.servers[server_name]
    key = keys(f"resource:{server_name}")

    async def read() -> dict[str, Any]:
        return {"contents": await ctx.runtime.tools.read_resource(server, uri)}

    result = await _journaled(ctx, key, {"server": server_name, "uri": uri}, read)
    return list(result["contents"])


async def _journaled(ctx: RunContext, key: str, request: dict[str, Any], effect: Callable[[], Any]) -> dict[str, Any]:
    """Replay the recorded answer of `key`, or make the request and record its answer before it is used."""
    runtime = ctx.runtime
    text = json.dumps(request, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()  # never the arguments themselves
    recorded = runtime.journal.replay(ctx.run_id, key, digest)
    if recorded is not None:
        return recorded
    async with runtime.limiter:
        result: dict[str, Any] = await effect()
    runtime.journal.record(ctx.run_id, key, digest, result)
    await runtime.recorder.durable()
    return result


def _texts(value: Any) -> dict[str, str]:
    """Prompt arguments and URI-template values are text: other values as JSON (`true`, `3`, `["a"]`)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in value.items()}


def _content_text(uri: str, content: dict[str, Any]) -> str:
    """A resource content as the model reads it: a header naming it, then its text (binary data is described)."""
    mime = content.get("mimeType")
    header = f"Resource {content.get('uri') or uri}" + (f" ({mime})" if mime else "")
    if isinstance(content.get("text"), str):
        return f"{header}:\n{content['text']}"
    size = len(content.get("blob") or "") * 3 // 4
    return f"{header}: {size} bytes of binary data, not shown"
