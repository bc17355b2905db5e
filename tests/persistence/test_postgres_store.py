"""What only the PostgreSQL store has (the conformance suite holds it to the port): its URL's options, opening a
database that is not (yet) a store, several processes creating one at once, values PostgreSQL cannot take as they
are, and a password that is never shown — in errors, and in the commands flowctl prints for the user to run next.

A real server (the tests' private one, `pg_url`: a fresh database per test)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import anyio
import psycopg
import pytest
from click.testing import CliRunner

from flowctl import open_store
from flowctl.cli import main
from flowctl.interpreter.persistence.postgres_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from flowctl.interpreter.persistence.postgres_store import DEFAULT_LEASE, PostgresRunStore
from flowctl.interpreter.persistence.store import (
    CallDone,
    EventLogged,
    Exchanged,
    StepFinished,
    StepStarted,
    StepStatus,
)
from flowctl.interpreter.persistence.store_errors import StoreError
from tests.persistence.helpers import ALIVE, create, jtext

PIPELINE = """\
flowctl: 1
name: greet
agents:
  writer: {instruction: You greet people.}
steps:
  - {id: hello, agent: writer, prompt: "Greet Ada."}
"""


def with_password(url: str, password: str) -> str:
    """`url` with a password (the tests' server trusts loopback logins: it is accepted and ignored)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def test_the_urls_options_set_the_lease_and_the_pool_and_libpq_gets_the_rest(pg_url: str) -> None:
    with open_store(f"{pg_url}?lease=15&pool_size=2&application_name=flowctl-test") as store:
        assert isinstance(store, PostgresRunStore)
        assert store.lease == 15.0
        with psycopg.connect(pg_url) as conn:
            names = conn.execute("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
            assert "flowctl-test" in [name for (name,) in names]
    with open_store(pg_url) as store:
        assert store.lease == DEFAULT_LEASE
    with PostgresRunStore(pg_url, lease=0.5) as store:
        assert store.lease == 0.5
    for bad in ("lease=soon", "lease=0", "pool_size=-1"):
        with pytest.raises(StoreError, match=f"\\?{bad} is not a positive number"):
            open_store(f"{pg_url}?{bad}")


def test_libpq_options_with_spaces_reach_the_server(pg_url: str) -> None:
    """`?options=-c%20NAME%3DVALUE` (libpq's way to set a session setting) keeps its space: re-encoded as `+`, the
    server read `+NAME` and refused to connect."""
    with open_store(f"{pg_url}?lease=15&options=-c%20application_name%3Dspaced-options") as store:
        assert isinstance(store, PostgresRunStore)
        with psycopg.connect(pg_url) as conn:
            names = conn.execute("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
            assert "spaced-options" in [name for (name,) in names]


def test_a_database_without_a_store_is_refused_for_reading_and_left_as_it_was(pg_url: str) -> None:
    with pytest.raises(StoreError, match="there is no run store here"):
        open_store(pg_url, access="read")
    with pytest.raises(StoreError, match="there is no run store here"):
        open_store(pg_url, access="write")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    with open_store(pg_url) as store:  # "create" makes the tables
        assert store.schema_version == SCHEMA_VERSION
    with open_store(pg_url, access="read") as store:
        assert store.list_runs() == []


def test_another_programs_runs_table_is_left_alone(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER)")
    with pytest.raises(StoreError, match="a table `runs` that is not a flowctl run store's"):
        open_store(pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone() == (None,)


def test_a_store_written_by_a_newer_flowctl_is_refused(pg_url: str) -> None:
    open_store(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="written by a newer flowctl"):
        open_store(pg_url)


def test_a_version_1_database_is_upgraded_and_its_transcript_reads_on(pg_url: str) -> None:
    """Version 2 keeps the common model call's transcript entry in its call row; a version 1 database's entries (all
    in `exchanges`) read as before and merge with new ones by time, and a call recorded again keeps its entry."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement.encode())
        conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (1)")
        conn.execute("INSERT INTO runs (run_id, pipeline, file, status, started_at, inputs) "
                     "VALUES ('r-1', 'p', 'p.yaml', 'running', 1.0, '{}')")  # fmt: skip
        conn.execute("INSERT INTO exchanges (run_id, path, key, attempt, kind, started_at, elapsed, request, "
                     "response) VALUES ('r-1', 'a', 'a/llm#0', 1, 'model', 1.0, 1.0, '{}', '\"old\"')")  # fmt: skip
    with open_store(pg_url) as store:
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        claim = store.claim("r-1", ALIVE)
        for number, (answer, started) in enumerate((('"new"', 0.5), ('"again"', 5.0)), 1):
            entry = Exchanged("r-1", "b", "b/llm#0", 1, "model", started, 1.0, "{}", answer, None, number)
            store.commit([CallDone("r-1", "b/llm#0", "d", answer, started + 1.0, transcript=entry)], claim)
        assert [(e.seq, e.key, e.response) for e in store.exchanges("r-1")] == [
            (1, "b/llm#0", "new"), (2, "a/llm#0", "old"), (3, "b/llm#0", "again")]  # fmt: skip


def test_a_reader_that_cannot_upgrade_an_older_database_is_told_why(pg_url: str) -> None:
    """Opening a database of an older schema upgrades it, which a user that may only read cannot do: it is told the
    database is from an older flowctl and who can upgrade it, not only the server's refusal."""
    role = f"reader_{uuid.uuid4().hex[:12]}"  # roles belong to the whole server
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement.encode())
        conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (1)")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    try:
        scheme, rest = pg_url.split("://", 1)
        reader = f"{scheme}://{role}@{rest.split('@', 1)[1]}"
        with pytest.raises(StoreError, match="written by an older flowctl") as refused:
            open_store(reader, access="read")
        assert "as the user that owns its tables" in str(refused.value)
        with open_store(pg_url, access="read") as store:  # its owner upgrades it
            assert store.schema_version == SCHEMA_VERSION
        with open_store(reader, access="read") as store:  # then the reader reads it
            assert store.list_runs() == []
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_processes_creating_one_store_at_once_create_it_once(pg_url: str) -> None:
    opened: list[PostgresRunStore] = []
    failed: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PostgresRunStore(pg_url))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    for store in opened:
        assert store.schema_version == SCHEMA_VERSION
        store.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {VERSION_TABLE}").fetchone() == (1,)


def test_values_postgresql_cannot_take_as_they_are_are_stored_as_their_escapes(pg_url: str) -> None:
    with open_store(pg_url) as store:
        claim = create(store)
        odd = "a\x00b\ud800c"  # NUL, and a lone surrogate (undecodable command-line bytes)
        store.commit([StepStarted("r-1", odd, "agent", 1.0),
                      EventLogged("r-1", odd, jtext({"text": odd}), "system", 1.0),
                      CallDone("r-1", "k", "d", json.dumps({"content": odd}), 1.0),
                      StepFinished("r-1", "big", "agent", StepStatus.SUCCEEDED, 1.0, 2.0, 1, None, None, 2**70, 1)],
                     claim)  # fmt: skip
        steps = {step.path: step for step in store.steps("r-1")}
        assert set(steps) == {"a\\u0000b\\ud800c", "big"}
        assert steps["big"].input_tokens == 2**63 - 1  # as big as a 64-bit integer goes
        [event] = store.events("r-1")
        assert event.data == {"text": odd}  # JSON text: read back as the same characters
        call = store.lookup_call("r-1", "k")
        assert call is not None and call.result == {"content": odd}
        assert store.get_run("r-1\udcff") is None  # an undecodable id in a read: looked up, not an error


def test_a_server_that_cannot_be_reached_is_one_line_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://bob:hunter2@127.0.0.1:{port}/flowctl?connect_timeout=5"
    for args in (["runs"], ["show", "r-1"], ["signal", "r-1", "go"], ["resume", "r-1"]):
        result = CliRunner().invoke(main, [*args, "--store", url], catch_exceptions=False)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: run store postgresql://bob:***@127.0.0.1:{port}/flowctl")
        assert "cannot reach the server" in result.output and result.output.count("\n") == 1
        assert "hunter2" not in result.output


def test_a_database_that_does_not_exist_is_said_so(pg_url: str) -> None:
    url = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(StoreError, match=r"no such database .* — create it \(createdb NAME\)"):
        open_store(url)


def test_the_commands_flowctl_prints_never_show_the_password(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "f.yaml").write_text("responses:\n  - {agent: writer, reply: {error: auth}}\n")
    url = with_password(pg_url, "hunter2")
    args = ["run", str(tmp_path / "p.yaml"), "--scripted", str(tmp_path / "f.yaml"), "--store", url]
    failed = CliRunner().invoke(main, args, catch_exceptions=False)
    assert failed.exit_code == 1
    assert "flowctl resume r-" in failed.output and ":***@" in failed.output
    assert "hunter2" not in failed.output


def test_flowctl_store_in_the_environment_names_a_postgresql_store(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "f.yaml").write_text("default: Hello Ada!\n")
    env = {"FLOWCTL_STORE": pg_url}
    ran = CliRunner().invoke(main, ["run", str(tmp_path / "p.yaml"), "--scripted", str(tmp_path / "f.yaml"), "-q"],
                             env=env, catch_exceptions=False)  # fmt: skip
    assert ran.exit_code == 0, ran.output
    listed = CliRunner().invoke(main, ["runs", "--output", "json"], env=env, catch_exceptions=False)
    assert [run["status"] for run in json.loads(listed.output)] == ["succeeded"]
    assert not (tmp_path / ".flowctl").exists()


def test_without_psycopg_a_postgresql_store_names_the_extra_to_install() -> None:
    probe = (
        "import sys; sys.modules['psycopg'] = None\n"  # as if psycopg were not installed
        "from flowctl import open_store\n"
        "from flowctl.interpreter.persistence.store_errors import StoreError\n"
        "try:\n    open_store('postgresql://bob:hunter2@db/flowctl')\n"
        "except StoreError as exc:\n    print(exc)\n"
    )
    said = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "psycopg, which is not installed" in said and "pip install 'flowctl-agents[postgres]'" in said
    assert "hunter2" not in said


def test_checking_a_pipeline_imports_no_postgresql_driver(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    probe = "import sys; from flowctl.cli import main\n" \
        "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit:\n    pass\n" \
        "print([name for name in sys.modules if name.startswith('psycopg')])"  # fmt: skip
    said = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "p.yaml")], capture_output=True, text=True)
    assert said.stdout.strip().splitlines()[-1] == "[]", said.stderr


def test_connections_the_server_dropped_are_replaced_for_reads_and_heartbeats(pg_url: str) -> None:
    with open_store(f"{pg_url}?pool_size=1") as store:
        claim = create(store)
        store.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)
        with psycopg.connect(pg_url, autocommit=True) as admin:  # as a server restart or an idle timeout would
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        assert ended and all(done for (done,) in ended)
        assert [step.path for step in store.steps("r-1")] == ["a"]  # a read goes again on a new connection
        for _ in ended:  # every pooled connection was dropped: each is found out and replaced in turn
            store.commit([], claim)  # a heartbeat too
        store.commit([StepStarted("r-1", "b", "agent", 1.0)], claim)
        assert [step.path for step in store.steps("r-1")] == ["a", "b"]


def test_a_commit_on_a_dropped_connection_names_the_run_it_stopped(pg_url: str) -> None:
    with open_store(f"{pg_url}?pool_size=1") as store:
        create(store)
        claim = store.claim("r-1", ALIVE)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip
        with pytest.raises(StoreError) as stopped:
            store.commit([StepStarted("r-1", "a", "agent", 1.0), EventLogged("r-1", "e", None, "system", 1.0)], claim)
        assert stopped.value.run_id == "r-1" and "cannot reach the server" in stopped.value.problem
        store.commit([StepStarted("r-1", "a", "agent", 1.0)], claim)  # the store goes on with a new connection
        assert [step.path for step in store.steps("r-1")] == ["a"] and store.events("r-1") == []


def test_a_lone_call_and_a_batch_record_a_call_alike(pg_url: str) -> None:
    with open_store(pg_url) as store:
        claim = create(store)
        call = CallDone("r-1", "k", "d", json.dumps({"content": "x"}), 5.0, masked=True)
        store.commit([call], claim)  # one statement (postgres_schema.FENCED_CALL)
        alone = store.lookup_call("r-1", "k")
        store.commit([CallDone("r-1", "k", "other", "{}", 1.0)], claim)
        store.commit([call, EventLogged("r-1", "e", None, "system", 1.0)], claim)  # the pipelined batch
        assert store.lookup_call("r-1", "k") == alone
        with pytest.raises(ValueError, match="a row of an unknown run"):
            store.commit([CallDone("r-1/missing", "k", "d", "{}", 1.0)], claim)


# -- signals wake a waiting run (LISTEN/NOTIFY) ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_committed_signal_wakes_the_run_it_is_for(pg_url: str) -> None:
    with PostgresRunStore(pg_url) as store, PostgresRunStore(pg_url) as sender:
        create(store)
        create(store, "r-2")
        first, second = await store.signal_notices("r-1"), await store.signal_notices("r-2")
        try:
            assert _listening(pg_url) == 1  # the runs of a store share one listening connection
            await anyio.to_thread.run_sync(sender.send_signal, "r-2", "go", None)
            assert await second.wait(120) is True  # woken by the notice: the timeout is a safety net
            assert await first.wait(0.5) is False  # another run's signal is passed over
            await anyio.to_thread.run_sync(sender.send_signal, "r-1", "go", {"by": "ann"})
            assert await first.wait(120) is True
            sender.send_signal("r-1", "again", None)  # between two waits: kept for the next
            assert await first.wait(120) is True
        finally:
            await first.aclose()
            await second.aclose()
        assert _listening(pg_url) == 0  # the last run to leave closed it


@pytest.mark.anyio
async def test_a_dropped_listening_connection_is_a_store_error_and_the_next_run_listens_anew(pg_url: str) -> None:
    with PostgresRunStore(pg_url) as store, PostgresRunStore(pg_url) as sender:
        create(store)
        notices = await store.signal_notices("r-1")
        try:
            with psycopg.connect(pg_url, autocommit=True) as admin:  # as a server restart would
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE datname = current_database() AND query LIKE 'LISTEN %%'")  # fmt: skip
            with pytest.raises(StoreError, match="server"):
                await notices.wait(120)
        finally:
            await notices.aclose()
        again = await store.signal_notices("r-1")
        try:
            await anyio.to_thread.run_sync(sender.send_signal, "r-1", "go", None)
            assert await again.wait(120) is True
        finally:
            await again.aclose()


WAITING = """\
flowctl: 1
name: waiting
steps:
  - id: approval
    wait: {event: go, timeout: 10m}
outputs:
  by: "{{ steps.approval.output.by }}"
"""


def _listening(url: str) -> int:
    """Connections of this database listening for signals."""
    with psycopg.connect(url, autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'"
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def test_a_waiting_run_listens_for_its_signals_and_stops_listening_when_it_ends(pg_url: str, tmp_path: Path) -> None:
    from tests.persistence.helpers import poll

    (tmp_path / "waiting.yaml").write_text(WAITING)
    flowctl = str(Path(sys.executable).with_name("flowctl"))
    run = subprocess.Popen([flowctl, "run", "waiting.yaml", "--store", pg_url, "-q", "--output", "json"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        with open_store(pg_url) as store:
            poll(lambda: run.poll() is not None or _listening(pg_url) == 1, what="the run listening")
            assert run.poll() is None, run.communicate()
            [record] = store.list_runs()
            store.send_signal(record.run_id, "go", {"by": "ann"})
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert json.loads(out)["outputs"] == {"by": "ann"}
        poll(lambda: _listening(pg_url) == 0, what="the listening connection closed")
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=30)
