"""Stage 3, checks on the `servers` section (or mcp-agent's `mcp: {servers: …}`) and the `${VAR}` in server and model
settings: what a server definition may hold, and which of its values reach the server as written.

Run by `check_document` (checks.py) with the other check units.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from flowctl.dsl import catalogue as cat
from flowctl.dsl.check_context import CheckContext
from flowctl.dsl.diagnostics import Diagnostic, Span
from flowctl.dsl.loader import JsonPath
from flowctl.dsl.templates import has_template
from flowctl.dsl.variables import (  # `${NAME}`, `${NAME:-default}`, `${NAME:default}`, `${env:NAME}`
    VARIABLE,
    default_of,
    variable_name,
    vscode_form,
)

# Keys other tools' server blocks hold that flowctl accepts without acting on them: key → why, and what to do.
# (Keys flowctl honours are in the schema; an unknown key is still an error, since it is most often a typo.)
IGNORED_SERVER_KEYS: dict[str, str] = {
    "load_on_start": "fast-agent's; flowctl starts a server when a step first needs its tools",
    "ping_interval_seconds": "fast-agent's; flowctl does not ping idle servers (a lost server is noticed on its "
    "next call and restarted once)",
    "max_missed_pings": "fast-agent's; flowctl does not ping idle servers",
    "reconnect_on_disconnect": "fast-agent's; flowctl always restarts a server once after it goes away",
    "implementation": "fast-agent's; flowctl introduces itself as `flowctl`",
    "envFile": "VS Code's; write the variables under `env:` (`NAME: ${NAME}` reads them from the environment)",
    "dev": "VS Code's watch/debug settings",
    "disabled": "Claude Desktop's; remove the server from the agents that name it instead",
    "autoApprove": "Cline's; flowctl never asks before a call (limit what models see with `allowed_tools`)",
    "alwaysAllow": "Cline's; flowctl never asks before a call (limit what models see with `allowed_tools`)",
    "timeout": "Cline's; write `read_timeout_seconds` (per call) or `startup_timeout_seconds`",
}
IGNORED_AUTH_KEYS: dict[str, str] = {
    "api_key": "mcp-agent's; flowctl sends no key from it: write `bearer: ${VAR}` or a header",
    "redirect_port": "fast-agent's interactive OAuth; flowctl runs unattended: use `bearer` or `client_credentials`",
    "redirect_path": "fast-agent's interactive OAuth; flowctl runs unattended: use `bearer` or `client_credentials`",
    "scope": "fast-agent's interactive OAuth; the scope of `client_credentials` goes under it",
    "persist": "fast-agent's token storage; flowctl keeps OAuth tokens in memory for one run",
}
_REMOTE = ("sse", "http", "streamable_http", "streamable-http")


def check_servers(ctx: CheckContext) -> Iterator[Diagnostic]:
    """A server's `command` is a literal (no Jinja, no `$(…)`: code execution must never come from templates); a
    server block's shape is consistent (one transport, auth only where it can be sent); keys
    from other tools that flowctl does not act on are named."""
    base = ctx.index.servers_path()
    for name, server in ctx.index.section("servers").items():
        if not isinstance(server, dict):
            continue
        path = (*base, name)
        command = server.get("command")
        if isinstance(command, str) and (has_template(command) or "$(" in command or "`" in command):
            yield cat.templated_command(ctx.span((*path, "command")), command)
        yield from _check_transport(ctx, path, server)
        yield from _check_auth(ctx, path, server)
        for key, why in IGNORED_SERVER_KEYS.items():
            if key in server:
                yield cat.ignored_key(ctx.key_span((*path, key)), key, f"server {name!r}", why)


def _check_transport(ctx: CheckContext, path: JsonPath, server: dict[str, Any]) -> Iterator[Diagnostic]:
    """`type` (Claude Desktop, VS Code) and `transport` must agree with each other and with `command`/`url`."""
    type_, transport = server.get("type"), server.get("transport")
    spelled = {"http": "streamable_http", "streamable-http": "streamable_http"}
    if (
        isinstance(type_, str)
        and isinstance(transport, str)
        and spelled.get(type_, type_) != spelled.get(transport, transport)
    ):
        yield cat.invalid_value(
            ctx.span((*path, "type")),
            f"`type: {type_}` and `transport: {transport}` disagree",
            hint="keep one of them (`type` is Claude Desktop's / VS Code's spelling of `transport`)",
        )
        return
    chosen = transport if isinstance(transport, str) else type_
    key = "transport" if isinstance(transport, str) else "type"
    if chosen == "stdio" and "command" not in server:
        yield cat.invalid_value(
            ctx.span((*path, key)),
            f"`{key}: stdio` needs `command:` (the program to start)",
            hint="give `command:` (and `args:`), or `transport: http` with `url:` for a remote server",
        )
    elif chosen in _REMOTE and "url" not in server:
        yield cat.invalid_value(
            ctx.span((*path, key)),
            f"`{key}: {chosen}` needs `url:` (the server's endpoint)",
            hint="give `url:`, or `command:` without a transport for a server flowctl starts itself",
        )


def _check_auth(ctx: CheckContext, path: JsonPath, server: dict[str, Any]) -> Iterator[Diagnostic]:
    """`auth:` is acted on or warned about, never silently dropped."""
    auth = server.get("auth")
    if not isinstance(auth, dict):
        return
    name = str(path[-1])
    remote = "url" in server
    if not remote and auth:
        yield cat.ignored_key(
            ctx.key_span((*path, "auth")),
            "auth",
            f"server {name!r}",
            "a stdio server is not authenticated by flowctl: pass its credentials in `env:`",
        )
        return
    if "bearer" in auth and "client_credentials" in auth:
        yield cat.invalid_value(
            ctx.key_span((*path, "auth", "client_credentials")),
            "`auth` gives both `bearer` and `client_credentials`",
            hint="keep one: a fixed token (`bearer`) or the OAuth flow that fetches one (`client_credentials`)",
        )
    headers = server.get("headers")
    if "bearer" in auth and isinstance(headers, dict) and any(str(k).lower() == "authorization" for k in headers):
        yield cat.invalid_value(
            ctx.key_span((*path, "auth", "bearer")),
            "`auth.bearer` and an `Authorization` header both set the same header",
            hint="keep one of them",
        )
    if auth.get("oauth") is True:
        yield cat.ignored_key(
            ctx.key_span((*path, "auth", "oauth")),
            "oauth",
            f"the auth of server {name!r}",
            "fast-agent's interactive OAuth (a browser sign-in); flowctl runs unattended: use `bearer: ${TOKEN}` or "
            "`client_credentials`",
        )
    for key, why in IGNORED_AUTH_KEYS.items():
        if key in auth:
            yield cat.ignored_key(ctx.key_span((*path, "auth", key)), key, f"the auth of server {name!r}", why)


_TEMPLATE_START = re.compile(r"\{\{|\{%|\{#")
# Where `${VAR}` is expanded: every string of a server's launch and connection settings, and a model's endpoint.
_SERVER_VALUES = ("command", "args", "cwd", "env", "url", "headers", "auth")
_MODEL_VALUES = ("model", "base_url")


def check_server_values(ctx: CheckContext) -> Iterator[Diagnostic]:
    """`${VAR}`, `${VAR:-default}` and `${VAR:default}` are expanded in every string of a server's launch and
    connection settings and a model's `model` and `base_url`; nothing in a server definition is a template; a
    variable without a default that the environment does not set is named (a run would fail on it)."""
    base = ctx.index.servers_path()
    for name, server in ctx.index.section("servers").items():
        if not isinstance(server, dict):
            continue
        for key in _SERVER_VALUES:
            for path, value in _string_leaves(server.get(key), (*base, name, key)):
                template = _TEMPLATE_START.search(value)
                if template and key != "command":  # a templated command is an error of its own
                    yield cat.literal_server_value(_text_span(ctx, path, template.group()), value, key)
                yield from _check_variables(ctx, path, value)
    for name, model in ctx.index.section("models").items():
        if not isinstance(model, dict):
            continue
        for key in _MODEL_VALUES:
            if isinstance(model.get(key), str):
                yield from _check_variables(ctx, ("models", name, key), model[key])


def _check_variables(ctx: CheckContext, path: JsonPath, value: str) -> Iterator[Diagnostic]:
    """Every `${` starts a variable flowctl expands (anything else would reach the server as written), and a
    variable without a default is set in the environment flowctl validates in (when it is given one)."""
    start = value.find("${")
    while start >= 0:
        match = VARIABLE.match(value, start)
        if match is None:
            close = value.find("}", start)
            written = value[start : close + 1] if close >= 0 else value[start : start + 40]
            if close < 0:
                problem, hint = f"{written!r} is not closed", "close it: `${NAME}`"
            else:
                problem = f"{written!r} is not a variable flowctl expands"
                hint = "write `${NAME}` or `${NAME:-default}` (a name is letters, digits and `_`)"
            yield cat.bad_variable(_text_span(ctx, path, written), problem, hint)
        elif vscode_form(match) == "input":
            problem = f"{match.group()!r} is a VS Code input (a value VS Code asks for), which flowctl cannot ask for"
            hint = "read it from the environment instead: `${NAME}`"
            yield cat.bad_variable(_text_span(ctx, path, match.group()), problem, hint)
        elif default_of(match) is None and ctx.env is not None and variable_name(match) not in ctx.env:
            yield cat.unset_variable(_text_span(ctx, path, match.group()), variable_name(match))
        start = value.find("${", start + 2)


def _string_leaves(value: Any, path: JsonPath) -> Iterator[tuple[JsonPath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _string_leaves(item, (*path, i))


def _text_span(ctx: CheckContext, path: JsonPath, text: str) -> Span:
    """The span of `text` where it is written inside the value at `path` (else the whole value)."""
    span = ctx.span(path)
    lines = ctx.lines
    last = span.end_line if span.end_line >= span.line else span.line
    for line_no in range(span.line, min(last, len(lines)) + 1):
        found = lines[line_no - 1].find(text, span.col - 1 if line_no == span.line else 0)
        if found >= 0:
            return Span(span.file, line_no, found + 1, line_no, found + 1 + len(text))
    return span


_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def check_server_context(ctx: CheckContext) -> Iterator[Diagnostic]:
    """An agent's server prompt and resources, agent steps' server prompts and `resource:` steps name declared
    servers, and a resource's URI
    template gets exactly the arguments its `{name}` placeholders need."""
    servers = ctx.index.section("servers")
    for pipeline in ctx.index.pipelines():
        for step in pipeline.ordered:
            prompt = step.raw.get("prompt") if step.kind == "agent" else None
            if isinstance(prompt, dict) and isinstance(prompt.get("server"), str):
                yield from _known_server(ctx, (*step.path, "prompt", "server"), prompt["server"], servers)
            resource = step.raw.get("resource") if step.kind == "resource" else None
            if not isinstance(resource, dict):
                continue
            at: JsonPath = (*step.path, "resource")
            if isinstance(resource.get("server"), str):
                yield from _known_server(ctx, (*at, "server"), resource["server"], servers)
            if isinstance(resource.get("uri"), str):
                yield from _check_uri_template(ctx, at, resource["uri"], resource.get("arguments"))
    for name, agent in ctx.index.section("agents").items():
        if not isinstance(agent, dict):
            continue
        instruction = agent.get("instruction")
        if isinstance(instruction, dict) and isinstance(instruction.get("server"), str):
            yield from _known_server(ctx, ("agents", name, "instruction", "server"), instruction["server"], servers)
        for i, resource in enumerate(agent.get("resources") or []):
            if not isinstance(resource, dict):
                continue
            path: JsonPath = ("agents", name, "resources", i)
            if isinstance(resource.get("server"), str):
                yield from _known_server(ctx, (*path, "server"), resource["server"], servers)
            uri = resource.get("uri")
            if isinstance(uri, str):
                yield from _check_uri_template(ctx, path, uri, resource.get("arguments"))


def _known_server(ctx: CheckContext, path: JsonPath, server: str, servers: dict[str, Any]) -> Iterator[Diagnostic]:
    if server not in servers:
        yield cat.unknown_ref(cat.UNKNOWN_SERVER, "server", ctx.span(path), server, servers)


def _check_uri_template(ctx: CheckContext, path: JsonPath, uri: str, arguments: Any) -> Iterator[Diagnostic]:
    wanted = [m.group(1) for m in _PLACEHOLDER.finditer(uri) if not m.group(1).startswith(("{", "%"))]
    given = arguments if isinstance(arguments, dict) else {}
    for placeholder in wanted:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", placeholder):
            yield cat.invalid_value(
                _text_span(ctx, (*path, "uri"), "{" + placeholder + "}"),
                f"URI template placeholder {{{placeholder}}} is not one flowctl fills",
                hint="write simple `{name}` placeholders (RFC 6570 level 1)",
            )
        elif placeholder not in given:
            yield cat.missing_key(ctx.span(path), f"arguments.{placeholder}", f"the resource {uri!r}")
    for key in given:
        if key not in wanted:
            yield cat.invalid_value(
                ctx.key_span((*path, "arguments", key)),
                f"argument {key!r} fills no `{{{key}}}` in the URI {uri!r}",
                hint="remove it, or add the placeholder to `uri`",
            )
