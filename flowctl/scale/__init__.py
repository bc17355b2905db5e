"""Running pipelines on many worker processes that share one PostgreSQL database (`flowctl worker`, `submit`,
`workers`; docs/scale.md).

The queue (procrastinate's tables) carries run requests; flowctl's run store stays the single source of truth for
what a run has done, and the run's claim (its fencing token) is the only authority on who executes it. The modules:

- `database.py`: connections and this package's own tables (submitted sources, workers, shared slots), migrated in
  place; the queue's schema is procrastinate's.
- `sources.py`: a pipeline and the files it uses, stored by digest, and materialised again on a worker.
- `queue.py`: the procrastinate app, the run task's name and queue, deferring a run request.
- `worker.py`: one worker process: runs requests under claims, recovers stalled ones, drains on SIGTERM.
- `slots.py`: concurrency caps shared by every worker (leased slots in a table).

Imported only by the commands that need it (`flowctl.cli.workers`, and `resume` for a submitted run whose files
are not on this host): procrastinate and psycopg are the optional `scale` extra.
"""
