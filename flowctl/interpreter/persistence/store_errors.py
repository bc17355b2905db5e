"""Why a run store cannot be used, said once at the store boundary: `sqlite3` and `OSError` failures become a
`StoreError` naming the file, the problem and what to do, which the CLI prints as one line.

`StoreError` is deliberately not a `FlowctlError`: a store that cannot be written is not a step failure for retry or
`on_error` policies to absorb. It ends the run; the run stays `running` in the file with a dead owner, so
`flowctl resume` takes it over once the problem is fixed (see the durability contract in sqlite_store.py).

Only the error paths live here; nothing in this module runs per step.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from flowctl.interpreter.errors import InputError, PicklableError

if TYPE_CHECKING:  # imported when needed: the CLI imports this module for every command, sqlite3 costs ~3 ms
    import sqlite3

# How a command opens the store: `run` creates it (and its folder); `resume` and `signal` write to an existing one;
# `runs` and `show` only read, and neither of the last three ever creates a file.
StoreAccess = Literal["create", "write", "read"]

# SQLite primary result codes that describe the file or its environment, not a bug in flowctl
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 3, 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_PROTOCOL = 11, 13, 14, 15
_SQLITE_NOLFS, _SQLITE_AUTH, _SQLITE_NOTADB = 22, 23, 26

# file systems that hold no regular files (kernel views, device nodes): SQLite cannot keep a database there
_PSEUDO_FILE_SYSTEMS = frozenset(
    {
        "proc",
        "sysfs",
        "devpts",
        "devtmpfs",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "pstore",
        "bpf",
        "efivarfs",
        "fusectl",
        "binfmt_misc",
        "mqueue",
        "autofs",
        "nsfs",
    }
)

# free space below which a failed write is put down to a full disk: less than SQLite needs for a page and its WAL frame
_NEARLY_FULL = 64 * 1024

ELSEWHERE = "pass --store FILE to use another"


class StoreError(PicklableError):
    """A run store that cannot be used. `run_id`: the root run this process was running when it happened (that run
    stopped part-way and can be resumed once the problem is fixed)."""

    def __init__(self, path: str | Path, problem: str, advice: str, *, run_id: str | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.advice = advice
        self.run_id = run_id
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"run store {self.path}: {self.problem} — {self.advice}"


class RunBusy(InputError):
    """A run is still running in another live process: resuming it now would run it twice."""

    def __init__(self, run_id: str, owner: str) -> None:
        super().__init__(
            f"run {run_id!r} is still running (process {owner}); resuming it now would run it twice — "
            "wait for it, or stop it first (Ctrl-C, or kill that process)"
        )


class ClaimLost(PicklableError):
    """This process no longer holds the run's claim: another one took the run over (it thought this one gone). The
    run stops here without being finished; its new owner writes its outcome. Not a FlowctlError: no retry or
    `on_error` policy may absorb it."""

    def __init__(self, run_id: str, owner: str | None = None) -> None:
        super().__init__(
            f"run {run_id!r} was taken over by another process{f' ({owner})' if owner else ''}; this one stops "
            "without finishing it"
        )
        self.run_id = run_id
        self.owner = owner


class MissingStore(StoreError):
    """There is no run store where one was named (and a read or write command does not create one)."""


def missing_store(path: str | Path) -> StoreError:
    """A read or write command found no store: it says so instead of creating an empty one."""
    blocked = _path_blocker(Path(path))
    if blocked is not None:
        return StoreError(path, blocked, ELSEWHERE)
    return MissingStore(
        path,
        "there is no run store here (nothing has run with it yet)",
        f"`flowctl run` creates it, or {ELSEWHERE}",
    )


def newer_schema(path: str | Path, version: int, supported: int) -> StoreError:
    return StoreError(
        path,
        f"written by a newer flowctl (schema version {version}; this flowctl reads up to {supported})",
        f"upgrade flowctl, or {ELSEWHERE}",
    )


def foreign_database(path: str | Path) -> StoreError:
    return StoreError(
        path,
        "an SQLite database that is not a flowctl run store (it has tables of its own)",
        f"{ELSEWHERE} (flowctl leaves this one untouched)",
    )


def cannot_read_shared(exc: sqlite3.Error) -> bool:
    """SQLITE_CANTOPEN, SQLITE_IOERR or SQLITE_READONLY: SQLite could not open, create or set up the FILE-shm beside
    the file (its folder, the file system or the disk is read-only or full)."""
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_READONLY)


def from_exception(
    exc: BaseException, path: str | Path, access: StoreAccess, run_id: str | None = None
) -> StoreError | None:
    """The StoreError an `sqlite3.Error` or `OSError` means, or None for one that is a bug (let it surface)."""
    import sqlite3

    try:
        if isinstance(exc, sqlite3.Error):
            found = _from_sqlite(exc, Path(path), access)
        elif isinstance(exc, OSError):
            found = _from_os(exc, Path(path))
        else:
            return None
    except OSError:  # looking into why failed too: say what SQLite or the system said
        found = (f"cannot use it ({exc})", ELSEWHERE)
    if found is None:
        return None
    problem, advice = found
    return StoreError(path, problem, advice, run_id=run_id)


def _from_sqlite(exc: sqlite3.Error, path: Path, access: StoreAccess) -> tuple[str, str] | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    primary = code & 0xFF
    said = f"({exc})"
    if primary == _SQLITE_NOTADB:
        return "the file is not an SQLite database", f"move it away (`flowctl run` starts a new one), or {ELSEWHERE}"
    if primary == _SQLITE_CORRUPT:
        return (
            f"the database is damaged: truncated or overwritten {said}",
            f"restore it from a backup or move it away, or {ELSEWHERE}",
        )
    if primary == _SQLITE_FULL:
        return f"the disk is full {said}", "free some space and try again"
    if primary in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_AUTH):
        return (
            f"the store is read-only {said}",
            f"make the file and its folder writable (SQLite writes FILE-wal and FILE-shm beside it), or {ELSEWHERE}",
        )
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return (
            f"another process has kept it locked for too long {said}",
            "wait for that process to finish, or stop it, and try again",
        )
    if primary in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_PROTOCOL, _SQLITE_NOLFS):
        place = _pseudo_file_system(path)
        if place is not None:
            return place, "pass --store FILE on a real disk"
        if _disk_full(path):  # SQLite may report a write that found no space as an I/O error
            return f"the disk is full {said}", "free some space and try again"
    if primary == _SQLITE_CANTOPEN:
        return _cannot_open(path, access), ELSEWHERE
    if primary in (_SQLITE_IOERR, _SQLITE_PROTOCOL, _SQLITE_NOLFS):
        return f"the disk reported an error {said}", f"check the disk and the file, or {ELSEWHERE}"
    return None


def _from_os(exc: OSError, path: Path) -> tuple[str, str] | None:
    blocked = _path_blocker(path)
    if blocked is not None:
        return blocked, ELSEWHERE
    place = _pseudo_file_system(path)
    if place is not None:
        return place, "pass --store FILE on a real disk"
    reason = exc.strerror or str(exc)
    named = exc.filename is not None and len(str(exc.filename)) <= 200 and str(exc.filename) != str(path)
    where = f" ({exc.filename})" if named else ""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full ({reason}){where}", "free some space and try again"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot use it: {reason}{where}", f"make its folder writable, or {ELSEWHERE}"
    return f"cannot use it: {reason}{where}", ELSEWHERE


def stat_problem(path: Path) -> StoreError | None:
    """Before opening an existing store: none there (`missing_store`), or a path the system refuses (a name too
    long, a symbolic link loop, no permission); None when there is a file to open."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return missing_store(path)
    except OSError as exc:
        found = _from_os(exc, path)
        return StoreError(path, *found) if found else None
    return None


def _cannot_open(path: Path, access: StoreAccess) -> str:
    """SQLite's CANTOPEN says nothing of why; find out from the file system."""
    blocked = _path_blocker(path)
    if blocked is not None:
        return blocked
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            return "that is a folder, not a file"
    except FileNotFoundError:
        pass
    except OSError as exc:  # a name too long, a symbolic link loop
        return f"cannot use it: {exc.strerror or exc}"
    folder = path.parent
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return "it is on a read-only file system (SQLite also writes FILE-wal and FILE-shm beside it)"
    existed = os.path.lexists(path)
    problem = _open_problem(path, access)
    if problem is not None and problem.errno in (errno.EACCES, errno.EPERM):
        if not existed:
            return f"its folder is read-only to this user, so the store cannot be created ({problem.strerror})"
        return f"the store is read-only to this user ({problem.strerror})"
    if problem is None and access != "read" and not os.access(folder, os.W_OK):
        return "its folder is read-only to this user (SQLite writes FILE-wal and FILE-shm beside the file)"
    return f"SQLite cannot open it ({problem.strerror or problem})" if problem else "SQLite cannot open it"


def _open_problem(path: Path, access: StoreAccess) -> OSError | None:
    """What the operating system says when the file (or, to create it, its folder) is opened as SQLite would."""
    existed = os.path.lexists(path)
    flags = os.O_RDONLY if access == "read" else os.O_RDWR
    try:
        if not existed and access == "create":
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(handle)
            path.unlink()  # only a probe: leave nothing behind
            return None
        os.close(os.open(path, flags))
    except OSError as exc:
        return exc
    return None


def _path_blocker(path: Path) -> str | None:
    """A file standing where a folder of the path should be (`notes.txt/runs.db`), or a folder missing."""
    absolute = Path(os.path.abspath(path))
    for ancestor in reversed(absolute.parents):
        try:
            if ancestor.exists() and not ancestor.is_dir():
                return f"{_shown(ancestor, path)} is a file, not a folder"
        except OSError:
            return None
    return None


def _shown(ancestor: Path, given: Path) -> str:
    """An ancestor named as the user wrote the path: relative if they gave a relative one."""
    if given.is_absolute():
        return str(ancestor)
    try:
        return os.path.relpath(ancestor)
    except ValueError:
        return str(ancestor)


def _pseudo_file_system(path: Path) -> str | None:
    """`/proc is a proc pseudo file system, which cannot hold files`, from the mount table (Linux), or None."""
    mount = _mount_of(Path(os.path.abspath(path)))
    if mount is None or mount[1] not in _PSEUDO_FILE_SYSTEMS:
        return None
    return f"{mount[0]} is a {mount[1]} pseudo file system, which cannot hold files"


def _mount_of(path: Path) -> tuple[str, str] | None:
    """The mount point and file system type of the deepest mount containing `path`."""
    try:
        table = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    best: tuple[str, str] | None = None
    text = str(path)
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = text == point or text.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[2])
    return best


def _disk_full(path: Path) -> bool:
    """Whether the file system holding the store has (next to) no space left: SQLite reports a write that failed for
    want of space in FILE-shm as an I/O error, and some creations as CANTOPEN."""
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    if stats.f_blocks == 0 or stats.f_flag & os.ST_RDONLY:  # no blocks: a pseudo file system
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL
