"""Inputs from the command line (`-i`, `--inputs`, `flowctl signal --data`): the encodings a user's tools write are
read, anything else is refused with the encoding problem and its position, and JSON past the limits (nesting, integer
digits) is a usage error, never a RecursionError or ValueError traceback."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowctl.cli import main
from flowctl.interpreter.inputs import MAX_JSON_DEPTH

PIPELINE = """\
flowctl: 1
name: echo
inputs:
  who: {type: string}
  data: {type: object, default: {}}
agents:
  writer: {instruction: You write.}
steps:
  - id: hello
    agent: writer
    prompt: "Greet {{ inputs.who }}."
outputs:
  who: "{{ inputs.who }}"
  data: "{{ inputs.data | tojson }}"
"""

INPUTS = {"who": "Zoë 🙂", "data": {"note": "naïve"}}


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "echo.yaml").write_text(PIPELINE)
    (tmp_path / "echo.fixture.yaml").write_text('default: "Hello!"\n')
    return tmp_path


def run(project: Path, *extra: str | Path) -> Result:
    fixture = project / "echo.fixture.yaml"
    return invoke("run", project / "echo.yaml", "-q", "--scripted", fixture, "--store", project / "runs.db", *extra)


def refused(result: Result, *phrases: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    for phrase in phrases:
        assert phrase in line, line
    return line


@pytest.mark.parametrize(
    "encoding, bom",
    [
        ("utf-8", b""),
        ("utf-8", codecs.BOM_UTF8),  # Notepad, PowerShell 5's Out-File -Encoding utf8
        ("utf-16-le", codecs.BOM_UTF16_LE),  # Windows PowerShell's `>`
        ("utf-16-be", codecs.BOM_UTF16_BE),
    ],
)
def test_an_inputs_file_in_utf8_or_utf16_with_a_bom_is_read(project: Path, encoding: str, bom: bytes) -> None:
    (project / "inputs.json").write_bytes(bom + json.dumps(INPUTS, ensure_ascii=False).encode(encoding))
    result = run(project, "--inputs", project / "inputs.json")
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.output)
    assert outputs["who"] == INPUTS["who"] and json.loads(outputs["data"]) == INPUTS["data"]


def test_a_latin1_inputs_file_is_refused_naming_the_byte_and_its_position(project: Path) -> None:
    (project / "inputs.json").write_bytes('{\n  "who": "Zoë"\n}'.encode("latin-1"))
    refused(
        run(project, "--inputs", project / "inputs.json"), "inputs.json", "line 2, column 13", "byte 0xeb is not UTF-8"
    )


def test_utf16_without_a_bom_is_refused_naming_the_likely_cause(project: Path) -> None:
    (project / "inputs.json").write_bytes(json.dumps(INPUTS).encode("utf-16-le"))
    refused(
        run(project, "--inputs", project / "inputs.json"), "line 1, column 2", "UTF-16 text without a byte order mark"
    )


def test_a_command_line_value_that_is_not_utf8_is_refused(project: Path) -> None:
    undecodable = b"Zo\xeb".decode("utf-8", "surrogateescape")  # what Python makes of a Latin-1 terminal's bytes
    refused(run(project, "-i", f"who={undecodable}"), "-i who: column 3: byte 0xeb is not UTF-8")
    result = invoke("signal", "r-1", "go", "--data", f'"{undecodable}"', "--store", project / "runs.db")
    refused(result, "--data: column 4: byte 0xeb is not UTF-8")


DEEP = "[" * 50_000 + "]" * 50_000


def test_json_nested_tens_of_thousands_deep_is_refused_at_the_limit(project: Path) -> None:
    refused(run(project, "-i", "who=x", "-i", f'data={{"a": {DEEP}}}'), "-i data: column", "deeper than 64 levels")
    (project / "inputs.json").write_text(f'{{"who": "x",\n "data": {{"a": {DEEP}}}}}')
    line = refused(run(project, "--inputs", project / "inputs.json"), "line 2, column", f"deeper than {MAX_JSON_DEPTH}")
    prefix = ' "data": {"a": '
    # the file's object and "data" are levels 1 and 2: level 65, the first past the limit, is the 63rd bracket
    assert f"column {len(prefix) + MAX_JSON_DEPTH - 1}:" in line
    refused(invoke("signal", "r-1", "go", "--data", DEEP, "--store", project / "runs.db"), "--data: column 65:")


def test_json_at_the_depth_limit_is_accepted(project: Path) -> None:
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    result = run(project, "-i", "who=x", "-i", f'data={{"a": {nested}}}')
    assert result.exit_code == 0, result.output


def test_integers_past_pythons_digit_limit_are_refused_with_advice(project: Path) -> None:
    huge = "7" * 5000
    refused(run(project, "-i", "who=x", "-i", f'data={{"n": {huge}}}'), "-i data: column 7", "integer of 5000 digits")
    (project / "inputs.json").write_text(f'{{"who": "x", "data": {{"n": -{huge}}}}}')
    refused(run(project, "--inputs", project / "inputs.json"), "line 1, column 29", "pass it as a string")
    refused(invoke("signal", "r-1", "go", "--data", huge, "--store", project / "runs.db"), "--data: column 1:")


def test_long_digit_runs_that_are_not_integers_are_not_refused(project: Path) -> None:
    digits = "7" * 5000
    data = f'{{"text": "{digits}", "fraction": 0.{digits}, "exponent": 1e-{digits}, "{digits}": [{{}}]}}'
    result = run(project, "-i", "who=x", "-i", f"data={data}")
    assert result.exit_code == 0, result.output
    assert json.loads(json.loads(result.output)["data"])["text"] == digits
