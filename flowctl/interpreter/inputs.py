"""Inputs: checked against the pipeline's declared input schemas before anything runs (root and child runs), and
parsed from the command line (`-i`, `--inputs`, `flowctl signal --data`) within the limits below."""

from __future__ import annotations

import codecs
import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema

from flowctl.dsl.catalogue import did_you_mean
from flowctl.dsl.ir import InputSpec
from flowctl.dsl.loader import MAX_DEPTH, MAX_INT_DIGITS
from flowctl.interpreter.errors import InputError


def validate_inputs(specs: Mapping[str, InputSpec], given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Apply defaults and check types; every problem is reported at once in one InputError."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in given:
        if name not in specs:
            hint = did_you_mean(name, specs)
            problems.append(f"unknown input {name!r}" + (f" ({hint})" if hint else ""))
    for name, spec in specs.items():
        if name in given:
            value = given[name]
        elif spec.required:
            problems.append(f"missing required input {name!r} (declared at {spec.span})")
            continue
        else:
            value = copy.deepcopy(spec.default)
        schema = {k: v for k, v in spec.schema.items() if k not in ("default", "description")}
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
        if error is not None:
            problems.append(f"input {name!r}: {error.message}")
        values[name] = value
    if problems:
        raise InputError(f"invalid inputs for {where}: " + "; ".join(problems))
    return values


def parse_cli_value(text: str, spec: InputSpec | None) -> Any:
    """`-i key=value`: a string input takes the text as is; other types parse it as JSON (text that is not JSON stays
    text, for the schema check to judge). JSON past the limits raises InputTextError."""
    check_argument_text(text)
    if spec is not None and spec.schema.get("type") == "string":
        return text
    try:
        return parse_json(text)
    except json.JSONDecodeError:
        return text


# --- JSON from the command line ------------------------------------------------------------------------------------

# The nesting limit of JSON inputs and signal data is pipeline YAML's: deeper values would exhaust the recursion of the
# parser and of everything that walks them (schema checks, templates, redaction, the store's encoder). Integers: the
# loader's limit too, whatever the interpreter's `sys.set_int_max_str_digits` (the conversion is quadratic).
MAX_JSON_DEPTH = MAX_DEPTH


@functools.lru_cache(maxsize=4)
def _json_tokens(digits: int) -> re.Pattern[str]:
    """What the limits check looks at: strings (skipped whole: brackets and digits in them do not count), brackets,
    and runs of more than `digits` digits (0: none)."""
    long_digits = f"|\\d{{{digits + 1},}}" if digits else ""
    return re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]' + long_digits)


class InputTextError(ValueError):
    """Command-line input text refused before it is parsed: JSON past a limit (nesting depth, integer digits), a file
    that is not text in an accepted encoding, an argument that is not UTF-8. `str()` is `line L, column C: problem`
    (or `column C: problem` for one-line text)."""


# how Python hands over command-line bytes that are not UTF-8 (the surrogateescape error handler)
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")


def check_argument_text(text: str) -> None:
    """Refuse a command-line argument with bytes that are not UTF-8, as `--inputs` files are refused."""
    undecoded = _UNDECODED_BYTE.search(text)
    if undecoded is not None:
        byte = ord(undecoded.group()) - 0xDC00
        raise InputTextError(
            f"{_text_position(text, undecoded.start(), False)}: byte 0x{byte:02x} is not UTF-8 "
            "(set a UTF-8 locale or encoding in the terminal)"
        )


def parse_json(text: str, *, lines: bool = False) -> Any:
    """`json.loads` that refuses, with the position, nesting deeper than MAX_JSON_DEPTH and integers longer than
    Python converts by default (4,300 digits: MAX_INT_DIGITS), instead of a RecursionError or a
    ValueError traceback. Raises json.JSONDecodeError for text that is not JSON. `lines`: positions always name the
    line (text from a file), else only when the text has several."""
    _check_json_limits(text, lines)
    return json.loads(text)


def read_json_file(path: str | Path) -> Any:
    """A JSON file in UTF-8 (with or without a BOM) or UTF-16 with a BOM (what Windows PowerShell writes with `>`).
    Raises OSError, InputTextError (encoding or limits, with the position) or json.JSONDecodeError."""
    return parse_json(decode_json_bytes(Path(path).read_bytes()), lines=True)


def decode_json_bytes(raw: bytes) -> str:
    """Text of a JSON file. Like pipeline files, a UTF-8 BOM is accepted; UTF-16 needs its BOM to be recognised."""
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise InputTextError("the file is UTF-32 text: save it as UTF-8")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise InputTextError(
                f"byte offset {exc.start}: not valid UTF-16 ({exc.reason}): save it as UTF-8"
            ) from None
    if b"\x00" in raw:
        offset = raw.index(b"\x00")
        raise InputTextError(
            f"{_byte_position(raw, offset)}: a NUL byte (UTF-16 text without a byte order mark?): save it as UTF-8"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        raise InputTextError(
            f"{_byte_position(raw, exc.start)}: byte 0x{byte:02x} is not UTF-8 (Latin-1 or Windows-1252 text?): "
            "save it as UTF-8"
        ) from None


def _byte_position(raw: bytes, offset: int) -> str:
    line_start = raw.rfind(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", errors="replace")) + 1
    line = raw.count(b"\n", 0, offset) + 1
    return f"line {line}, column {column}"


def _check_json_limits(text: str, lines: bool) -> None:
    digits = MAX_INT_DIGITS
    depth = 0
    for token in _json_tokens(digits).finditer(text):
        first = token.group()[0]
        if first in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise InputTextError(
                    f"{_text_position(text, token.start(), lines)}: nested deeper than {MAX_JSON_DEPTH} levels "
                    "(the limit for JSON inputs and signal data)"
                )
        elif first in "]}":
            depth -= 1
        elif first != '"' and _is_integer(text, token.start(), token.end()):
            where, size = _text_position(text, token.start(), lines), len(token.group())
            raise InputTextError(
                f"{where}: an integer of {size} digits; integers may have up to {digits} digits (pass it as a string)"
            )


def _is_integer(text: str, start: int, end: int) -> bool:
    """Whether a digit run is a whole JSON integer (not part of a fraction or exponent, which become floats)."""
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    return (
        before not in (".", "e", "E", "+")
        and after not in (".", "e", "E")
        and not (before == "-" and start >= 2 and text[start - 2] in "eE")
    )


def _text_position(text: str, offset: int, lines: bool) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}" if lines or "\n" in text else f"column {column}"
