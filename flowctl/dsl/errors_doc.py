"""The error reference, `docs/errors.md`, rendered from the diagnostic catalogue.

Every code gets its summary, an example pipeline with the exact diagnostic flowctl prints for it, and the fix. The
diagnostics are not written by hand: each example is validated when the page is rendered, so the page stays true.
A test checks that every catalogue code has an example producing it and that `docs/errors.md` is up to date:

    python -m flowctl.dsl.errors_doc > docs/errors.md
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Diagnostic, render_text
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.loader import MAX_DEPTH, MAX_FILE_BYTES

PIPELINE = "pipeline.yaml"


@dataclass(frozen=True, slots=True)
class Example:
    """A pipeline that produces one code. `yaml` is shown, and validated as `pipeline.yaml` unless `raw` gives the
    file's exact bytes (when the file itself is the problem) or `missing` says there is no file at all."""

    yaml: str
    files: Mapping[str, str] = field(default_factory=dict)  # other files next to it, such as child pipelines
    raw: bytes | None = None
    missing: bool = False


def _steps(steps: str, head: str = "") -> str:
    """A small valid pipeline around `steps` (a YAML list, indented two spaces) and an optional `head` block."""
    return f"flowctl: 1\nname: example\n{head}steps:\n{steps}"


_WRITER = "agents:\n  writer: {instruction: You write.}\n"
_CHILD = "flowctl: 1\nname: summary\ninputs:\n  text: {type: string}\nsteps:\n  - {id: mark, set: {}}\n"
_DEEP = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)

EXAMPLES: dict[str, Example] = {
    # loading
    cat.FILE_UNREADABLE: Example("# flowctl validate pipeline.yaml, where no such file exists\n", missing=True),
    cat.FILE_TOO_LARGE: Example(
        f"# a pipeline.yaml of more than {MAX_FILE_BYTES:,} bytes\n",
        raw=b"flowctl: 1\nname: huge\n" + b"#" * MAX_FILE_BYTES,
    ),
    cat.NOT_TEXT: Example(
        "flowctl: 1\nname: caf\\xe9   # the byte E9: Latin-1, not UTF-8\n",
        raw=b"flowctl: 1\nname: caf\xe9\n",
    ),
    cat.NUMBER_TOO_LONG: Example(
        "flowctl: 1\nname: example\nconcurrency: 9999…9999   # 4,301 nines\nsteps:\n  - {id: a, set: {}}\n",
        raw=b"flowctl: 1\nname: example\nconcurrency: " + b"9" * 4301 + b"\nsteps:\n  - {id: a, set: {}}\n",
    ),
    cat.EMPTY_DOCUMENT: Example("# nothing here yet\n"),
    cat.YAML_SYNTAX: Example(_steps("  - {id: a, set: {}\n  - {id: b, set: {}}\n")),
    cat.YAML_ALIAS: Example(
        _steps("  - {id: a, set: {}, retry: &retry {max_attempts: 3}}\n  - {id: b, set: {}, retry: *retry}\n")
    ),
    cat.YAML_TOO_DEEP: Example(f"flowctl: 1\nname: deep\nsteps: {_DEEP}\n"),
    cat.YAML_DUPLICATE_KEY: Example("flowctl: 1\nname: first\nname: second\nsteps:\n  - {id: a, set: {}}\n"),
    cat.YAML_NON_STRING_KEY: Example(_steps("  - {id: a, set: {1: one}}\n")),
    cat.YAML_TAG: Example(_steps("  - {id: a, set: {}}\n", 'description: !!python/object/apply:os.system ["ls"]\n')),
    cat.YAML_MULTIPLE_DOCUMENTS: Example(_steps("  - {id: a, set: {}}\n---\nflowctl: 1\n")),
    # the format
    cat.UNKNOWN_KEY: Example(_steps("  - {id: a, set: {}}\n", "descripton: A typo.\n")),
    cat.MISSING_KEY: Example("flowctl: 1\nsteps:\n  - {id: a, set: {}}\n"),
    cat.WRONG_TYPE: Example("flowctl: 1\nname: 3.10\nsteps:\n  - {id: a, set: {}}\n"),
    cat.INVALID_VALUE: Example(_steps("  - {id: a, set: {}, on_error: contnue}\n")),
    cat.UNKNOWN_STEP_KIND: Example(_steps("  - id: draft\n    agnet: writer\n    prompt: hi\n", _WRITER)),
    cat.MULTIPLE_STEP_KINDS: Example(
        _steps(
            "  - id: now\n    agent: writer\n    tool: time.get_current_time\n    prompt: hi\n",
            _WRITER + "servers:\n  time: {command: uvx, args: [mcp-server-time]}\n",
        )
    ),
    cat.UNSUPPORTED_VERSION: Example("flowctl: 2\nname: example\nsteps:\n  - {id: a, set: {}}\n"),
    # semantic checks
    cat.UNKNOWN_AGENT: Example(_steps("  - {id: draft, agent: writter, prompt: hi}\n", _WRITER)),
    cat.UNKNOWN_MODEL: Example(
        _steps(
            "  - {id: draft, agent: writer, prompt: hi}\n",
            "models:\n  large: {provider: openai, model: gpt-4o}\n"
            "agents:\n  writer: {instruction: You write., model: larg}\n",
        )
    ),
    cat.UNKNOWN_SERVER: Example(
        _steps(
            "  - {id: ask, agent: clock, prompt: What time is it?}\n",
            "servers:\n  time: {command: uvx, args: [mcp-server-time]}\n"
            "agents:\n  clock: {instruction: Tell the time., servers: [tiem]}\n",
        )
    ),
    cat.UNKNOWN_STEP: Example(_steps("  - {id: fetch, set: {}}\n  - {id: parse, set: {}, needs: [fech]}\n")),
    cat.UNKNOWN_PIPELINE: Example(
        _steps(
            "  - {id: run_task, pipeline: execute_tsk}\n",
            "pipelines:\n  execute_task:\n    steps: [{id: work, set: {}}]\n",
        )
    ),
    cat.CHILD_NOT_FOUND: Example(_steps("  - {id: summary, pipeline: ./children/summry.yaml}\n")),
    cat.CHILD_PATH_UNUSABLE: Example(_steps('  - {id: summarize, pipeline: "children/summary\\0.yaml"}\n')),
    cat.CHILD_INVALID: Example(
        _steps("  - {id: summary, pipeline: ./children/summary.yaml}\n"),
        files={"children/summary.yaml": "flowctl: 1\nname: summary\nsteps:\n  - {id: a, agent: nobody, prompt: hi}\n"},
    ),
    cat.PATH_ESCAPE: Example(_steps("  - {id: shared, pipeline: ../shared/summary.yaml}\n")),
    cat.DUPLICATE_ID: Example(_steps("  - {id: fetch, set: {}}\n  - {id: fetch, set: {}}\n")),
    cat.DEPENDENCY_CYCLE: Example(
        _steps("  - {id: draft, set: {}, needs: [review]}\n  - {id: review, set: {}, needs: [draft]}\n")
    ),
    cat.TEMPLATE_SYNTAX: Example(
        _steps(
            "  - id: draft\n    agent: writer\n    prompt: |\n      Write about {{ inputs.topic }}.\n"
            "      Keep it under {{ inputs.words }.\n",
            "inputs:\n  topic: {type: string}\n  words: {type: integer}\n" + _WRITER,
        )
    ),
    cat.UNDEFINED_VARIABLE: Example(
        _steps(
            '  - {id: draft, agent: writer, prompt: "Write about {{ inputs.topc }}."}\n',
            "inputs:\n  topic: {type: string}\n" + _WRITER,
        )
    ),
    cat.MISSING_INPUT: Example(
        _steps("  - {id: summary, pipeline: ./children/summary.yaml}\n"), files={"children/summary.yaml": _CHILD}
    ),
    cat.UNKNOWN_INPUT: Example(
        _steps("  - {id: summary, pipeline: ./children/summary.yaml, inputs: {text: hi, words: 50}}\n"),
        files={"children/summary.yaml": _CHILD},
    ),
    cat.ROUTE_CHOICE_WITHOUT_BRANCH: Example(
        _steps(
            '  - id: analyse\n    route:\n      rules: [{when: "inputs.text | length < 200", choose: rapid}]\n'
            "      default: detaild\n    branches:\n      rapid: [{id: quick, set: {}}]\n"
            "      detailed: [{id: deep, set: {}}]\n",
            "inputs:\n  text: {type: string}\n",
        )
    ),
    cat.UNBOUNDED_LOOP: Example(
        _steps(
            "  - id: refine\n    loop:\n      until: \"steps.judge.output == 'ok'\"\n"
            "      steps: [{id: judge, agent: writer, prompt: judge}]\n",
            _WRITER,
        )
    ),
    cat.TEMPLATED_COMMAND: Example(
        _steps(
            "  - {id: run, tool: runner.go}\n", 'servers:\n  runner: {command: "$(which mcp-runner)", args: [serve]}\n'
        )
    ),
    cat.UNDECLARED_STATE_KEY: Example(
        _steps("  - {id: note, set: {lgo: started}}\n", "state:\n  log: {reducer: append}\n")
    ),
    cat.LITERAL_SERVER_VALUE: Example(
        _steps(
            "  - {id: read, tool: files.list}\n",
            'servers:\n  files: {command: mcp-files, args: ["{{ inputs.root }}"]}\n',
        )
    ),
    cat.BAD_VARIABLE: Example(
        _steps(
            "  - {id: read, tool: files.list}\n",
            'servers:\n  files: {command: mcp-files, env: {LEVEL: "${LOG-LEVEL}"}}\n',
        )
    ),
    cat.UNSET_VARIABLE: Example(
        _steps(
            "  - {id: read, tool: docs.search, args: {q: flowctl}}\n",
            'servers:\n  docs: {url: "https://docs.example.com/mcp", auth: {bearer: "${DOCS_TOKEN}"}}\n',
        )
    ),
    cat.IGNORED_KEY: Example(
        _steps(
            "  - {id: now, tool: time.get_current_time, args: {timezone: UTC}}\n",
            "servers:\n  time:\n    command: uvx\n    args: [mcp-server-time]\n    ping_interval_seconds: 30\n",
        )
    ),
    cat.UNKNOWN_TOOL: Example(
        _steps(
            "  - {id: ask, agent: clock, prompt: What time is it?}\n",
            "servers:\n  time: {command: uvx, args: [mcp-server-time], allowed_tools: [get_current_time]}\n"
            "agents:\n  clock: {instruction: Tell the time., servers: [time], tools: [time.get_curent_time]}\n",
        )
    ),
    cat.UNKNOWN_EVENT: Example(
        _steps("  - {id: ingest, set: {}, emit: {event: ingested}}\n  - {id: approval, wait: {event: aproved}}\n")
    ),
    cat.STEP_SCOPE: Example(
        _steps(
            '  - {id: draft, agent: writer, prompt: "Improve {{ steps.review.output }}"}\n'
            '  - {id: review, agent: writer, prompt: "Review {{ steps.draft.output }}"}\n',
            _WRITER,
        )
    ),
    # dynamic composition
    cat.DISPATCH_WITHOUT_EXPRESSION: Example(
        _steps(
            "  - id: run_pattern\n    pipeline: rapid\n    choices: [rapid, detailed]\n",
            "pipelines:\n  rapid:\n    steps: [{id: quick, set: {}}]\n  detailed:\n    steps: [{id: deep, set: {}}]\n",
        )
    ),
    cat.DISPATCH_WITHOUT_CHOICES: Example(
        _steps('  - id: run_pattern\n    pipeline: "{{ inputs.pattern }}"\n', "inputs:\n  pattern: {type: string}\n")
    ),
    cat.DISPATCH_DEFAULT: Example(
        _steps(
            '  - id: run_pattern\n    pipeline: "{{ inputs.pattern }}"\n    on_unknown: default\n',
            "inputs:\n  pattern: {type: string}\npipelines:\n  rapid:\n    steps: [{id: quick, set: {}}]\n",
        )
    ),
    cat.PARENT_STATE_KEY: Example(
        _steps(
            "  - {id: first, pipeline: record, inputs: {line: a}}\n",
            "state:\n  log: {reducer: append}\npipelines:\n  record:\n    inputs: {line: {type: string}}\n"
            "    parent_state: [log, totals]\n    steps:\n"
            '      - {id: write, set: {log: "{{ inputs.line }}", totals: 1}}\n',
        )
    ),
    cat.ONCE_WITH_MAX_FIRINGS: Example(
        _steps(
            "  - {id: start, emit: {event: tick}}\n",
            "triggers:\n  - id: on_tick\n    event: tick\n    once: true\n    max_firings: 10\n"
            "    steps:\n      - {id: again, emit: {event: tick}}\n",
        )
    ),
    cat.ROUTE_OPTION_UNUSED: Example(
        _steps(
            '  - id: analyse\n    route:\n      rules: [{when: "inputs.text | length < 200", choose: rapid}]\n'
            "      default: detailed\n      constraint: user\n    branches:\n      rapid: [{id: quick, set: {}}]\n"
            "      detailed: [{id: deep, set: {}}]\n",
            "inputs:\n  text: {type: string}\n",
        )
    ),
    cat.SERVE_HINT_UNUSED: Example(
        _steps(
            "  - {id: draft, agent: writer, prompt: Draft.}\n",
            "agents:\n  writer: {instruction: You draft.}\nserve:\n  read_only: true\n  destructive: false\n",
        )
    ),
    cat.AGENT_PARAMS: Example(
        _steps(
            "  - {id: design, agent: executor, prompt: Design the page.}\n",
            'agents:\n  executor:\n    params: [type]\n    instruction: "Execute {{ type }} tasks."\n',
        )
    ),
    cat.TEMPLATE_INCLUDE: Example(
        _steps("  - {id: draft, agent: writer, prompt: \"{% include 'draft_prompt.txt' %}\"}\n", _WRITER)
    ),
    cat.UNSAFE_ATTRIBUTE: Example(
        _steps('  - {id: draft, agent: writer, prompt: "{{ cycler.__init__.__globals__ }}"}\n', _WRITER)
    ),
    cat.TEMPLATE_BUDGET: Example(
        _steps('  - {id: draft, agent: writer, prompt: "{% for i in range(10**9) %}.{% endfor %}"}\n', _WRITER)
    ),
}

# The catalogue's three parts, each named by the code it starts with; codes added later join the last part.
_SECTIONS = {
    cat.FILE_UNREADABLE: "Loading the file",
    cat.UNKNOWN_KEY: "The format",
    cat.UNKNOWN_AGENT: "Semantic checks",
}

_INTRO = """\
# Error reference

Every diagnostic `flowctl validate` reports has a stable code. Each entry below says what the code means, shows a
small pipeline with the exact diagnostic flowctl prints for it, and says how to fix it. The examples are validated
whenever this page is generated (`python -m flowctl.dsl.errors_doc > docs/errors.md`), and a test keeps the page in
step with flowctl, so what you read here is what you get.

Errors stop `flowctl validate` (exit code 1) and `flowctl run`; warnings are printed and do not stop anything.
`flowctl validate --format json|github|sarif` reports the same codes; in SARIF each code is a rule.
"""


def example_diagnostics(code: str) -> tuple[list[Diagnostic], str]:
    """Validate the example for `code` in a scratch folder: its diagnostics and the source text they point into."""
    example = EXAMPLES[code]
    with tempfile.TemporaryDirectory(prefix="flowctl-errors-") as scratch:
        root = Path(scratch) / "project"
        path = root / PIPELINE
        for name, text in example.files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text, encoding="utf-8")
        root.mkdir(exist_ok=True)
        if example.raw is not None:
            path.write_bytes(example.raw)
        elif not example.missing:
            path.write_text(example.yaml, encoding="utf-8")
        result = FrontEnd(root_dir=root, env={}).process(path, display=PIPELINE)
    return result.diagnostics, result.doc.source


def _entry(code: str) -> Iterator[str]:
    info = cat.CODES[code]
    diagnostics, source = example_diagnostics(code)
    shown = [render_text(d, source or None) for d in diagnostics if d.code == code]
    yield f"### `{code}`\n"
    yield f"**{info.severity.value}** — {info.summary}\n"
    example = EXAMPLES[code]
    named = bool(example.files)  # name the files only when there are several
    for name, text in {PIPELINE: example.yaml, **example.files}.items():
        header = f"# {name}\n" if named else ""
        yield f"```yaml\n{header}{text.rstrip()}\n```\n"
    yield "```text\n" + "\n".join(shown) + "\n```\n"
    yield f"**Fix:** {info.fix}\n"


def _sections() -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    for code in cat.CODES:
        if code in _SECTIONS or not sections:
            sections.append((_SECTIONS.get(code, "Other"), []))
        sections[-1][1].append(code)
    return sections


def render_errors_doc() -> str:
    """The whole of `docs/errors.md`."""
    sections = _sections()
    parts = [_INTRO]
    for title, codes in sections:
        parts.append(f"- {title}: " + " · ".join(f"[`{code}`](#{code})" for code in codes))
    parts.append("")
    for title, codes in sections:
        parts.append(f"## {title}\n")
        for code in codes:
            parts.extend(_entry(code))
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    print(render_errors_doc(), end="")


if __name__ == "__main__":
    main()
