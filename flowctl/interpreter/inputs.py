"""Inputs: checked against the pipeline's declared input schemas before anything runs (root and child runs)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from flowctl.dsl.catalogue import did_you_mean
from flowctl.dsl.ir import InputSpec
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
    """`-i key=value`: a string input takes the text as is; other types parse it as JSON."""
    if spec is not None and spec.schema.get("type") == "string":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
