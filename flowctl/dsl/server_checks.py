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
from flowctl.dsl.variables import VARIABLE  # `${NAME}`, `${NAME:-default}`: what the interpreter expands


def check_servers(ctx: CheckContext) -> Iterator[Diagnostic]:
    """A server's `command` is a literal: no Jinja, no ${VAR} (code execution must never come from templates)."""
    base = ctx.index.servers_path()
    for name, server in ctx.index.section("servers").items():
        command = server.get("command") if isinstance(server, dict) else None
        if isinstance(command, str) and (has_template(command) or "${" in command or "$(" in command):
            yield cat.templated_command(ctx.span((*base, name, "command")), command)


_TEMPLATE_START = re.compile(r"\{\{|\{%|\{#")
_COLON_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):([^-}][^}]*)?\}")


def check_server_values(ctx: CheckContext) -> Iterator[Diagnostic]:
    """`${VAR}` is expanded in a server's `env`, `headers` and `url` and a model's `base_url` (one spelling:
    `${VAR:-default}`), and nothing in a server definition is a template: say so where a value expects otherwise."""
    base = ctx.index.servers_path()
    for name, server in ctx.index.section("servers").items():
        if not isinstance(server, dict):
            continue
        for key in ("args", "env", "headers", "url", "cwd"):
            for path, value in _string_leaves(server.get(key), (*base, name, key)):
                template = _TEMPLATE_START.search(value)
                if template:
                    yield cat.literal_server_value(_text_span(ctx, path, template.group()), value, key, template=True)
                variable = VARIABLE.search(value) if key in ("args", "cwd") else None
                if variable:
                    yield cat.literal_server_value(_text_span(ctx, path, variable.group()), value, key, template=False)
                if key not in ("args", "cwd"):
                    yield from _check_variables(ctx, path, value)
    for name, model in ctx.index.section("models").items():
        if isinstance(model, dict) and isinstance(model.get("base_url"), str):
            yield from _check_variables(ctx, ("models", name, "base_url"), model["base_url"])


def _check_variables(ctx: CheckContext, path: JsonPath, value: str) -> Iterator[Diagnostic]:
    """Every `${` starts a variable flowctl expands; anything else would reach the server as written."""
    start = value.find("${")
    while start >= 0:
        match = VARIABLE.match(value, start)
        if match is None:
            close = value.find("}", start)
            written = value[start : close + 1] if close >= 0 else value[start : start + 40]
            colon = _COLON_DEFAULT.match(value, start)
            hint = "write `${NAME}` or `${NAME:-default}`"
            if close < 0:
                problem = f"{written!r} is not closed"
            elif colon:
                problem = f"{written!r} is not flowctl's spelling of a default"
                hint = f"write `${{{colon.group(1)}:-{colon.group(2) or ''}}}` (a default after `:-`, as in sh)"
            else:
                problem = f"{written!r} is not a variable flowctl expands"
            yield cat.bad_variable(_text_span(ctx, path, written), problem, hint)
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
