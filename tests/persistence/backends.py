"""The run-store backends the conformance suite runs against, by name.

A `StoreFactory` stands for one fresh, empty store: `open()` gives a new handle on it each time (several handles on
one store stand for separate processes), `spec` is what a subprocess needs to open its own handle (`open_spec`),
`cli` names the store to the `flowctl` commands, and `persisted()` returns everything the store keeps, as bytes (to
prove that a secret never reached it).

Adding a backend (PostgreSQL for the scale-out) is one more entry in `BACKENDS` (a function making a factory for a
fresh database from the test's tmp_path) and one more case in `open_spec`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStore


def open_spec(spec: dict[str, Any], *, lease: float | None = None) -> RunStore:
    """A new handle on the store `spec` describes. `lease`: how long another host's owner counts as alive without a
    commit (None: the backend's default)."""
    if spec["backend"] == "sqlite":
        if lease is None:
            return SqliteRunStore(Path(spec["path"]))
        return SqliteRunStore(Path(spec["path"]), lease=lease)
    raise ValueError(f"unknown store backend {spec['backend']!r}")


@dataclass
class StoreFactory:
    backend: str
    spec: dict[str, Any]  # JSON-able: a subprocess opens its own handle from it (open_spec)
    cli: list[str]  # the options naming this store on flowctl's command line
    persisted: Callable[[], bytes]  # everything the store keeps, as bytes
    _handles: list[RunStore] = field(default_factory=list)

    def open(self, *, lease: float | None = None) -> RunStore:
        store = open_spec(self.spec, lease=lease)
        self._handles.append(store)
        return store

    @property
    def spec_json(self) -> str:
        return json.dumps(self.spec)

    def close(self) -> None:
        for store in self._handles:
            store.close()
        self._handles.clear()


def _sqlite(tmp_path: Path) -> StoreFactory:
    path = tmp_path / "store" / "runs.db"

    def persisted() -> bytes:  # the database and its write-ahead log (commits not yet checkpointed live there)
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(file.read_bytes() for file in files if file.exists())

    return StoreFactory("sqlite", {"backend": "sqlite", "path": str(path)}, ["--store", str(path)], persisted)


BACKENDS: dict[str, Callable[[Path], StoreFactory]] = {"sqlite": _sqlite}
