"""A pipeline's `output_schema`: checked as a JSON schema by `validate`, and against the outputs when the run ends."""

from __future__ import annotations

from pathlib import Path

import flowctl

PIPELINE = """flowctl: 1
name: scored
agents:
  judge: {instruction: You score.}
steps:
  - id: score
    agent: judge
    prompt: "score it"
outputs:
  score: "{{ steps.score.output }}"
output_schema:
  type: object
  properties:
    score: {type: __TYPE__}
  required: [score]
"""
FIXTURE = 'responses:\n  - {prompt: "^score it$", reply: "high"}\n'


def write(tmp_path: Path, json_type: str) -> tuple[Path, Path]:
    pipeline, fixture = tmp_path / "scored.yaml", tmp_path / "scored.fixture.yaml"
    pipeline.write_text(PIPELINE.replace("__TYPE__", json_type))
    fixture.write_text(FIXTURE)
    return pipeline, fixture


def test_outputs_that_match_pass_and_outputs_that_do_not_fail_the_run(tmp_path: Path) -> None:
    pipeline, fixture = write(tmp_path, "string")
    assert flowctl.load(pipeline).root.output_schema == {
        "type": "object",
        "properties": {"score": {"type": "string"}},
        "required": ["score"],
    }
    ok = flowctl.run_sync(pipeline, store=tmp_path / "runs.db", scripted=fixture)
    assert ok.status is flowctl.RunStatus.SUCCEEDED and ok.outputs == {"score": "high"}
    pipeline, fixture = write(tmp_path, "number")
    bad = flowctl.run_sync(pipeline, store=tmp_path / "runs.db", scripted=fixture)
    assert bad.status is flowctl.RunStatus.FAILED and bad.error is not None
    assert bad.error.code == "outputs-invalid"
    expected = "pipeline 'scored': outputs do not match its output_schema at score: 'high' is not of type 'number'"
    assert str(bad.error) == expected


def test_an_output_schema_that_is_no_json_schema_is_reported_where_it_is(tmp_path: Path) -> None:
    pipeline, _ = write(tmp_path, "numbr")
    (problem,) = flowctl.validate(pipeline)
    assert (problem.code, problem.span.line) == ("invalid-value", 14)
    assert "numbr" in problem.message
