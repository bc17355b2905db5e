"""Redactor: which environment values count as secrets, and that every form of them is masked."""

from __future__ import annotations

import io
import json
import logging

from flowctl.interpreter.redact import MASK, RedactingFilter, Redactor, looks_secret

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


def test_values_shorter_than_eight_characters_are_ignored() -> None:
    redactor = Redactor.from_env({"SHORT_TOKEN": "1234567", "NAMED": "abc"}, names=["NAMED"])
    assert not redactor
    assert redactor.redact_text("1234567 abc") == "1234567 abc"


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
    ):
        assert looks_secret(name), name
    for name in (
        "GIT_AUTHOR_NAME",
        "KEYBOARD_LAYOUT",
        "SSH_AUTH_SOCK",
        "MONKEY_MODE",
        "PATH",
        "TOKENIZERS_PARALLELISM",
    ):
        assert not looks_secret(name), name
