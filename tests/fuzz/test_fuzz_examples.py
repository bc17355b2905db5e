"""Fuzzing the whole tool with the inputs users actually write: the example pipelines, their scripted fixtures and
their test files, mutated by Hypothesis (structure-aware edits of the YAML tree, and raw text edits), then given to
`flowctl validate`, `flowctl run --scripted` and `flowctl test` as real commands.

The property: whatever the input, flowctl answers with diagnostics or a clear error and an exit code of 0, 1 or 2,
never a Python traceback. A run that does not end by itself (a mutated pipeline may wait for a signal that never
comes) must end cleanly on SIGTERM (exit 143) — so a hang is also checked, not just skipped.

The suite runs a few examples per file kind; a long run is
`FLOWCTL_FUZZ_EXAMPLES=2000 pytest tests/fuzz -p no:cacheprovider` (minutes), and a finding is printed with the
mutated text to reproduce it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
FLOWCTL = str(Path(sys.executable).parent / "flowctl")
EXAMPLES = int(os.environ.get("FLOWCTL_FUZZ_EXAMPLES", "8"))
# Generous: a mutated run that is still going after this long is treated as waiting forever and sent SIGTERM. The
# property holds either way (it must then end cleanly), so a slow machine changes which branch is taken, not the
# verdict.
PATIENCE_SECONDS = 60.0
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="FLOWCTL_FUZZ_EXAMPLES" not in os.environ,  # the suite is repeatable; a long run explores
    # each example is a few processes: a long run reports its first finding as found (the input is printed) rather
    # than spending minutes shrinking it
    phases=[Phase.explicit, Phase.generate] if "FLOWCTL_FUZZ_EXAMPLES" in os.environ else list(Phase),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

STEMS = sorted(p.stem for p in PIPELINES.glob("*.yaml") if not p.name.endswith((".fixture.yaml", ".test.yaml")))

# Values users (and hostile inputs) put where the examples have something sensible.
HOSTILE = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        "<<BIG-INT>>",  # replaced after dumping: 5,000 digits, past Python's int-from-text limit
        1e308,
        "",
        " ",
        "\u00a0",
        "a\u2028b",
        "f\u0435tch",
        "{{ loop.index }}",
        "{{ undefined_thing }}",
        "{{ range(10**9) | list }}",
        "{{ 'x' * 10**11 }}",
        "{{ 9**(9**9) }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% include 'x.yaml' %}",
        "{{ cycler.__init__ }}",
        "${NOT_CLOSED",
        "${HOME:default}",
        "../../etc/passwd",
        "/etc/passwd",
        "a\x00b",
        "x" * 300,
        "[" * 100 + "]" * 100,
        [],
        {},
        ["a", 1, None],
        {"type": "int"},
        {"x": {"y": {"z": [1, 2, {"w": "v"}]}}},
    ]
)
PLAIN = st.one_of(st.integers(-3, 3), st.text(max_size=12), st.booleans(), st.none())
VALUES = st.one_of(HOSTILE, PLAIN)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated_tree(draw: st.DrawFn, text: str) -> str:
    doc = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(doc, path), path[-1]
        action = draw(st.sampled_from(["replace", "delete", "duplicate", "rename"]))
        if action == "replace":
            parent[last] = draw(VALUES)
        elif action == "delete":
            del parent[last]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(last, parent[last])
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["on", "=", "pipeline", "set", "as", "for_each", "triggers", "x"]))] = (
                parent.pop(last)
            )
    dumped = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=10**6)
    return dumped.replace("<<BIG-INT>>", "1" * 5000)


@st.composite
def mutated_text(draw: st.DrawFn, text: str) -> str:
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if action == "insert":
            piece = draw(
                st.one_of(
                    st.sampled_from(["{{", "}}", "{%", ":", "- ", "\n  ", "\t", "'", "\u2028"]), st.text(max_size=4)
                )
            )
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        else:
            text = text[:at]
    return text


def mutation(text: str) -> st.SearchStrategy[str]:
    return st.one_of(mutated_tree(text), mutated_text(text))


def _command(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("OPENAI_API_KEY", None)
    process = subprocess.Popen(
        [FLOWCTL, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    try:
        out, err = process.communicate(timeout=PATIENCE_SECONDS)
    except subprocess.TimeoutExpired:  # waiting forever is allowed; ignoring SIGTERM is not
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=PATIENCE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"flowctl {' '.join(args)} ignored SIGTERM\n{err[-3000:]}")
        assert process.returncode == 143, (process.returncode, err[-3000:])
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _assert_clean(result: subprocess.CompletedProcess[str], mutated: str) -> None:
    problem = None
    if "Traceback (most recent call last)" in result.stderr:
        problem = "a traceback"
    elif result.returncode not in (0, 1, 2, 143):
        problem = f"exit code {result.returncode}"
    if problem:
        pytest.fail(
            f"{' '.join(map(str, result.args[1:]))}: {problem}\n--- input ---\n{mutated}\n--- stderr ---\n"
            f"{result.stderr[-4000:]}"
        )


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(PIPELINES, project)
    return project


def _exercise(project: Path, stem: str, kind: str, mutated: str) -> None:
    """The commands that read the mutated file; `run` and `test` only once the pipeline itself is valid (an invalid
    one gives them the same diagnostics `validate` just checked, at the cost of another process)."""
    run = ["run", f"{stem}.yaml", "--scripted", f"{stem}.fixture.yaml", "--quiet", "--store", str(project / "r.db")]
    if kind == "yaml":
        result = _command(["validate", f"{stem}.yaml"], project)
        _assert_clean(result, mutated)
        if result.returncode != 0:
            return
    if kind != "test.yaml":
        _assert_clean(_command(run, project), mutated)
    _assert_clean(_command(["test", f"{stem}.test.yaml"], project), mutated)


@pytest.mark.parametrize("kind", ["yaml", "fixture.yaml", "test.yaml"])
def test_mutated_examples_give_diagnostics_never_a_traceback(tmp_path: Path, kind: str) -> None:
    @SETTINGS
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        stem = data.draw(st.sampled_from(STEMS), label="example")
        mutated = data.draw(mutation((PIPELINES / f"{stem}.{kind}").read_text(encoding="utf-8")), label="mutated")
        project = _project(tmp_path)
        (project / f"{stem}.{kind}").write_text(mutated, encoding="utf-8", errors="surrogatepass")
        _exercise(project, stem, kind, mutated)

    check()
