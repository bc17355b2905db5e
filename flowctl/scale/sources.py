"""What a submitted run executes: the pipeline file and every file it uses (child pipelines, scripted models'
fixtures), stored by content digest in the queue's database, so that workers need no shared filesystem.

A submission is a manifest (`{"root": "review.yaml", "files": {"review.yaml": "<sha256>", "lib/child.yaml": …}}`,
paths relative to the folder that holds them all) stored as a blob itself; its digest names the submission. A worker
materialises a submission into a folder named by that digest under its cache (written once, then only read), so it
runs exactly the submitted text, and `flowctl resume` on another host can do the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from flowctl.dsl import ir

CACHE_ENV = "FLOWCTL_SUBMISSIONS"  # where workers materialise submissions (default: a folder in the temp dir)


@dataclass(frozen=True, slots=True)
class Submission:
    digest: str  # of the manifest
    root: str  # the pipeline file, relative to the manifest's folder
    files: dict[str, bytes]  # relative path → content


def digest_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def files_of(graph: ir.Graph, sources: dict[str, str]) -> dict[Path, bytes]:
    """The files a compiled pipeline uses: its sources (the front end's resolved paths → text) and the fixtures its
    scripted models name."""
    files = {Path(path): text.encode("utf-8") for path, text in sources.items()}
    for model in _all_models(graph):
        if model.provider == "scripted" and model.fixture:
            fixture = (Path(model.span.file).parent / model.fixture).resolve()
            if fixture.is_file():
                files[fixture] = fixture.read_bytes()
    return files


def _all_models(graph: ir.Graph) -> list[ir.ModelDef]:
    models = list(graph.models.values())
    for child in graph.children.values():
        models.extend(_all_models(child))
    return models


def pack(root: Path, files: dict[Path, bytes]) -> Submission:
    """A submission of `files` (absolute paths, `root` among them), relative to the deepest folder holding them all."""
    base = Path(os.path.commonpath([str(p.parent) for p in files]))
    relative = {p.relative_to(base).as_posix(): body for p, body in files.items()}
    manifest = _manifest(root.relative_to(base).as_posix(), relative)
    return Submission(digest_of(manifest), root.relative_to(base).as_posix(), relative)


def _manifest(root: str, files: dict[str, bytes]) -> bytes:
    listing = {path: digest_of(body) for path, body in sorted(files.items())}
    return json.dumps({"root": root, "files": listing}, sort_keys=True).encode("utf-8")


def store(conn: psycopg.Connection[Any], submission: Submission) -> None:
    """Keep the submission's files and manifest (each once, by digest)."""
    blobs = [(digest_of(body), body) for body in submission.files.values()]
    blobs.append((submission.digest, _manifest(submission.root, submission.files)))
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO flowctl_scale_blobs (digest, body) VALUES (%s, %s) ON CONFLICT (digest) DO NOTHING", blobs
        )


def load(conn: psycopg.Connection[Any], digest: str) -> Submission:
    """The submission `digest` names, with its files checked against their digests (KeyError when unknown)."""
    manifest = _blob(conn, digest)
    listing = json.loads(manifest)
    files = {}
    for path, file_digest in listing["files"].items():
        body = _blob(conn, file_digest)
        files[path] = body
    return Submission(digest, listing["root"], files)


def _blob(conn: psycopg.Connection[Any], digest: str) -> bytes:
    row = conn.execute("SELECT body FROM flowctl_scale_blobs WHERE digest = %s", (digest,)).fetchone()
    if row is None:
        raise KeyError(f"no stored file with digest {digest[:12]}…")
    body = bytes(row[0])
    if digest_of(body) != digest:
        raise ValueError(f"the stored file {digest[:12]}… does not match its digest")
    return body


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "flowctl-submissions")


def materialise(submission: Submission, cache: Path | None = None) -> Path:
    """The submission's root file on disk: its folder under the cache, written once (atomically, by renaming a
    complete temporary folder into place), reused as it is afterwards."""
    folder = (cache or cache_folder()) / submission.digest
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{submission.digest[:12]}-", dir=folder.parent))
        for relative, body in submission.files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        try:
            staging.rename(folder)
        except OSError:  # another process put it there first: theirs is the same content
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return folder / submission.root


def fetch_to_disk(conn: psycopg.Connection[Any], digest: str) -> Path:
    return materialise(load(conn, digest))
