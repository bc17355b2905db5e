"""Which run store a command uses: `--store`, else FLOWCTL_STORE, else `.flowctl/runs.db`; each a path or a URL
(persistence/locate.py). A location flowctl does not accept is one line and exit 2, never a traceback.

Real files and real SQLite throughout; the CLI through click's CliRunner, and once through a real process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

import flowctl
from flowctl.cli import main
from flowctl.interpreter.persistence.ids import new_run_id
from flowctl.interpreter.persistence.locate import MEMORY, default_store_path, open_store, sqlite_location
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunFinished, RunRecord, RunStatus
from flowctl.interpreter.persistence.store_errors import StoreError

PIPELINE = """\
flowctl: 1
name: greet
agents:
  writer: {instruction: You greet people.}
steps:
  - id: hello
    agent: writer
    prompt: "Greet someone."
outputs:
  greeting: "{{ steps.hello.output }}"
"""

ACCEPTED = (
    "use a file path, sqlite:///relative/path, sqlite:////absolute/path, :memory: or postgresql://user@host/database"
)


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "greet.yaml").write_text(PIPELINE)
    (tmp_path / "greet.fixture.yaml").write_text('default: "Hello!"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_greet(*store_args: str | Path, env: dict[str, str] | None = None) -> str:
    """`flowctl run greet.yaml` offline: the run id it printed."""
    result = invoke(
        "run", "greet.yaml", "-q", "--scripted", "greet.fixture.yaml", "--output", "json", *store_args, env=env
    )
    assert result.exit_code == 0, result.output
    run_id = result.output.split('"run_id": "', 1)[1].split('"', 1)[0]
    return run_id


def stored_runs(path: Path) -> list[str]:
    with SqliteRunStore(path, access="read") as store:
        return [r.run_id for r in store.list_runs()]


# -- the forms accepted ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("runs.db", Path("runs.db")),
        ("../shared/runs.db", Path("../shared/runs.db")),
        ("/var/lib/flowctl/runs.db", Path("/var/lib/flowctl/runs.db")),
        ("a:b.db", Path("a:b.db")),  # a colon alone does not make a URL
        ("sqlite:///runs.db", Path("runs.db")),
        ("sqlite:///sub/runs.db", Path("sub/runs.db")),
        ("sqlite:////var/lib/flowctl/runs.db", Path("/var/lib/flowctl/runs.db")),
        ("SQLite:///runs.db", Path("runs.db")),
        ("sqlite:///%41 b.db", Path("%41 b.db")),  # as written: no %-decoding
        (":memory:", MEMORY),
        ("sqlite:///:memory:", MEMORY),
        (Path("sqlite:///x.db"), Path("sqlite:///x.db")),  # a Path is always a path
    ],
)
def test_the_accepted_forms_name_these_files(url: str | Path, location: Path | str) -> None:
    assert sqlite_location(url) == location


@given(st.text(st.characters(codec="utf-8", exclude_characters=":?#\x00"), min_size=1))
def test_any_path_is_a_path_and_sqlite_three_slashes_names_it_relative_to_here(path: str) -> None:
    assert sqlite_location(path) == Path(path)
    assert sqlite_location("sqlite:///" + path) == Path(path)
    assert sqlite_location("sqlite:////" + path) == Path("/" + path)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u@db/runs", "flowctl has no mysql:// run stores"),
        ("file:///tmp/runs.db", "flowctl has no file:// run stores"),
        ("sqlite:runs.db", "sqlite:///runs.db for the path runs.db"),
        ("sqlite:/tmp/runs.db", "sqlite:////tmp/runs.db for the path /tmp/runs.db"),
        ("sqlite://db.example.com/runs.db", "names a host"),
        ("sqlite://", "names no file"),  # SQLAlchemy's in-memory store; also what `sqlite://$UNSET` becomes
        ("sqlite:///", "names no file"),
        ("sqlite:///runs.db?mode=ro", "options in a store URL"),
        ("", "an empty store location"),
        ("postgresql:db/flowctl", "a PostgreSQL URL starts postgresql://"),
        ("postgres:/db", "a PostgreSQL URL starts postgresql://"),
    ],
)
def test_other_locations_are_refused_naming_the_accepted_forms(url: str, problem: str) -> None:
    with pytest.raises(StoreError) as refused:
        sqlite_location(url)
    assert problem in str(refused.value)
    assert str(refused.value).endswith(ACCEPTED)


def test_a_postgresql_url_is_not_an_sqlite_location_and_is_not_repeated_with_its_password() -> None:
    with pytest.raises(StoreError) as refused:
        sqlite_location("postgresql://bob:hunter2@db:5432/flowctl?sslmode=require&password=hunter3")
    message = str(refused.value)
    assert "hunter" not in message
    assert "postgresql://bob:***@db:5432/flowctl?sslmode=require&password=***: " in message
    assert "a PostgreSQL database, not an SQLite file" in message


# -- embedding -------------------------------------------------------------------------------------------------------


def test_open_store_is_the_public_entry_point_and_opens_what_the_url_names(tmp_path: Path) -> None:
    assert flowctl.open_store is open_store
    with open_store(f"sqlite:///{tmp_path}/a.db") as store:  # sqlite:/// and an absolute path: four slashes
        assert store.list_runs() == []
    assert (tmp_path / "a.db").is_file()
    with open_store(tmp_path / "a.db", access="read") as store:
        assert store.list_runs() == []
    with open_store(":memory:") as store:
        assert store.path == MEMORY
    with pytest.raises(StoreError, match="there is no run store here"):
        open_store(tmp_path / "b.db", access="read")
    assert not (tmp_path / "b.db").exists()


# -- the CLI ---------------------------------------------------------------------------------------------------------


def test_store_url_and_env_var_pick_the_store_and_store_wins_over_the_env_var(project: Path) -> None:
    default = project / ".flowctl" / "runs.db"
    assert default_store_path() == default
    first = run_greet()
    assert stored_runs(default) == [first]

    second = run_greet("--store", "sqlite:///relative.db")
    assert stored_runs(project / "relative.db") == [second]

    env = {"FLOWCTL_STORE": f"sqlite:///{project}/from-env.db"}
    third = run_greet(env=env)
    assert stored_runs(project / "from-env.db") == [third]
    fourth = run_greet("--store", project / "flag.db", env=env)
    assert stored_runs(project / "flag.db") == [fourth]
    assert stored_runs(project / "from-env.db") == [third]  # --store won
    assert stored_runs(default) == [first]

    listed = invoke("runs", env=env)
    assert listed.exit_code == 0 and third in listed.output and first not in listed.output
    shown = invoke("show", third, env={"FLOWCTL_STORE": "from-env.db"})
    assert shown.exit_code == 0, shown.output
    assert invoke("show", fourth, "--store", f"sqlite:///{project / 'flag.db'}").exit_code == 0
    assert invoke("runs", env={"FLOWCTL_STORE": ""}).output.startswith(first)  # empty: unset, the default


@pytest.mark.parametrize("url", ["mysql://u@db/runs", "sqlite:runs.db", "postgres:/db/flowctl", ""])
def test_a_location_flowctl_does_not_accept_is_one_line_and_exit_2_for_every_command(project: Path, url: str) -> None:
    flags = ("--store", url)
    results = {
        "run": invoke("run", "greet.yaml", "-q", "--scripted", "greet.fixture.yaml", *flags),
        "resume": invoke("resume", "r-1", *flags),
        "runs": invoke("runs", *flags),
        "show": invoke("show", "r-1", *flags),
        "signal": invoke("signal", "r-1", "approved", *flags),
    }
    for command, result in results.items():
        assert result.exit_code == 2, (command, result.output)
        assert result.output.count("\n") == 1 and result.output.startswith("error: run store "), result.output
        assert ACCEPTED in result.output and "hunter2" not in result.output
    assert sorted(os.listdir(project)) == ["greet.fixture.yaml", "greet.yaml"]  # nothing created


def test_a_bad_env_var_is_said_to_come_from_there_and_a_folder_is_not_a_store(project: Path) -> None:
    result = invoke("runs", env={"FLOWCTL_STORE": "sqlite://"})
    assert result.exit_code == 2
    assert result.output == f"error: run store sqlite:// (from FLOWCTL_STORE): names no file — {ACCEPTED}\n"
    missing = invoke("runs", env={"FLOWCTL_STORE": "nothing-here.db"})
    assert (
        missing.exit_code == 2 and "nothing-here.db (from FLOWCTL_STORE): there is no run store here" in missing.output
    )
    (project / "runs").mkdir()
    for store in ("runs", "sqlite:///runs"):
        folder = invoke("run", "greet.yaml", "-q", "--scripted", "greet.fixture.yaml", "--store", store)
        assert folder.exit_code == 2
        assert folder.output == "error: run store runs: a folder, not a file — name a file in it (runs/runs.db)\n"


def test_help_names_the_env_var_and_the_forms() -> None:
    for command in ("run", "resume", "runs", "show", "signal"):
        text = " ".join(invoke(command, "--help").output.split())
        assert "--store FILE|URL" in text and "[env var: FLOWCTL_STORE]" in text, command
        assert "sqlite:////absolute/path, :memory: or postgresql://user@host/db" in text, command


def test_the_env_var_in_a_real_process(project: Path) -> None:
    run_id = run_greet("--store", "env.db")
    env = {**os.environ, "FLOWCTL_STORE": "sqlite:///env.db"}
    listed = subprocess.run([sys.executable, "-m", "flowctl", "runs"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.startswith(run_id), listed
    env["FLOWCTL_STORE"] = "redis://cache/0"
    refused = subprocess.run([sys.executable, "-m", "flowctl", "runs"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2
    assert (
        refused.stderr
        == f"error: run store redis://cache/0 (from FLOWCTL_STORE): flowctl has no redis:// run stores — {ACCEPTED}\n"
    )


def test_runs_with_ids_of_the_old_format_are_listed_in_line_and_shown(project: Path) -> None:
    """A store written before ULID run ids keeps its `r-YYYYMMDD-HHMMSS-xxxxxx` ids beside the new, longer ones."""
    old, new = "r-20261124-072635-368a5b", new_run_id()
    with SqliteRunStore(project / "mixed.db") as store:
        for run_id, started in ((old, 1.0), (new, 2.0)):
            claim = store.create_run(
                RunRecord(run_id, "greet", "greet.yaml", RunStatus.RUNNING, started), "{}", None, "x:1"
            )
            store.commit([RunFinished(run_id, RunStatus.SUCCEEDED, started + 1, None, None, 0, 0, 0.0)], claim)
    lines = invoke("runs", "--store", "mixed.db").output.splitlines()
    assert [line.split()[0] for line in lines] == [new, old]
    assert len({line.index("succeeded") for line in lines}) == 1  # the columns line up
    for run_id in (old, new):
        assert invoke("show", run_id, "--store", "mixed.db").output.startswith(f"{run_id}  greet")
