"""Redactor: which environment values count as secrets, and that every form of them is masked."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from flowctl.interpreter.redact import (
    MASK,
    RedactingFilter,
    Redactor,
    SecretUnavailable,
    looks_secret,
    redactor_for,
    restore_inputs,
    secret_names,
)

SECRET = "sk-test-1234567890"


def test_from_env_collects_secret_looking_names_case_insensitively() -> None:
    env = {
        "OPENAI_API_KEY": "sk-openai-0001",
        "github_token": "ghp-token-0002",
        "DB_Password": "password-0003",
        "MY_PASSWD": "passwd-0004",
        "GCP_CREDENTIALS": "credential-0005",
        "HTTP_AUTH_HEADER": "Bearer auth-0006",
        "APP_SECRET": "secret-0007",
        "HOME": "/home/someone-long",
        "PATH": "/usr/local/bin:/usr/bin",
    }
    redactor = Redactor.from_env(env)
    assert set(redactor.secrets) == {value for name, value in env.items() if looks_secret(name)}
    assert "/home/someone-long" not in redactor.secrets


def test_from_env_adds_explicitly_named_variables() -> None:
    env = {"MCP_HEADER_VALUE": "header-value-123", "UNRELATED": "plain-value-456"}
    redactor = Redactor.from_env(env, names=["MCP_HEADER_VALUE", "NOT_SET"])
    assert redactor.secrets == ("header-value-123",)


def test_values_shorter_than_six_characters_are_never_masked_and_named_ones_are_listed() -> None:
    redactor = Redactor.from_env(
        {"SHORT_TOKEN": "12345", "NAMED": "abc", "EMPTY_KEY": "", "SIX_TOKEN": "123456"}, names=["NAMED", "EMPTY_KEY"]
    )
    assert redactor.secrets == ("123456",)
    assert redactor.redact_text("12345 abc 123456 1") == "12345 abc *** 1"
    assert redactor.short_names == ("NAMED",)  # the CLI warns about it; an empty value is not worth a warning


def test_redact_text_masks_every_occurrence() -> None:
    redactor = Redactor([SECRET])
    assert redactor.redact_text(f"key={SECRET}; again {SECRET}.") == f"key={MASK}; again {MASK}."


def test_longest_secret_is_masked_first() -> None:
    redactor = Redactor(["abcdefgh12", "abcdefgh1234"])
    assert redactor.redact_text("x abcdefgh1234 y abcdefgh12 z") == "x *** y *** z"


def test_json_escaped_and_stripped_forms_are_masked() -> None:
    quoted = 'pa"ss\\word-123'
    redactor = Redactor([quoted, "sk-newline-9876\n"])
    assert quoted not in redactor.redact_text(quoted)
    assert redactor.redact_text(json.dumps({"v": quoted})) == '{"v": "***"}'
    assert redactor.redact_text("token sk-newline-9876 used") == "token *** used"


def test_redact_walks_json_like_values_and_returns_a_copy() -> None:
    value = {
        "text": f"uses {SECRET}",
        SECRET: [SECRET, 3, None, True, ("t", SECRET)],
        "nested": {"deep": [{"x": SECRET}]},
    }
    original = json.dumps(value)
    redacted = Redactor([SECRET]).redact(value)
    assert redacted == {
        "text": "uses ***",
        MASK: [MASK, 3, None, True, ("t", MASK)],
        "nested": {"deep": [{"x": MASK}]},
    }
    assert json.dumps(value) == original


def test_redactor_without_secrets_returns_values_unchanged() -> None:
    redactor = Redactor()
    value = {"a": [1, "x"]}
    assert not redactor
    assert redactor.redact(value) is value
    assert redactor.redact_text("text") == "text"


def test_repr_does_not_reveal_secrets() -> None:
    assert SECRET not in repr(Redactor([SECRET]))


def test_logging_filter_masks_message_arguments_and_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(Redactor([SECRET])))
    logger = logging.getLogger("flowctl.test_redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("calling with %s", SECRET)
        try:
            raise ValueError(f"bad key {SECRET}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert SECRET not in output
    assert "calling with ***" in output
    assert "ValueError: bad key ***" in output


def test_only_whole_name_segments_look_secret() -> None:
    from flowctl.interpreter.redact import looks_secret

    for name in (
        "OPENAI_API_KEY",
        "GITHUB_TOKEN",
        "DB_PASSWORD",
        "HF_TOKEN",
        "APIKEY",
        "AWS_SECRET_ACCESS_KEY",
        "GH_PAT",
        "MY_CREDENTIALS",
        "GPG_PRIVATE",
        "SITE_COOKIE",
        "APP_SESSION",
        "API_KEYS",
    ):
        assert looks_secret(name), name
    for name in (
        "GIT_AUTHOR_NAME",
        "KEYBOARD_LAYOUT",
        "SSH_AUTH_SOCK",
        "MONKEY_MODE",
        "PATH",
        "TOKENIZERS_PARALLELISM",
        "XDG_SESSION_TYPE",
        "DESKTOP_SESSION",
        "DBUS_SESSION_BUS_ADDRESS",
        "FLOWCTL_SECRETS",
    ):
        assert not looks_secret(name), name


def _graph(tmp_path: Path, text: str) -> Any:
    from flowctl.dsl.frontend import load_pipeline

    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, [str(d) for d in diagnostics]
    return graph


PIPELINE = """\
flowctl: 1
name: p
models:
  default: {model: m, base_url: '${MODEL_BASE}/v1', api_key_env: LLM_ACCESS}
servers:
  files: {command: files-server, env: {ROOT: '${PWD}', GITHUB_TOKEN: '${GH_ACCESS}', LEVEL: '${LOG_LEVEL:-info}'}}
  remote: {url: '${MCP_BASE}/mcp', headers: {Authorization: 'Bearer ${SVC_BEARER}'}}
agents:
  a: {instruction: Work., servers: [files, remote]}
steps:
  - {id: s, agent: a, prompt: go}
"""


def test_a_pipeline_reads_secrets_from_api_key_envs_headers_and_secret_named_server_env_entries(
    tmp_path: Path,
) -> None:
    assert secret_names(_graph(tmp_path, PIPELINE)) == {"LLM_ACCESS", "GH_ACCESS", "SVC_BEARER"}


def test_auth_credentials_are_secrets(tmp_path: Path) -> None:
    text = """\
flowctl: 1
name: p
servers:
  docs: {url: 'https://docs.example.com/mcp', auth: {bearer: '${DOCS_PASS}'}}
  search:
    url: 'https://search.example.com/mcp'
    auth: {client_credentials: {client_id: '${SEARCH_ID}', client_secret: '${SEARCH_CLIENT}'}}
agents:
  a: {instruction: Work., servers: [docs, search]}
steps:
  - {id: s, agent: a, prompt: go}
"""
    names = secret_names(_graph(tmp_path, text))
    assert {"DOCS_PASS", "SEARCH_CLIENT"} <= names
    assert "SEARCH_ID" not in names  # a client id is not a secret


def test_other_interpolated_variables_are_shown_and_flowctl_secrets_marks_more(tmp_path: Path) -> None:
    env = {
        "PWD": "/home/someone/project",
        "MODEL_BASE": "http://localhost:8080",
        "MCP_BASE": "http://127.0.0.1:9000",
        "LLM_ACCESS": "llm-access-value",
        "GH_ACCESS": "gh-access-value",
        "SVC_BEARER": "svc-bearer-value",
        "LOG_LEVEL": "verbose",
    }
    redactor = redactor_for([_graph(tmp_path, PIPELINE)], env)
    text = " ".join(env.values())
    assert (
        redactor.redact_text(text)
        == "/home/someone/project http://localhost:8080 http://127.0.0.1:9000 *** *** *** verbose"
    )
    marked = redactor_for([_graph(tmp_path, PIPELINE)], {**env, "FLOWCTL_SECRETS": "LOG_LEVEL, MCP_BASE"})
    assert marked.redact_text(text) == "/home/someone/project http://localhost:8080 *** *** *** *** ***"


NAMED = {"API_TOKEN": "tok-0123456789", "DB_PASSWORD": "pw with spaces\n"}


def test_inputs_are_masked_with_placeholders_and_restored_from_the_environment() -> None:
    inputs = {
        "path": "tok-0123456789/report.txt",
        "nested": [{"tok-0123456789": "uses pw with spaces"}, 3, None],
        "quoted": json.dumps({"auth": "tok-0123456789"}),
        "plain": "nothing secret",
    }
    masked, record = Redactor(NAMED).mask_inputs(inputs)
    assert masked == {
        "path": "${API_TOKEN}/report.txt",
        "nested": [{"${API_TOKEN}": "uses ${DB_PASSWORD|strip}"}, 3, None],
        "quoted": json.dumps({"auth": "${API_TOKEN}"}),
        "plain": "nothing secret",
    }
    assert record is not None
    assert "tok-0123456789" not in json.dumps(record) and "pw with spaces" not in json.dumps(record)
    assert restore_inputs(masked, record, NAMED) == inputs


def test_a_placeholder_already_written_in_the_inputs_is_kept_literally() -> None:
    inputs = {"a": "literal ${API_TOKEN} and the real tok-0123456789", "b": "${API_TOKEN#2}"}
    masked, record = Redactor(NAMED).mask_inputs(inputs)
    assert masked == {"a": "literal ${API_TOKEN} and the real ${API_TOKEN#3}", "b": "${API_TOKEN#2}"}
    assert restore_inputs(masked, record, NAMED) == inputs


def test_inputs_without_secrets_record_nothing() -> None:
    inputs = {"a": "plain"}
    assert Redactor(NAMED).mask_inputs(inputs) == (inputs, None)
    assert restore_inputs(inputs, None, {}) == inputs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "API_TOKEN, which is not set now"),
        ({"API_TOKEN": "tok-9999999999"}, "API_TOKEN, which has changed since"),
    ],
)
def test_restoring_refuses_a_missing_or_changed_variable(env: dict[str, str], message: str) -> None:
    masked, record = Redactor(NAMED).mask_inputs({"path": "tok-0123456789/x"})
    with pytest.raises(SecretUnavailable, match=message):
        restore_inputs(masked, record, env)


def test_the_record_keeps_a_salted_digest_never_the_value() -> None:
    _, first = Redactor(NAMED).mask_inputs({"a": "tok-0123456789"})
    _, second = Redactor(NAMED).mask_inputs({"a": "tok-0123456789"})
    assert first is not None and second is not None
    assert first["salt"] != second["salt"] and first["digests"] != second["digests"]
    assert first["placeholders"] == {"${API_TOKEN}": {"var": "API_TOKEN", "form": ""}}


def test_json_text_without_any_form_of_an_ascii_secret_encodes_a_value_with_nothing_to_mask() -> None:
    """`clear_in_json` lets JSON text skip parsing and masking: it may say so only when masking the value it encodes
    would change nothing, whatever the value and however `json` wrote it. A non-ASCII secret is never ruled out."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    alphabet = st.characters(min_codepoint=0, max_codepoint=0x2FF)
    texts = st.text(alphabet, max_size=12)
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | texts,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
        max_leaves=8,
    )

    @settings(max_examples=400, deadline=None)
    @given(
        secret=st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), min_size=6, max_size=10),
        value=values,
        fragments=st.lists(texts, max_size=3),
        ensure_ascii=st.booleans(),
    )
    def check(secret: str, value: Any, fragments: list[str], ensure_ascii: bool) -> None:
        redactor = Redactor([secret])
        holding = [value, secret.join(fragments) if fragments else value, {"k": f"a{secret}b"}]
        for candidate in holding:
            if redactor.clear_in_json(json.dumps(candidate, ensure_ascii=ensure_ascii)):
                assert redactor.redact(candidate) == candidate

    check()
    assert not Redactor(["sk-ñever-0123"]).clear_in_json('{"a": 1}')
    assert Redactor(["sk-never-0123"]).clear_in_json('{"a": 1}')
    assert not Redactor(['sk-"quoted"-0123']).clear_in_json(json.dumps({"a": 'sk-"quoted"-0123'}))
