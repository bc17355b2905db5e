"""A private PostgreSQL server for the tests, and a fresh database per test.

`.ci/run` starts one server for the whole run (`python -m tests.support.postgres start DIR` prints its URL, exported
as `FLOWCTL_TEST_PG`) and stops it at the end (`... stop DIR`). A developer may point `FLOWCTL_TEST_PG` at a server of
their own (a URL whose user may create databases). Without either, the `pg_server` fixture starts a private server
for the test process when PostgreSQL's programs are installed, and skips the PostgreSQL tests with the reason when
they are not — unless `FLOWCTL_REQUIRE_PG=1` (set by CI), which makes a missing server an error, not a skip.

The server is made for tests: `initdb --no-sync`, trust authentication on loopback only, a random free port, its
socket in its own folder, `fsync=off`. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user
(Debian's package creates it) through `runuser`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUPERUSER = "flowctl"


def pg_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: on PATH, else Debian's versioned folder (newest first)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def _version_key(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_server_user(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stderr.decode(errors='replace').strip()}")


def start(folder: Path, *, durable: bool = False) -> str:
    """Create a cluster in `folder` (which must not exist or be empty), start it, return its URL. `durable`: with
    PostgreSQL's own settings (fsync, synchronous commit), for benchmarks; made for tests otherwise (see the module)."""
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    data, sockets = folder / "data", folder / "socket"
    sockets.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    _run([str(binaries / "initdb"), "--no-sync", "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "-D", str(data)])
    port = _free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=300"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    _run([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start"])
    (folder / "url").write_text(url := f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres")
    return url


def stop(folder: Path) -> None:
    binaries = pg_bin()
    if binaries is None or not (folder / "data").exists():
        return
    subprocess.run(
        _as_server_user([str(binaries / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def with_database(server_url: str, name: str) -> str:
    """`server_url` with its database part replaced by `name`."""
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server for one test; dropped afterwards (connections to it are ended first)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str]) -> int:
    """`start DIR` (prints the URL) or `stop DIR`: for .ci/run, so that CI and the fixtures share one recipe."""
    if len(argv) != 2 or argv[0] not in {"start", "stop"}:
        print("usage: python -m tests.support.postgres start|stop DIR", file=sys.stderr)
        return 2
    folder = Path(argv[1])
    if argv[0] == "start":
        try:
            print(start(folder))
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
    else:
        stop(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
