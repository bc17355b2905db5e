"""A run store that cannot be used ends every command with one line naming the file and what to do (exit 2, or 1 when it
stopped a run part-way, which stays resumable), never a traceback; read commands never create a store.

Real files and real SQLite throughout. The read-only and full-disk cases mount a small tmpfs when the tests run as
root (root ignores permission bits, so a read-only mount is the condition it cannot bypass), and are skipped where
mounting is not permitted; the read-only case uses permission bits when not root.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowctl.cli import main
from flowctl.interpreter.persistence.recorder import Recorder
from flowctl.interpreter.persistence.sqlite_store import SCHEMA_VERSION, SqliteRunStore
from flowctl.interpreter.persistence.store import RunRecord, RunStatus, StepStatus
from flowctl.interpreter.persistence.store_errors import StoreError
from flowctl.interpreter.redact import Redactor

PIPELINE = """\
flowctl: 1
name: greet
inputs:
  who: {type: string}
agents:
  writer: {instruction: You greet people.}
steps:
  - id: hello
    agent: writer
    prompt: "Greet {{ inputs.who }}."
outputs:
  greeting: "{{ steps.hello.output }}"
"""

FIXTURE = 'default: "Hello!"\n'


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def every_command(project: Path, store: Path) -> dict[str, Result]:
    """Each command that opens a run store, on `store`."""
    flags = ("--store", store)
    return {
        "run": invoke(
            "run", project / "greet.yaml", "-q", "--scripted", project / "greet.fixture.yaml", "-i", "who=A", *flags
        ),
        "resume": invoke("resume", "r-1", "-q", "--scripted", project / "greet.fixture.yaml", *flags),
        "runs": invoke("runs", *flags),
        "show": invoke("show", "r-1", *flags),
        "signal": invoke("signal", "r-1", "approved", *flags),
    }


def assert_refused(results: dict[str, Result], *phrases: str, code: int = 2) -> None:
    for command, result in results.items():
        assert result.exit_code == code, (command, result.output)
        assert "Traceback" not in result.output, command
        error_lines = [line for line in result.output.splitlines() if line.startswith("error: run store ")]
        assert len(error_lines) == 1, (command, result.output)
        for phrase in phrases:
            assert phrase in error_lines[0], (command, error_lines[0])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "greet.yaml").write_text(PIPELINE)
    (tmp_path / "greet.fixture.yaml").write_text(FIXTURE)
    return tmp_path


def real_store(project: Path, name: str = "runs.db", runs: int = 3) -> Path:
    """A store with a few runs, written by `flowctl run` (and checkpointed into the one file when closed)."""
    store = project / name
    for i in range(runs):
        result = invoke(
            "run", project / "greet.yaml", "-q", "--scripted", project / "greet.fixture.yaml", "--store", store,
            "-i", f"who={'x' * 3000}{i}",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    return store


# -- files that are not a usable store -----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated to 100 bytes", "truncated to half"])
def test_a_damaged_store_is_refused_by_every_command_and_left_as_it_is(project: Path, damage: str) -> None:
    store = real_store(project)
    data = store.read_bytes()
    damaged = {
        "garbage": b"these are not the runs you are looking for\n" * 100,
        "truncated to 100 bytes": data[:100],
        "truncated to half": data[: len(data) // 2],
    }[damage]
    store.write_bytes(damaged)
    phrase = "not an SQLite database" if damage == "garbage" else "damaged"
    assert_refused(every_command(project, store), str(store), phrase)
    assert store.read_bytes() == damaged


def test_another_programs_sqlite_database_is_refused_and_left_untouched(project: Path) -> None:
    other = project / "notes.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    assert_refused(every_command(project, other), "not a flowctl run store")
    with sqlite3.connect(other) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_a_store_written_by_a_newer_flowctl_says_upgrade(project: Path) -> None:
    store = real_store(project, runs=1)
    with sqlite3.connect(store) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert_refused(every_command(project, store), "written by a newer flowctl", "upgrade flowctl")


def test_a_store_path_through_a_regular_file_names_that_file(project: Path) -> None:
    (project / "notes.txt").write_text("a file, not a folder\n")
    assert_refused(every_command(project, project / "notes.txt" / "runs.db"), "notes.txt is a file, not a folder")
    assert_refused(every_command(project, project / "notes.txt" / "sub" / "runs.db"), "notes.txt is a file")


def test_a_folder_given_as_the_store_is_refused(project: Path) -> None:
    (project / "folder").mkdir()
    result = invoke("runs", "--store", project / "folder")
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.skipif(not Path("/proc/self/mounts").is_file(), reason="needs Linux's /proc")
def test_a_store_on_a_pseudo_file_system_is_refused(project: Path) -> None:
    result = every_command(project, Path("/proc/flowctl-test/runs.db"))["run"]
    assert_refused({"run": result}, "/proc is a proc pseudo file system")
    result = every_command(project, Path("/proc/self/status"))["runs"]
    assert_refused({"runs": result}, "/proc is a proc pseudo file system")


# -- read commands never create a store ----------------------------------------------------------------------------


def test_commands_that_need_a_store_say_there_is_none_and_create_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)  # the default store, .flowctl/runs.db in the working directory
    results = {
        "resume": invoke("resume", "r-1"),
        "runs": invoke("runs"),
        "show": invoke("show", "r-1"),
        "signal": invoke("signal", "r-1", "approved"),
    }
    assert_refused(results, "there is no run store here", "`flowctl run` creates it")
    assert not (project / ".flowctl").exists()
    missing = project / "missing" / "runs.db"
    results = {"runs": invoke("runs", "--store", missing), "show": invoke("show", "r-1", "--store", missing)}
    assert_refused(results, "there is no run store here")
    assert not (project / "missing").exists()


def downgrade(store: Path) -> None:
    """Make a store as schema version 2 wrote it (closed: the last connection folds the WAL into the file)."""
    conn = sqlite3.connect(store)
    try:
        conn.execute("DROP TRIGGER calls_keep_transcript")  # schema 7
        for column in ("path", "attempt", "started_at", "elapsed", "request", "ordinal"):
            conn.execute(f"ALTER TABLE calls DROP COLUMN {column}")
        conn.execute("DROP TABLE exchanges")  # schema 6
        conn.execute("DROP TABLE attempts")
        conn.execute("ALTER TABLE runs DROP COLUMN scripted")
        conn.execute("DROP INDEX signals_by_position")  # schema 5
        conn.execute("ALTER TABLE signals DROP COLUMN position")
        for column in ("claim_token", "heartbeat_at", "signals_sent"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        conn.execute("ALTER TABLE calls DROP COLUMN claim_token")
        conn.execute("ALTER TABLE steps DROP COLUMN claim_token")
        conn.execute("ALTER TABLE calls DROP COLUMN redacted")  # schema 3
        conn.execute("ALTER TABLE runs DROP COLUMN input_secrets")  # schema 4
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    finally:
        conn.close()


def test_a_store_from_an_older_flowctl_is_upgraded_by_a_read_command(project: Path) -> None:
    store = real_store(project, runs=1)
    downgrade(store)
    result = invoke("runs", "--store", store, "--output", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)) == 1
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# -- read-only stores ----------------------------------------------------------------------------------------------


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real small file system at `folder`, when this process may mount one (root), else the test is skipped."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@contextmanager
def read_only_store(project: Path, *, older: bool = False) -> Iterator[Path]:
    """A store with one run, in a folder nothing may write to: a read-only mount as root, permission bits otherwise.
    `older`: as flowctl's schema version 2 wrote it."""
    source = real_store(project, runs=1)
    if older:
        downgrade(source)
    if os.geteuid() == 0:
        with tmpfs(project / "ro", "4m") as folder:
            shutil.copy(source, folder / "runs.db")
            remount(folder, "ro")
            yield folder / "runs.db"
        return
    folder = project / "ro"
    folder.mkdir()
    shutil.copy(source, folder / "runs.db")
    (folder / "runs.db").chmod(0o444)
    folder.chmod(0o555)
    try:
        yield folder / "runs.db"
    finally:
        folder.chmod(0o755)


def test_a_read_only_store_can_be_read_but_not_run_into(project: Path) -> None:
    with read_only_store(project) as store:
        listed = invoke("runs", "--store", store, "--output", "json")
        assert listed.exit_code == 0, listed.output
        [run] = json.loads(listed.output)
        shown = invoke("show", run["run_id"], "--store", store)
        assert shown.exit_code == 0 and "✓ hello" in shown.output
        results = every_command(project, store)
        assert_refused({name: results[name] for name in ("run", "resume", "signal")}, str(store), "read-only")
        assert store.parent.joinpath("runs.db-wal").exists() is False


# -- a full disk -----------------------------------------------------------------------------------------------------


def fill(folder: Path) -> None:
    """Write a file until the file system has no space left."""
    with (folder / "filler").open("wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def test_a_full_disk_at_start_says_so_and_the_store_stays_readable(project: Path) -> None:
    with tmpfs(project / "small", "1m") as folder:
        shutil.copy(real_store(project, runs=1), folder / "runs.db")
        fill(folder)
        result = every_command(project, folder / "runs.db")["run"]
        assert_refused({"run": result}, "the disk is full", "free some space")
        listed = invoke("runs", "--store", folder / "runs.db", "--output", "json")
        assert listed.exit_code == 0 and len(json.loads(listed.output)) == 1
        result = every_command(project, folder / "new.db")["run"]
        assert_refused({"run": result}, "the disk is full")


TWO_STEPS = """\
flowctl: 1
name: two
agents:
  writer: {instruction: You write.}
steps:
  - id: small
    agent: writer
    prompt: small
  - id: big
    agent: writer
    prompt: big
outputs:
  size: "{{ steps.big.output | length }}"
"""


def test_a_disk_that_fills_mid_run_stops_the_run_which_resumes_once_space_returns(project: Path) -> None:
    (project / "two.yaml").write_text(TWO_STEPS)
    fixture = project / "two.fixture.yaml"
    big = "x" * 600_000  # more than the file system holds
    fixture.write_text(
        f"responses:\n  - agent: writer\n    prompt: small\n    reply: ok\n"
        f"  - agent: writer\n    prompt: big\n    reply: {big}\n"
    )
    with tmpfs(project / "small", "512k") as folder:
        store = folder / "runs.db"
        # a real process, which ends: `resume` takes over a run whose process is gone
        command = [sys.executable, "-c", "from flowctl.cli import main; main()", "run", str(project / "two.yaml")]
        done = subprocess.run([*command, "-q", "--scripted", str(fixture), "--store", str(store)], capture_output=True)
        stderr = done.stderr.decode()
        assert done.returncode == 1, stderr
        assert "Traceback" not in stderr and stderr.startswith(f"error: run store {store}: the disk is full"), stderr
        listed = json.loads(invoke("runs", "--store", store, "--output", "json").output)
        run_id = listed[0]["run_id"]
        assert listed[0]["status"] == "interrupted"  # the store says running; its process is gone
        assert f"resume it: flowctl resume {run_id} --store {store}" in stderr
        remount(folder, "size=8m")  # space returns
        resumed = invoke("resume", run_id, "-q", "--scripted", fixture, "--store", store, "--output", "json")
        assert resumed.exit_code == 0, resumed.output
        outcome = json.loads(resumed.output)
        assert outcome["status"] == "succeeded" and outcome["outputs"] == {"size": 600_000}


# -- at the store boundary: SQLite's own SQLITE_FULL (max_page_count), no mount needed -------------------------------


def test_sqlite_full_in_a_commit_is_a_store_error_naming_the_run_and_loses_nothing(tmp_path: Path) -> None:
    with SqliteRunStore(tmp_path / "runs.db") as store:
        recorder = Recorder(store, Redactor(), "here:1", background_delay=None)
        recorder.start_root(RunRecord("r-1", "demo", "demo.yaml", RunStatus.RUNNING, 1000.0, inputs={}))
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the real SQLite now answers SQLITE_FULL
        recorder.call_done("r-1", "k", "digest", {"text": "x" * 100_000})
        recorder.step_finished("r-1", "big", "agent", StepStatus.SUCCEEDED, 1000.0, 1, output="y" * 100_000)
        with pytest.raises(StoreError, match="the disk is full") as raised:
            recorder.commit()
        assert raised.value.run_id == "r-1" and raised.value.path == str(tmp_path / "runs.db")
        store._conn.execute("PRAGMA max_page_count = 1000000")  # space returns: nothing queued was lost
        recorder.commit()
        assert store.steps("r-1")[0].output == "y" * 100_000
        assert store.lookup_call("r-1", "k") is not None
        recorder.run_finished("r-1", RunStatus.SUCCEEDED)


def test_a_lone_surrogate_in_an_input_is_stored_and_read_back(project: Path) -> None:
    """JSON allows `"\\ud800"` (half a UTF-16 pair), which SQLite cannot store as UTF-8: it is kept as its escape."""
    (project / "inputs.json").write_text('{"who": "half \\ud800 a pair"}')
    store = project / "runs.db"
    fixture = project / "greet.fixture.yaml"
    result = invoke("run", project / "greet.yaml", "-q", "--scripted", fixture, "--inputs", project / "inputs.json",
                    "--store", store)  # fmt: skip
    assert result.exit_code == 0, result.output
    [run] = json.loads(invoke("runs", "--store", store, "--output", "json").output)
    assert run["inputs"] == {"who": "half \ud800 a pair"}


def test_a_store_path_the_system_refuses_is_named_with_the_reason(project: Path) -> None:
    (project / "loop.db").symlink_to(project / "loop.db")
    assert_refused(every_command(project, project / "loop.db"), "Too many levels of symbolic links")
    too_long = project / ("a" * 300)
    assert_refused(every_command(project, too_long / "runs.db"), "File name too long")
    assert_refused(every_command(project, Path(f"{too_long}.db")), "File name too long")


def test_a_read_only_store_from_an_older_flowctl_says_it_needs_upgrading(project: Path) -> None:
    with read_only_store(project, older=True) as store:
        result = invoke("runs", "--store", store)
        assert_refused({"runs": result}, "written by an older flowctl, and upgrading it needs write access")


def test_values_sqlite_cannot_bind_are_stored_not_lost(tmp_path: Path) -> None:
    """An integer past 64 bits (a server's usage numbers) or a lone surrogate reaches the grouped writes: they are
    stored (as a float, as an escape), not dropped with a traceback."""
    with SqliteRunStore(tmp_path / "runs.db") as store:
        recorder = Recorder(store, Redactor(), "here:1", background_delay=None)
        recorder.start_root(RunRecord("r-1", "demo", "demo.yaml", RunStatus.RUNNING, 1000.0, inputs={}))
        succeeded = StepStatus.SUCCEEDED
        recorder.step_finished("r-1", "a", "agent", succeeded, 1000.0, 1, output="\ud800", input_tokens=10**20)
        recorder.step_finished("r-1", "b", "agent", succeeded, 1000.0, 1, output_tokens=10**400)
        recorder.run_finished("r-1", RunStatus.SUCCEEDED, input_tokens=10**30)
        a, b = store.steps("r-1")
        assert (a.output, a.input_tokens, b.output_tokens) == ("\ud800", 1e20, float("inf"))
        assert store.get_run("r-1").input_tokens == 1e30  # type: ignore[union-attr]


def as_user_without_override(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`flowctl ARGS` in a real process that permission bits bind: not root, or root without the capabilities that
    bypass them (CAP_DAC_OVERRIDE and friends), via setpriv."""
    command = [sys.executable, "-c", "from flowctl.cli import main; main()", *map(str, args)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to drop root's permission override")
        caps = "-dac_override,-dac_read_search,-fowner"
        command = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    return subprocess.run(command, capture_output=True, text=True)


def test_permission_bits_of_a_read_only_folder_are_named_and_reading_still_works(project: Path) -> None:
    folder = project / "locked"
    folder.mkdir()
    shutil.copy(real_store(project, runs=1), folder / "runs.db")
    (folder / "runs.db").chmod(0o444)
    folder.chmod(0o555)
    try:
        probe = as_user_without_override("runs", "--store", folder / "runs.db", "--output", "json")
        if probe.returncode != 0 and "setpriv" in probe.stderr:
            pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.strip()}")
        assert probe.returncode == 0, probe.stderr
        assert len(json.loads(probe.stdout)) == 1
        for store, phrase in [
            (folder / "runs.db", "the store is read-only"),
            (folder / "new.db", "its folder is read-only to this user"),
        ]:
            done = as_user_without_override(
                "run", project / "greet.yaml", "-q", "--scripted", project / "greet.fixture.yaml", "-i", "who=A",
                "--store", store,
            )  # fmt: skip
            assert done.returncode == 2, done.stderr
            assert done.stderr.startswith(f"error: run store {store}: {phrase}"), done.stderr
            assert "Traceback" not in done.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["runs.db"]
    finally:
        folder.chmod(0o755)


def test_a_store_path_with_uri_characters_is_opened_by_every_command(project: Path) -> None:
    """resume, signal, runs and show open the store through an SQLite URI (to never create it): `#`, `?`, `%` and
    spaces in the path must be escaped, not read as URI syntax."""
    store = real_store(project, name="odd #1?%20 ünï/runs.db", runs=1)
    listed = invoke("runs", "--store", store, "--output", "json")
    assert listed.exit_code == 0, listed.output
    [run] = json.loads(listed.output)
    assert invoke("show", run["run_id"], "--store", store).exit_code == 0
    assert invoke("signal", run["run_id"], "approved", "--store", store).exit_code == 0


def test_a_store_locked_by_another_process_past_the_busy_timeout_says_so(tmp_path: Path) -> None:
    with SqliteRunStore(tmp_path / "runs.db") as store:
        claim = store.create_run(RunRecord("r-1", "demo", "demo.yaml", RunStatus.RUNNING, 1000.0), "{}", None, "x:1")
        store.release(claim)
        store._conn.execute("PRAGMA busy_timeout = 0")  # instead of waiting the 5 s the store allows
        other = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreError, match="another process has kept it locked") as raised:
                store.send_signal("r-1", "approved", None)
            assert raised.value.run_id is None  # no run of this process was stopped
        finally:
            other.close()
        assert store.send_signal("r-1", "approved", None) == 1
