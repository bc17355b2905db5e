"""The diagnostic catalogue: every code flowctl's front end can report, one constructor per code.

Each entry documents itself (summary and fix), which feeds `docs/errors.md`; a test keeps the two in step.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from flowctl.dsl.characters import non_ascii_note
from flowctl.dsl.diagnostics import Diagnostic, Severity, Span


@dataclass(frozen=True, slots=True)
class CodeInfo:
    code: str
    summary: str
    fix: str
    severity: Severity = Severity.ERROR


CODES: dict[str, CodeInfo] = {}


def _code(code: str, summary: str, fix: str, severity: Severity = Severity.ERROR) -> str:
    CODES[code] = CodeInfo(code, summary, fix, severity)
    return code


def _make(code: str, message: str, span: Span, hint: str = "", related: Iterable[Span] = ()) -> Diagnostic:
    return Diagnostic(code, message, span, CODES[code].severity, hint, tuple(related))


def with_characters(message: str, name: object) -> str:
    """`message ('fеtch' contains U+0435 CYRILLIC SMALL LETTER IE)` when the name holds characters outside ASCII:
    an unknown name that looks right on screen is explained by what it is made of."""
    note = non_ascii_note(name) if isinstance(name, str) else ""
    return f"{message} ({note})" if note else message


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(value, sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else ""


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith(("s", "ch", "sh", "x")) else "s")


def _known(kind: str, choices: Iterable[str]) -> str:
    names = sorted(set(choices))
    if not names:
        return f"no {_plural(kind)} are defined"
    shown = ", ".join(repr(n) for n in names[:8]) + (", …" if len(names) > 8 else "")
    return f"known {_plural(kind)}: {shown}"


# --- loading --------------------------------------------------------------------------------------------------

FILE_UNREADABLE = _code("file-unreadable", "The file cannot be read.", "Check the path and permissions.")
FILE_TOO_LARGE = _code(
    "file-too-large", "The file is larger than the pipeline size cap.", "Split it into child pipelines."
)
NOT_TEXT = _code(
    "not-text",
    "The file is not UTF-8 text (nor UTF-16 with a byte order mark).",
    "Save the pipeline as UTF-8 text; binary files are not pipelines.",
)
EMPTY_DOCUMENT = _code("empty-document", "The file holds no YAML document.", "Start from `flowctl: 1`.")
YAML_SYNTAX = _code("yaml-syntax", "The YAML cannot be parsed.", "Fix the YAML at the marked position.")
YAML_ALIAS = _code(
    "yaml-alias",
    "Anchors and aliases are not allowed (they enable billion-laughs documents).",
    "Write the value out, or use a child pipeline or `defaults:` to share settings.",
)
YAML_TOO_DEEP = _code("yaml-too-deep", "The document nests deeper than the limit.", "Flatten the structure.")
YAML_DUPLICATE_KEY = _code(
    "duplicate-key", "A mapping repeats a key (YAML would silently keep the last).", "Remove one of the two."
)
YAML_NON_STRING_KEY = _code("non-string-key", "A mapping key is not a string.", "Quote the key so it is a string.")
YAML_TAG = _code("yaml-tag", "Explicit YAML tags are not allowed.", "Remove the tag; write a plain value.")
NUMBER_TOO_LONG = _code(
    "number-too-long",
    "An integer has more digits than flowctl reads (4,300, Python's conversion limit).",
    "Quote it if it is text (`'1234…'`); no setting needs a number that long.",
)
YAML_MULTIPLE_DOCUMENTS = _code(
    "multiple-documents", "The file holds more than one YAML document.", "Put one pipeline in each file."
)


def file_unreadable(file: str, reason: str) -> Diagnostic:
    return _make(FILE_UNREADABLE, f"cannot read {file!r}: {reason}", Span(file, 1, 1))


def prompt_file_unreadable(span: Span, ref: str, reason: str) -> Diagnostic:
    return _make(FILE_UNREADABLE, f"cannot read the prompt file {ref!r}: {reason}", span)


def file_too_large(file: str, size: int, limit: int) -> Diagnostic:
    return _make(FILE_TOO_LARGE, f"file is {size} bytes; the limit is {limit} bytes", Span(file, 1, 1))


def not_text(span: Span, reason: str) -> Diagnostic:
    return _make(NOT_TEXT, f"file is not UTF-8 text ({reason})", span)


def empty_document(file: str) -> Diagnostic:
    return _make(
        EMPTY_DOCUMENT,
        "file is empty; expected a pipeline mapping",
        Span(file, 1, 1),
        hint="start with `flowctl: 1`, `name:` and `steps:`",
    )


def yaml_syntax(span: Span, problem: str, hint: str = "") -> Diagnostic:
    return _make(YAML_SYNTAX, f"invalid YAML: {problem}", span, hint=hint)


def yaml_alias(span: Span) -> Diagnostic:
    return _make(
        YAML_ALIAS, "YAML anchors and aliases are not allowed", span, hint="write the value out where it is needed"
    )


def yaml_too_deep(span: Span, limit: int) -> Diagnostic:
    return _make(YAML_TOO_DEEP, f"document nests deeper than {limit} levels", span)


def yaml_duplicate_key(span: Span, key: str, first: Span) -> Diagnostic:
    return _make(
        YAML_DUPLICATE_KEY, f"duplicate key {key!r} (first defined at line {first.line})", span, related=[first]
    )


def yaml_non_string_key(span: Span, text: str) -> Diagnostic:
    return _make(YAML_NON_STRING_KEY, f"mapping key {text!r} is not a string", span, hint=f"quote it: '{text}'")


def yaml_complex_key(span: Span) -> Diagnostic:
    return _make(YAML_NON_STRING_KEY, "a mapping or list is used as a mapping key", span, hint="keys are plain names")


def yaml_tag(span: Span, tag: str) -> Diagnostic:
    return _make(YAML_TAG, f"YAML tag {tag!r} is not allowed", span)


def number_too_long(span: Span, digits: int, limit: int) -> Diagnostic:
    return _make(
        NUMBER_TOO_LONG,
        f"integer with {digits:,} digits; flowctl reads integers of at most {limit:,} digits",
        span,
        hint="quote it if it is meant as text",
    )


def yaml_multiple_documents(span: Span) -> Diagnostic:
    return _make(YAML_MULTIPLE_DOCUMENTS, "file holds more than one YAML document", span)


# --- schema ---------------------------------------------------------------------------------------------------

UNKNOWN_KEY = _code("unknown-key", "A key that the format does not define.", "Fix the spelling or remove it.")
MISSING_KEY = _code("missing-key", "A required key is absent.", "Add the key.")
WRONG_TYPE = _code("wrong-type", "A value has the wrong type.", "Write a value of the expected type.")
INVALID_VALUE = _code(
    "invalid-value", "A value is outside what the key allows.", "Use one of the allowed values or forms."
)
UNKNOWN_STEP_KIND = _code(
    "unknown-step-kind", "A step has no kind key (agent, tool, parallel, …).", "Give the step exactly one kind key."
)
MULTIPLE_STEP_KINDS = _code("multiple-step-kinds", "A step has more than one kind key.", "Split it into two steps.")
UNSUPPORTED_VERSION = _code(
    "unsupported-version", "The `flowctl:` version is not one this flowctl reads.", "Use `flowctl: 1`."
)


def unknown_key(span: Span, key: str, allowed: Iterable[str], where: str) -> Diagnostic:
    allowed = list(allowed)
    hint = did_you_mean(key, allowed) or _known("key", allowed)
    return _make(UNKNOWN_KEY, with_characters(f"unknown key {key!r} in {where}", key), span, hint=hint)


def missing_key(span: Span, key: str, where: str) -> Diagnostic:
    return _make(MISSING_KEY, f"missing required key {key!r} in {where}", span)


def wrong_type(span: Span, expected: str, got: str, hint: str = "") -> Diagnostic:
    return _make(WRONG_TYPE, f"expected {expected}, got {got}", span, hint=hint)


def invalid_value(span: Span, message: str, hint: str = "") -> Diagnostic:
    return _make(INVALID_VALUE, message, span, hint=hint)


def unknown_step_kind(span: Span, kinds: Iterable[str]) -> Diagnostic:
    return _make(UNKNOWN_STEP_KIND, "step has no kind", span, hint="give it one of: " + ", ".join(kinds))


def multiple_step_kinds(span: Span, found: Iterable[str]) -> Diagnostic:
    names = ", ".join(repr(k) for k in found)
    return _make(MULTIPLE_STEP_KINDS, f"step has several kinds ({names}); a step has exactly one", span)


def unsupported_version(span: Span, value: object) -> Diagnostic:
    return _make(UNSUPPORTED_VERSION, f"unsupported format version {value!r}", span, hint="use `flowctl: 1`")


# --- semantic checks ------------------------------------------------------------------------------------------

UNKNOWN_AGENT = _code("unknown-agent", "A step names an agent that is not defined.", "Define it under `agents:`.")
UNKNOWN_MODEL = _code("unknown-model", "An agent names a model that is not defined.", "Define it under `models:`.")
UNKNOWN_SERVER = _code(
    "unknown-server", "An agent or tool step names an MCP server that is not defined.", "Define it under `servers:`."
)
UNKNOWN_STEP = _code(
    "unknown-step", "A reference (`needs`, trigger, template) names a step that does not exist.", "Fix the id."
)
UNKNOWN_PIPELINE = _code(
    "unknown-pipeline",
    "A pipeline step names a child pipeline that is not defined.",
    "Define it under `pipelines:` or give a path such as `./child.yaml`.",
)
CHILD_NOT_FOUND = _code("child-not-found", "A child pipeline file does not exist.", "Fix the path.")
CHILD_PATH_UNUSABLE = _code(
    "child-path-unusable",
    "A child pipeline path cannot be followed: it holds a NUL character, a name too long, or a symlink loop.",
    "Fix the path (or the symlinks it goes through).",
)
CHILD_INVALID = _code(
    "child-invalid", "A child pipeline file has errors of its own.", "Run `flowctl validate` on the child."
)
PATH_ESCAPE = _code(
    "path-escape",
    "A file path leaves the folder tree it must stay in: a child pipeline, a prompt file or a model's `fixture:` "
    "leaves the root pipeline's folder (or is absolute), a test file's `pipeline:` or `fixture:` leaves the folder "
    "`flowctl test` searched. flowctl quotes the files it reads in its messages, so it reads none outside the project.",
    "Move the file into that folder or a subfolder, or give `flowctl test` a folder that holds the test file and "
    "what it names.",
)
DUPLICATE_ID = _code("duplicate-id", "Two steps (or triggers) share an id.", "Rename one of them.")
DEPENDENCY_CYCLE = _code(
    "dependency-cycle", "Steps depend on each other in a cycle.", "Remove one `needs` entry from the cycle."
)
TEMPLATE_SYNTAX = _code("template-syntax", "A Jinja template or expression does not parse.", "Fix the template.")
UNDEFINED_VARIABLE = _code(
    "undefined-variable",
    "A template names a variable, step, input or state key that does not exist.",
    "Fix the name, or declare the input or state key.",
)
MISSING_INPUT = _code("missing-input", "A child pipeline's required input is not supplied.", "Pass it under `inputs:`.")
UNKNOWN_INPUT = _code(
    "unknown-input", "An input is supplied that the child pipeline does not declare.", "Remove it or declare it."
)
ROUTE_CHOICE_WITHOUT_BRANCH = _code(
    "route-choice-without-branch",
    "A route rule or default chooses a branch that does not exist.",
    "Add the branch under `branches:` or fix the name.",
)
UNBOUNDED_LOOP = _code("unbounded-loop", "A loop has no `max_iterations` bound.", "Add `max_iterations:` to the loop.")
TEMPLATED_COMMAND = _code(
    "templated-command",
    "A server `command` contains a template (`{{ }}`) or a shell substitution (`$(…)`, backquotes).",
    "Write the command literally (`${VAR}` from the environment is fine); pass variable parts through `args` or `env`.",
)
UNDECLARED_STATE_KEY = _code(
    "undeclared-state-key",
    "A `set:` writes a state key that is not declared under the pipeline's `state:`.",
    "Declare the key under `state:` (its reducer and default come from there), or fix the name.",
)
LITERAL_SERVER_VALUE = _code(
    "literal-server-value",
    "A server value holds `{{ }}`: server definitions are not templates, so it is passed as written.",
    "Read the environment with `${VAR}` instead (expanded in every server string), or ignore if the text is meant "
    "literally.",
    Severity.WARNING,
)
BAD_VARIABLE = _code(
    "bad-variable",
    "A `${` in a server or model setting is not a variable flowctl expands.",
    "Write `${NAME}`, `${NAME:-default}` (sh's spelling) or `${NAME:default}` (fast-agent's).",
)
UNSET_VARIABLE = _code(
    "unset-variable",
    "A `${VAR}` without a default names a variable the environment `flowctl validate` ran in does not set.",
    "Set it before `flowctl run` (the run would fail where it is used), or give a default: `${VAR:-value}`.",
    Severity.WARNING,
)
IGNORED_KEY = _code(
    "ignored-key",
    "A server key from another tool's config (fast-agent, mcp-agent, Claude Desktop, VS Code, Cline) that flowctl "
    "accepts but does not act on.",
    "Remove it, or do what the hint says to get the same effect in flowctl.",
    Severity.WARNING,
)
UNKNOWN_TOOL = _code(
    "unknown-tool", "A tool name is not offered by the named MCP server.", "Fix the tool name (see the server's tools)."
)
UNKNOWN_EVENT = _code(
    "unknown-event",
    "A wait or trigger names an event that no step emits (it can still arrive as a signal).",
    "Check the spelling, or ignore if the event is sent with `flowctl signal`.",
    Severity.WARNING,
)
STEP_SCOPE = _code(
    "step-out-of-scope",
    "A template reads a step that may not have run yet or runs in another scope.",
    "Add the step to `needs`, or read it only after it has run.",
)

# dynamic composition (issue 14): dispatch by name, reuse, events, routes
DISPATCH_WITHOUT_EXPRESSION = _code(
    "dispatch-without-expression",
    "`choices`, `on_unknown` or `default_pipeline` on a pipeline step that names its child literally.",
    'Remove the key, or choose the child by name at run time: `pipeline: "{{ expr }}"`.',
)
DISPATCH_WITHOUT_CHOICES = _code(
    "dispatch-without-choices",
    "A pipeline step chooses its child by an expression, but there is nothing to choose from.",
    "List the names it may give under `choices:`, or define the pipelines under `pipelines:`.",
)
DISPATCH_DEFAULT = _code(
    "dispatch-default",
    "`on_unknown: default` without `default_pipeline`, or a `default_pipeline` that `on_unknown` never runs.",
    "Give `default_pipeline:` with `on_unknown: default` (or leave `on_unknown` out), or remove `default_pipeline`.",
)

PARENT_STATE_KEY = _code(
    "parent-state-key",
    "A child's `parent_state` key is not declared by a pipeline that runs it, or is also in the child's own `state:`.",
    "Declare the key under the caller's `state:`; keep it out of the child's own `state:`.",
)

ONCE_WITH_MAX_FIRINGS = _code(
    "once-with-max-firings",
    "A trigger has `once: true` and `max_firings`: a trigger that fires once has no other bound.",
    "Remove `once: true` (`max_firings` implies `once: false`), or remove `max_firings`.",
)

ROUTE_OPTION_UNUSED = _code(
    "route-option-unused",
    "A route option that has no effect where it is: `constraint`, `prompt` or `prompt_file` without a routing "
    "`agent`, or `unknown_in_results` with `on_unknown: fail`.",
    "Remove the option, or add what it applies to.",
    Severity.WARNING,
)

SERVE_HINT_UNUSED = _code(
    "serve-hint-unused",
    "`serve:` says `read_only: true` and also `destructive` or `idempotent`, which MCP clients read only for a tool "
    "that modifies its environment.",
    "Remove the hint, or `read_only: true` if the pipeline does modify something.",
    Severity.WARNING,
)

# dynamic composition (issue 14): agents from data
AGENT_PARAMS = _code(
    "agent-params",
    "A parameterised agent used without its arguments (or chosen by an expression, or as a fallback or router), an "
    "argument it does not take or one it is missing, or arguments for an agent that has no `params`.",
    "Use a parameterised agent as `agent: {use: NAME, with: {...}}`, with one argument per entry of its `params`.",
)


def agent_params(span: Span, message: str, hint: str = "") -> Diagnostic:
    return _make(AGENT_PARAMS, message, span, hint=hint)


def agent_never_declared(span: Span, text: str, known: Iterable[str]) -> Diagnostic:
    """An agent expression whose every possible name (`'processor_' ~ …` → names starting `processor_`) is none."""
    return _make(
        UNKNOWN_AGENT,
        f"the agent expression can only give {text}, and no agent has such a name",
        span,
        hint=_known("agent", list(known)),
    )


def unknown_ref(code: str, kind: str, span: Span, name: str, known: Iterable[str]) -> Diagnostic:
    known = list(known)
    message = with_characters(f"unknown {kind} {name!r}", name)
    return _make(code, message, span, hint=did_you_mean(name, known) or _known(kind, known))


def child_not_found(span: Span, path: str) -> Diagnostic:
    return _make(CHILD_NOT_FOUND, f"child pipeline file {path!r} does not exist", span)


def child_path_unusable(span: Span, path: str, reason: str) -> Diagnostic:
    shown = repr(path) if len(path) <= 80 else repr(path[:79] + "…")
    return _make(CHILD_PATH_UNUSABLE, f"child pipeline path {shown} cannot be followed: {reason}", span)


def child_invalid(span: Span, path: str, count: int) -> Diagnostic:
    return _make(
        CHILD_INVALID, f"child pipeline {path!r} has {count} error(s)", span, hint=f"run `flowctl validate {path}`"
    )


def path_escape(
    span: Span, path: str, what: str = "child pipeline path", folder: str = "the pipeline's folder"
) -> Diagnostic:
    return _make(PATH_ESCAPE, f"{what} {path!r} leaves {folder}", span)


def duplicate_id(span: Span, name: str, first: Span) -> Diagnostic:
    return _make(DUPLICATE_ID, f"duplicate id {name!r} (first defined at line {first.line})", span, related=[first])


def dependency_cycle(span: Span, path: list[str]) -> Diagnostic:
    return _make(DEPENDENCY_CYCLE, "dependency cycle: " + " -> ".join(path), span)


def template_syntax(span: Span, problem: str, hint: str = "") -> Diagnostic:
    return _make(TEMPLATE_SYNTAX, f"template error: {problem}", span, hint=hint)


def undefined_variable(span: Span, name: str, known: Iterable[str]) -> Diagnostic:
    known = list(known)
    hint = did_you_mean(name.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in known])
    if hint:
        hint = did_you_mean(name, known) or hint
    root = name.split(".", 1)[0]
    if not hint and not known and root in _DECLARED_UNDER:
        hint = f"no {_DECLARED_UNDER[root]} are declared; declare it under `{root}:`"
    message = with_characters(f"undefined variable {name!r}", name)
    return _make(UNDEFINED_VARIABLE, message, span, hint=hint or _known("name", known))


_DECLARED_UNDER = {"inputs": "inputs", "state": "state keys"}


def missing_input(span: Span, child: str, name: str) -> Diagnostic:
    return _make(MISSING_INPUT, f"child pipeline {child!r} requires input {name!r}", span)


def unknown_input(span: Span, child: str, name: str, known: Iterable[str]) -> Diagnostic:
    known = list(known)
    return _make(
        UNKNOWN_INPUT,
        with_characters(f"child pipeline {child!r} has no input {name!r}", name),
        span,
        hint=did_you_mean(name, known) or _known("input", known),
    )


def route_choice_without_branch(span: Span, choice: str, branches: Iterable[str]) -> Diagnostic:
    branches = list(branches)
    return _make(
        ROUTE_CHOICE_WITHOUT_BRANCH,
        with_characters(f"route choice {choice!r} has no branch", choice),
        span,
        hint=did_you_mean(choice, branches) or _known("branch", branches),
    )


def unbounded_loop(span: Span) -> Diagnostic:
    return _make(UNBOUNDED_LOOP, "loop has no `max_iterations` bound", span, hint="add `max_iterations: 5`")


def templated_command(span: Span, command: str) -> Diagnostic:
    return _make(TEMPLATED_COMMAND, f"server command {command!r} must be literal", span)


def undeclared_state_key(span: Span, key: str, declared: Iterable[str]) -> Diagnostic:
    declared = list(declared)
    hint = did_you_mean(key, declared) or f"declare it under `state:`, e.g. `state: {{{key}: {{default: null}}}}`"
    message = with_characters(f"`set` writes state key {key!r}, which is not declared", key)
    return _make(UNDECLARED_STATE_KEY, message, span, hint=hint)


def literal_server_value(span: Span, value: str, key: str) -> Diagnostic:
    shown = repr(value) if len(value) <= 60 else repr(value[:59] + "…")
    message = f"server `{key}` value {shown} is passed as written: server definitions are not templates"
    hint = "read the environment with `${VAR}`; templates are rendered only in steps"
    return _make(LITERAL_SERVER_VALUE, message, span, hint=hint)


def unset_variable(span: Span, name: str) -> Diagnostic:
    message = f"environment variable {name!r} is not set, and `${{{name}}}` has no default"
    hint = f"set {name} before `flowctl run`, or write `${{{name}:-…}}` with a default"
    return _make(UNSET_VARIABLE, message, span, hint=hint)


def ignored_key(span: Span, key: str, where: str, why: str) -> Diagnostic:
    return _make(IGNORED_KEY, f"`{key}` in {where} is ignored", span, hint=why)


def bad_variable(span: Span, problem: str, hint: str) -> Diagnostic:
    return _make(BAD_VARIABLE, problem, span, hint=hint)


def unknown_tool(span: Span, server: str, tool: str, known: Iterable[str]) -> Diagnostic:
    known = list(known)
    return _make(
        UNKNOWN_TOOL,
        with_characters(f"server {server!r} has no tool {tool!r}", tool),
        span,
        hint=did_you_mean(tool, known) or _known("tool", known),
    )


def unknown_event(span: Span, event: str, emitted: Iterable[str]) -> Diagnostic:
    emitted = list(emitted)
    hint = did_you_mean(event, emitted) or "no step emits it; it can still arrive through `flowctl signal`"
    return _make(UNKNOWN_EVENT, with_characters(f"no step emits event {event!r}", event), span, hint=hint)


def step_out_of_scope(span: Span, step: str, reason: str) -> Diagnostic:
    return _make(STEP_SCOPE, f"step {step!r} {reason}", span)


# --- template limits (the sandbox: flowctl/dsl/sandbox.py) ------------------------------------------------------

TEMPLATE_INCLUDE = _code(
    "template-include",
    "A template uses `{% include %}`, `{% import %}` or `{% extends %}`; templates cannot load other files yet.",
    "Write the text into the template itself (or pass it in through an input) until prompt files are supported.",
)
UNSAFE_ATTRIBUTE = _code(
    "unsafe-attribute",
    "A template reads an attribute the sandbox refuses (a name starting with `_`, or Python internals).",
    "Read data only: inputs, state, step results and their keys.",
)
TEMPLATE_BUDGET = _code(
    "template-budget",
    "A template's literal numbers go past a rendering limit (`range`, `lipsum`, `**`, `*`).",
    'Use smaller numbers; see "Template limits" in docs/dsl.md.',
)


def template_include(span: Span, tag: str) -> Diagnostic:
    return _make(
        TEMPLATE_INCLUDE,
        f"`{{% {tag} %}}` is not supported: templates cannot load other files",
        span,
        hint="write the text into the template; prompt files are planned",
    )


def unsafe_attribute(span: Span, attribute: str) -> Diagnostic:
    return _make(UNSAFE_ATTRIBUTE, f"the template sandbox refuses the attribute {attribute!r}", span)


def template_budget(span: Span, problem: str) -> Diagnostic:
    return _make(
        TEMPLATE_BUDGET,
        f"template past its limits: {problem}",
        span,
        hint='use smaller numbers; the limits are listed under "Template limits" in docs/dsl.md',
    )


def dispatch_without_expression(span: Span, key: str) -> Diagnostic:
    return _make(
        DISPATCH_WITHOUT_EXPRESSION,
        f"`{key}` applies only to a child chosen by an expression, and this step names its child literally",
        span,
        hint='remove it, or write `pipeline: "{{ expr }}"`',
    )


def dispatch_without_choices(span: Span) -> Diagnostic:
    return _make(
        DISPATCH_WITHOUT_CHOICES,
        "the child is chosen by an expression, but there are no `choices:` and no pipelines under `pipelines:`",
        span,
        hint="list the names it may give under `choices:`",
    )


def dispatch_default(span: Span, message: str) -> Diagnostic:
    return _make(DISPATCH_DEFAULT, message, span)


def parent_state_key(span: Span, message: str, hint: str) -> Diagnostic:
    return _make(PARENT_STATE_KEY, message, span, hint=hint)


def once_with_max_firings(span: Span, trigger: str) -> Diagnostic:
    return _make(
        ONCE_WITH_MAX_FIRINGS,
        f"trigger {trigger!r} fires once (`once: true`), so `max_firings` never applies",
        span,
        hint="remove `once: true`: `max_firings` alone makes it fire up to that many times",
    )


def route_option_unused(span: Span, message: str) -> Diagnostic:
    return _make(ROUTE_OPTION_UNUSED, message, span)


def serve_hint_unused(span: Span, key: str) -> Diagnostic:
    return _make(
        SERVE_HINT_UNUSED,
        f"`{key}` has no effect with `read_only: true`: MCP clients read it only for a tool that modifies things",
        span,
        hint=f"remove `{key}`, or `read_only: true` if the pipeline does modify something",
    )
