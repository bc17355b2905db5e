"""Characters that look like others, or like nothing: named in messages, so a user can find what an editor hides.

`'fеtch' contains U+0435 CYRILLIC SMALL LETTER IE` explains an "unknown step" that looks right on screen; a no-break
space after `prompt:` explains a YAML syntax error on a line that looks fine.
"""

from __future__ import annotations

import re
import unicodedata

# Line breaks as editors count them. YAML also breaks lines at U+0085, U+2028 and U+2029 (and Python's
# `str.splitlines` at more), which editors show inline: positions and source lines follow the editor.
EDITOR_LINE_BREAK = re.compile(r"\r\n|\r|\n")
YAML_ONLY_BREAKS = "\x85\u2028\u2029"

# Whitespace YAML does not treat as a space, and invisible characters, that editors show as a space or nothing.
_LOOKS_LIKE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200d\u2028\u2029\u202f\u205f\u2060\u3000\ufeff]")


def editor_lines(text: str) -> list[str]:
    """The lines an editor shows (`str.splitlines` would also break at U+2028, U+000C, ...)."""
    lines = EDITOR_LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def char_name(char: str) -> str:
    """`U+0435 CYRILLIC SMALL LETTER IE`."""
    return f"U+{ord(char):04X} {unicodedata.name(char, 'UNNAMED CHARACTER')}"


def first_unusual_space(text: str, start: int = 0, end: int | None = None) -> int | None:
    """The index of the first space-like or invisible character YAML does not read as a space, or None."""
    match = _LOOKS_LIKE_SPACE.search(text, start, len(text) if end is None else end)
    return match.start() if match else None


def non_ascii_note(name: str) -> str:
    """`'fеtch' contains U+0435 CYRILLIC SMALL LETTER IE`, naming each character outside ASCII (up to three); ""
    for ASCII names. Said wherever an unknown name is reported: such a name looks right and still does not match."""
    odd = list(dict.fromkeys(c for c in name if not c.isascii() or not c.isprintable()))
    if not odd:
        return ""
    names = ", ".join(char_name(c) for c in odd[:3]) + (", …" if len(odd) > 3 else "")
    return f"{name!r} contains {names}"
