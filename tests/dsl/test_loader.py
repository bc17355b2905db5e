"""Stage 1, load: YAML 1.2 scalars, 1-based positions for keys and values, and the hardening against hostile input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Span
from flowctl.dsl.loader import MAX_DEPTH, MAX_FILE_BYTES, load_file, load_text, resolve_plain_scalar


def load(text: str) -> object:
    doc = load_text(text, "t.yaml")
    assert doc.diagnostics == [], [str(d) for d in doc.diagnostics]
    return doc.data


def codes(text: str) -> list[tuple[str, int, int]]:
    return [(d.code, d.span.line, d.span.col) for d in load_text(text, "t.yaml").diagnostics]


# --- YAML 1.2 core schema ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "Yes", "NO", "On"])
def test_yaml_1_1_booleans_stay_strings_as_keys_and_values(word: str) -> None:
    assert load(f"{word}: {word}\n") == {word: word}


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("TRUE", True)])
def test_only_true_and_false_are_booleans(text: str, value: bool) -> None:
    assert load(f"a: {text}\n") == {"a": value}


def test_leading_zero_is_decimal_not_octal() -> None:
    assert load("mode: 0755\n") == {"mode": 755}


def test_yaml_1_2_octal_and_hex() -> None:
    assert load("a: 0o17\nb: 0x1F\n") == {"a": 15, "b": 31}


def test_dates_and_times_stay_strings() -> None:
    assert load("day: 2024-01-31\nat: 2024-01-31T10:00:00Z\n") == {"day": "2024-01-31", "at": "2024-01-31T10:00:00Z"}


def test_sexagesimal_stays_a_string() -> None:
    assert load("t: 1:30\n") == {"t": "1:30"}


def test_floats_keep_their_raw_text() -> None:
    doc = load_text("version: 3.10\nlist: [1.50, 2]\n", "t.yaml")
    assert doc.data == {"version": 3.1, "list": [1.5, 2]}
    assert doc.source_map.raw[("version",)] == "3.10"
    assert doc.source_map.raw[("list", 0)] == "1.50"
    assert doc.source_map.raw[("list", 1)] == "2"


def test_quoted_scalars_are_strings_and_have_no_raw_text() -> None:
    doc = load_text("a: '3.10'\nb: \"true\"\nc: !!str 12\n", "t.yaml")
    assert doc.data == {"a": "3.10", "b": "true", "c": "12"}
    assert doc.source_map.raw == {}


@pytest.mark.parametrize(("text", "value"), [("~", None), ("null", None), ("", None), (".inf", math.inf)])
def test_null_and_special_floats(text: str, value: object) -> None:
    assert resolve_plain_scalar(text) == value


def test_nan_resolves_to_nan() -> None:
    assert math.isnan(resolve_plain_scalar(".nan"))


# --- positions --------------------------------------------------------------------------------------------------


def test_marks_are_one_based_for_keys_and_values() -> None:
    doc = load_text("flowctl: 1\nsteps:\n  - id: a\n    set: {k: v}\n", "t.yaml")
    source_map = doc.source_map
    assert source_map.key(("flowctl",)) == Span("t.yaml", 1, 1, 1, 8)
    assert source_map.value(("flowctl",)) == Span("t.yaml", 1, 10, 1, 11)
    assert source_map.value(("steps", 0, "id")) == Span("t.yaml", 3, 9, 3, 10)
    assert source_map.key(("steps", 0, "set", "k")) == Span("t.yaml", 4, 11, 4, 12)
    assert source_map.value(("steps", 0, "set", "k")) == Span("t.yaml", 4, 14, 4, 15)


def test_a_missing_path_falls_back_to_its_nearest_ancestor() -> None:
    doc = load_text("a:\n  b: 1\n", "t.yaml")
    assert doc.source_map.value(("a", "b", "c", 3)) == doc.source_map.value(("a", "b"))
    assert doc.source_map.key(("a", "zz")) == doc.source_map.value(("a",))


def test_block_scalars_are_recorded() -> None:
    doc = load_text("a: |\n  x\nb: >\n  y\nc: z\n", "t.yaml")
    assert doc.source_map.blocks == {("a",), ("b",)}
    assert doc.data == {"a": "x\n", "b": "y\n", "c": "z"}


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    doc = load_file(path)
    assert doc.diagnostics == []
    assert doc.data == {"a": 1}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_its_byte_order_mark_is_read_as_json_inputs_are(tmp_path: Path, encoding: str) -> None:
    """What Windows PowerShell writes with `>`: UTF-16 with a BOM (`utf-16` writes one; the others get it here)."""
    path = tmp_path / "ps.yaml"
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(encoding, b"")
    path.write_bytes(bom + "name: caf\u00e9\nsteps: [a]\n".encode(encoding))
    doc = load_file(path)
    assert doc.diagnostics == []
    assert doc.data == {"name": "caf\u00e9", "steps": ["a"]}


def test_utf16_without_a_byte_order_mark_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "ps.yaml"
    path.write_bytes("name: x\n".encode("utf-16-le"))
    assert [d.code for d in load_file(path).diagnostics] == [cat.NOT_TEXT]


# --- hardening --------------------------------------------------------------------------------------------------


def test_aliases_and_anchors_are_refused() -> None:
    assert codes("a: &x [1]\nb: *x\n") == [(cat.YAML_ALIAS, 1, 4)]


# Both parsers PyYAML may use: the C one (libyaml, when the wheel has it) and the pure-Python one.
PARSERS = [yaml.SafeLoader, *([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("[" * 10_000 + "]" * 10_000, (1, MAX_DEPTH + 1)),  # past libyaml 0.2.6's own limit of 1000
        ("[" * 900 + "]" * 900, (1, MAX_DEPTH + 1)),  # under it
        ("{a: " * 2_000 + "1" + "}" * 2_000, (1, 4 * MAX_DEPTH + 1)),
        ("- " * 2_000 + "x\n", (1, 2 * MAX_DEPTH + 1)),  # block sequences
    ],
    ids=["flow-10000", "flow-900", "flow-mappings", "block"],
)
def test_nesting_past_the_limit_is_refused_the_same_by_every_parser(
    parser: type, text: str, position: tuple[int, int]
) -> None:
    diagnostics = load_text(text, "t.yaml", event_loader=parser).diagnostics
    assert [(d.code, d.span.line, d.span.col) for d in diagnostics] == [(cat.YAML_TOO_DEEP, *position)]


def test_nesting_at_the_limit_is_fine() -> None:
    assert load("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


def test_duplicate_keys_point_at_the_second_and_name_the_first() -> None:
    doc = load_text("a: 1\nb: 2\na: 3\n", "t.yaml")
    (diagnostic,) = doc.diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.col) == (cat.YAML_DUPLICATE_KEY, 3, 1)
    assert diagnostic.related == (Span("t.yaml", 1, 1, 1, 2),)


def test_the_same_key_in_two_mappings_is_not_a_duplicate() -> None:
    assert load("a: {k: 1}\nb: {k: 2}\n") == {"a": {"k": 1}, "b": {"k": 2}}


def test_non_string_keys_are_refused_but_quoted_ones_are_fine() -> None:
    assert codes("1: a\ntrue: b\n~: c\n") == [(cat.YAML_NON_STRING_KEY, i, 1) for i in (1, 2, 3)]
    assert load("'1': a\n\"true\": b\n") == {"1": "a", "true": "b"}


def test_a_mapping_as_a_key_is_refused() -> None:
    assert codes("? [a, b]\n: c\n") == [(cat.YAML_NON_STRING_KEY, 1, 3)]


def test_python_tags_are_refused_and_shown_as_written() -> None:
    (diagnostic,) = load_text("a: !!python/object:os.system x\n", "t.yaml").diagnostics
    assert diagnostic.code == cat.YAML_TAG
    assert diagnostic.message == "YAML tag '!!python/object:os.system' is not allowed"


def test_custom_tags_are_refused() -> None:
    assert codes("a: !vault secret\n") == [(cat.YAML_TAG, 1, 4)]


def test_multiple_documents_are_refused() -> None:
    assert codes("a: 1\n---\nb: 2\n") == [(cat.YAML_MULTIPLE_DOCUMENTS, 2, 1)]


def test_an_explicit_document_end_is_fine() -> None:
    assert load("---\na: 1\n...\n") == {"a": 1}


def test_syntax_errors_name_the_construct_that_started_earlier() -> None:
    (diagnostic,) = load_text("a: {b: 1\nc: 2\n", "t.yaml").diagnostics
    assert diagnostic.code == cat.YAML_SYNTAX
    assert "(while parsing a flow mapping at line 1)" in diagnostic.message


def test_a_control_character_is_located() -> None:
    assert codes("a: 1\nb: 'é\x07'\n") == [(cat.YAML_SYNTAX, 2, 6)]


def test_unpaired_surrogates_are_not_text() -> None:
    assert codes("a: 1\nb: \ud800\n") == [(cat.NOT_TEXT, 2, 4)]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "\n\n"])
def test_empty_documents(text: str) -> None:
    assert codes(text) == [(cat.EMPTY_DOCUMENT, 1, 1)]


def test_a_null_document_is_empty_too() -> None:
    assert codes("~\n") == [(cat.EMPTY_DOCUMENT, 1, 1)]


# --- files ------------------------------------------------------------------------------------------------------


def test_files_over_the_cap_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * MAX_FILE_BYTES)
    doc = load_file(path, "big.yaml")
    assert [d.code for d in doc.diagnostics] == [cat.FILE_TOO_LARGE]
    assert doc.source == ""


def test_nul_bytes_are_located(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"a: 1\nb: x\x00y\n")
    assert [(d.code, d.span.line, d.span.col) for d in load_file(path).diagnostics] == [(cat.NOT_TEXT, 2, 5)]


def test_invalid_utf8_is_located_in_characters(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("a: 1\nb: é".encode() + b"\xe9\n")
    (diagnostic,) = load_file(path).diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.col) == (cat.NOT_TEXT, 2, 5)
    assert "offset 10" in diagnostic.message


def test_unreadable_files_are_a_diagnostic(tmp_path: Path) -> None:
    doc = load_file(tmp_path, "folder")
    assert [d.code for d in doc.diagnostics] == [cat.FILE_UNREADABLE]
    assert doc.data is None


def test_display_name_is_used_in_spans(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("a: [\n", encoding="utf-8")
    assert load_file(path, "shown.yaml").diagnostics[0].span.file == "shown.yaml"
