"""Environment variables in server and model settings: `${VAR}`, `${VAR:-default}` (sh's spelling),
`${VAR:default}` (fast-agent's) and `${env:VAR}` (VS Code's): one rule for the front end that checks it, the
interpreter that expands it and the redactor that finds the secrets it names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

# group 1: the name; group 2: the default after `:-` or `:` (None when there is none)
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-?([^}]*))?\}")


def vscode_form(match: re.Match[str]) -> str | None:
    """`env` for VS Code's `${env:NAME}` (the variable NAME), `input` for its `${input:ID}` (a value VS Code asks
    the user for: flowctl cannot), None for every other form."""
    written = match.group()
    for form in ("env", "input"):
        if written.startswith(f"${{{form}:") and not written.startswith(f"${{{form}:-"):
            return form
    return None


def variable_name(match: re.Match[str]) -> str:
    """The environment variable a match reads (VS Code's `${env:NAME}` reads NAME)."""
    return str(match.group(2)) if vscode_form(match) == "env" else match.group(1)


def default_of(match: re.Match[str]) -> str | None:
    """The default a match gives (None: none; VS Code's `${env:NAME}` has none)."""
    return None if vscode_form(match) is not None else match.group(2)


def variable_names(text: str) -> list[str]:
    """The variables `text` reads, in order."""
    return [variable_name(match) for match in VARIABLE.finditer(text)]


def required_variables(text: str) -> Iterator[tuple[str, str]]:
    """(name, as written) of each variable in `text` that has no default: those an unset environment breaks."""
    for match in VARIABLE.finditer(text):
        if default_of(match) is None:
            yield variable_name(match), match.group()


def expand(text: str, env: Mapping[str, str], unset: Callable[[str], Exception]) -> str:
    """`${VAR}` → its value; `${VAR:-default}` (or `${VAR:default}`) → the default when VAR is unset or empty; a
    variable that is unset and has no default raises `unset(name)`."""

    def substitute(match: re.Match[str]) -> str:
        if vscode_form(match) == "input":
            raise unset(match.group()[2:-1])  # never a default: the validator refuses it (bad-variable)
        name, default = variable_name(match), default_of(match)
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            raise unset(name)
        return value

    return VARIABLE.sub(substitute, text)


__all__ = ["VARIABLE", "default_of", "expand", "required_variables", "variable_name", "variable_names", "vscode_form"]
