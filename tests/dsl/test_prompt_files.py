"""Prompt files (`instruction_file:`, `prompt_file:`): read from the pipeline's folder tree only, checked like inline
templates with positions in the prompt file, and compiled into the graph as if written inline."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from flowctl.cli import main
from flowctl.dsl import catalogue as cat
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.ir import AgentCall

PIPELINE = """\
flowctl: 1
name: files
inputs:
  topic: {type: string}
agents:
  writer: {instruction_file: prompts/system.md}
steps:
  - {id: draft, agent: writer, prompt_file: PROMPT}
"""


def write(tmp_path: Path, prompt: str = "prompts/user.md", **files: str) -> Path:
    for name, text in {"prompts/system.md": "You write about {{ inputs.topic }}.\n", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.replace("PROMPT", prompt))
    return path


def test_the_files_texts_are_compiled_as_the_fields_they_stand_for(tmp_path: Path) -> None:
    path = write(tmp_path, **{"prompts/user.md": "Write about {{ inputs.topic }}.\n"})
    result = FrontEnd().process(path)
    assert result.diagnostics == [] and result.graph is not None
    body = result.graph.root.steps[0].body
    assert isinstance(body, AgentCall)
    assert body.prompt.render({"inputs": {"topic": "tea"}}) == "Write about tea."
    assert result.graph.agents["writer"].instruction.render({"inputs": {"topic": "tea"}}) == "You write about tea."
    # a run-time error in the template names the prompt file
    assert body.prompt.span.file.endswith("prompts/user.md")


def test_a_problem_in_a_prompt_file_is_reported_at_its_line_in_that_file(tmp_path: Path) -> None:
    text = "Write about {{ inputs.topic }}.\n\nUse {{ steps.draft.output }} and {{ inputs.topik }}.\n"
    path = write(tmp_path, **{"prompts/user.md": text})
    diagnostics = FrontEnd().process(path).diagnostics
    found = [(Path(d.span.file).name, d.span.line, d.span.col, d.code) for d in diagnostics]
    line = text.splitlines()[2]
    assert found == [
        ("user.md", 3, line.index("steps.draft") + 1, cat.STEP_SCOPE),
        ("user.md", 3, line.index("inputs.topik") + 1, cat.UNDEFINED_VARIABLE),
    ]


def test_validate_shows_the_prompt_files_line(tmp_path: Path) -> None:
    path = write(tmp_path, **{"prompts/user.md": "Write about\n{{ inputs.topik }}\n"})
    out = CliRunner().invoke(main, ["validate", str(path)]).output
    assert "prompts/user.md:2:4: error: undefined variable 'inputs.topik'" in out
    assert "   2 | {{ inputs.topik }}" in out


def test_a_prompt_file_outside_the_folder_tree_is_refused(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("TOPSECRET")
    project.mkdir()
    path = write(project, "prompts/link.md")
    (project / "prompts" / "link.md").symlink_to(outside / "secret.md")
    for ref in ("prompts/link.md", "../outside/secret.md", str(outside / "secret.md")):
        path.write_text(PIPELINE.replace("PROMPT", ref))
        diagnostics = FrontEnd().process(path).diagnostics
        assert [d.code for d in diagnostics] == [cat.PATH_ESCAPE], ref
        assert "TOPSECRET" not in diagnostics[0].message  # never read


def test_a_missing_or_binary_prompt_file_is_reported_at_its_reference(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts/none.md")
    (diagnostic,) = FrontEnd().process(path).diagnostics
    assert (diagnostic.code, diagnostic.span.line) == (cat.FILE_UNREADABLE, 8)
    (tmp_path / "prompts" / "bin.md").write_bytes(b"\xff\xfe\x00bad")
    path.write_text(PIPELINE.replace("PROMPT", "prompts/bin.md"))
    (diagnostic,) = FrontEnd().process(path).diagnostics
    assert diagnostic.code == cat.FILE_UNREADABLE and "not UTF-8 text" in diagnostic.message
