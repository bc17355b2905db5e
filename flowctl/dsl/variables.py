"""Environment variables in server and model settings: `${VAR}`, `${VAR:-default}` (sh's spelling) and
`${VAR:default}` (fast-agent's), one rule for the front end that checks it, the interpreter that expands it and the
redactor that finds the secrets it names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

# group 1: the name; group 2: the default after `:-` or `:` (None when there is none)
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-?([^}]*))?\}")


def variable_names(text: str) -> list[str]:
    """The variables `text` reads, in order."""
    return [match.group(1) for match in VARIABLE.finditer(text)]


def required_variables(text: str) -> Iterator[tuple[str, str]]:
    """(name, as written) of each variable in `text` that has no default: those an unset environment breaks."""
    for match in VARIABLE.finditer(text):
        if match.group(2) is None:
            yield match.group(1), match.group()


def expand(text: str, env: Mapping[str, str], unset: Callable[[str], Exception]) -> str:
    """`${VAR}` → its value; `${VAR:-default}` (or `${VAR:default}`) → the default when VAR is unset or empty; a
    variable that is unset and has no default raises `unset(name)`."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            raise unset(name)
        return value

    return VARIABLE.sub(substitute, text)


__all__ = ["VARIABLE", "expand", "required_variables", "variable_names"]
