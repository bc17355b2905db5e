"""A refused resume names the file that was edited since the run started: the pipeline file, a prompt file, a child
pipeline file or a child's prompt file (every file the pipeline reads at load time is in the digest recorded with
the run), or says that none was. Runs recorded with the older digest (the pipeline file's alone) still resume.
Through the CLI, with real files and a real store."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

from tests.interpreter.pipelines.harness import FLOWCTL, flowctl, query

PIPELINE = """\
flowctl: 1
name: prompted
models:
  m: {provider: openai, model: "${FLOWCTL_TEST_MODEL:-gpt-4o-mini}"}
agents:
  worker: {instruction_file: prompts/worker.md, model: m}
steps:
  - {id: first, agent: worker, prompt_file: prompts/first.md}
  - {id: sub, pipeline: children/sub.yaml}
  - {id: second, agent: worker, prompt: "second"}
"""

CHILD = """\
flowctl: 1
name: sub
agents:
  helper: {instruction: You help.}
steps:
  - {id: inner, agent: helper, prompt_file: prompts/inner.md}
"""


def make_folder(root: Path) -> Path:
    (root / "prompts").mkdir()
    (root / "children" / "prompts").mkdir(parents=True)
    (root / "p.yaml").write_text(PIPELINE)
    (root / "prompts" / "worker.md").write_text("You work.\n")
    (root / "prompts" / "first.md").write_text("First: {{ 1 + 1 }}\n")
    (root / "children" / "sub.yaml").write_text(CHILD)
    (root / "children" / "prompts" / "inner.md").write_text("Inner.\n")
    (root / "broken.yaml").write_text("responses:\n  - {step: second, reply: {error: bad_request}}\ndefault: ok\n")
    (root / "fixed.yaml").write_text("default: ok\n")
    return root / "p.yaml"


def failed_run(root: Path) -> str:
    """A run of the folder's pipeline that failed at its last step, after journaling the others."""
    process = flowctl("run", "p.yaml", "--scripted", "broken.yaml", "--store", "runs.db", "--output", "json", cwd=root)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    result = json.loads(stdout)
    assert result["status"] == "failed"
    return str(result["run_id"])


def resume(root: Path, run_id: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    args = [FLOWCTL, "resume", run_id, "--scripted", "fixed.yaml", "--store", "runs.db", "--quiet", *extra]
    done = subprocess.run(args, cwd=root, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_the_digest_lists_every_file_the_pipeline_reads(tmp_path: Path) -> None:
    make_folder(tmp_path)
    run_id = failed_run(tmp_path)
    ((root_digest,),) = query(tmp_path / "runs.db", "SELECT source_digest FROM runs WHERE run_id = ?", run_id)
    names = [line.split("  ", 1)[1] for line in root_digest.splitlines()]
    # the pipeline file first, then the others (its children's too) in order
    others = ["children/prompts/inner.md", "children/sub.yaml", "prompts/first.md", "prompts/worker.md"]
    assert names == ["p.yaml", *others]
    for line in root_digest.splitlines():
        digest, name = line.split("  ", 1)
        assert digest == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    # the child run records its own files
    ((child_digest,),) = query(tmp_path / "runs.db", "SELECT source_digest FROM runs WHERE parent_id IS NOT NULL")
    assert [line.split("  ", 1)[1] for line in child_digest.splitlines()] == [
        "children/sub.yaml",
        "children/prompts/inner.md",
    ]


def test_an_edited_prompt_file_is_named_and_forced(tmp_path: Path) -> None:
    make_folder(tmp_path)
    run_id = failed_run(tmp_path)
    (tmp_path / "prompts" / "first.md").write_text("First, edited\n")

    code, stdout, stderr = resume(tmp_path, run_id)
    assert (code, stdout) == (2, "")
    assert "step 'first' changed since run" in stderr and "--force" in stderr
    assert "edited since the run started: prompts/first.md (the run is left as it was)" in stderr

    code, stdout, stderr = resume(tmp_path, run_id, "--force", "--output", "json")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["status"] == "succeeded"
    # `first` asked again; the child's call replayed; `second` (failed before) asked again
    assert (result["calls"]["executed"], result["calls"]["replayed"]) == (2, 1)


def test_an_edited_instruction_file_child_file_or_child_prompt_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path)
    run_id = failed_run(tmp_path)
    (tmp_path / "prompts" / "worker.md").write_text("You work hard.\n")
    (tmp_path / "children" / "prompts" / "inner.md").write_text("Inner, edited.\n")
    (tmp_path / "children" / "sub.yaml").write_text(CHILD.replace("You help.", "You help a lot."))

    code, _, stderr = resume(tmp_path, run_id)
    assert code == 2
    expected = "edited since the run started: children/prompts/inner.md, children/sub.yaml, prompts/worker.md"
    assert expected in stderr


def test_a_request_changed_with_no_file_edited_is_said_so(tmp_path: Path) -> None:
    make_folder(tmp_path)
    run_id = failed_run(tmp_path)
    code, _, stderr = resume(tmp_path, run_id, env={"FLOWCTL_TEST_MODEL": "another-model"})
    assert code == 2
    assert "step 'first' changed since run" in stderr
    assert "the pipeline's files are as they were when the run started" in stderr


def test_a_run_recorded_with_the_older_digest_still_resumes(tmp_path: Path) -> None:
    """Runs recorded before other files counted hold the pipeline file's digest alone: such a run resumes as before,
    and a refusal names the pipeline file only when it is what changed (the others were not recorded)."""
    pipeline = make_folder(tmp_path)
    older = hashlib.sha256(pipeline.read_bytes()).hexdigest()
    runs = [failed_run(tmp_path) for _ in range(3)]
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        conn.execute("UPDATE runs SET source_digest = ? WHERE parent_id IS NULL", (older,))

    code, _, stderr = resume(tmp_path, runs[0])  # unedited: resumes
    assert code == 0, stderr

    (tmp_path / "prompts" / "first.md").write_text("First, edited\n")  # not recorded: nothing named
    code, _, stderr = resume(tmp_path, runs[1])
    assert code == 2 and "step 'first' changed since run" in stderr
    assert "edited since" not in stderr and "as they were" not in stderr

    (tmp_path / "prompts" / "first.md").write_text("First: {{ 1 + 1 }}\n")
    pipeline.write_text(PIPELINE + "# edited\n")
    (tmp_path / "prompts" / "worker.md").write_text("You work hard.\n")
    code, _, stderr = resume(tmp_path, runs[2])
    assert code == 2 and "edited since the run started: p.yaml (the run is left as it was)" in stderr
