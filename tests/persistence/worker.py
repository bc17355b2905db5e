"""Another process using the store: `python -m tests.persistence.worker SPEC ACTION ARGS…`, with its own handle
(SPEC: backends.open_spec). It says what it did in lines on stdout and waits for lines on stdin, so a test steps
it without sleeping, and kills it where it chooses.

Actions:
- `create RUN`: create the root run, owned by this process; say "claimed"; wait for stdin to close.
- `claim RUN`: say "ready"; wait for a line; claim the run; say "claimed" or "busy"; wait for stdin to close.
- `commit RUN`: create the run, commit a call and a step row; say "committed"; wait for stdin to close.
- `signals RUN PREFIX COUNT`: send COUNT signals named PREFIX-0…; say "sent".
- `recorder RUN`: a Recorder (no background commits) creates the run, records a call and makes it durable, queues a
  step row and an event without committing them; says "committed"; waits for stdin to close.
"""

from __future__ import annotations

import json
import sys

import anyio

from flowctl.interpreter.persistence.owners import this_process
from flowctl.interpreter.persistence.recorder import Recorder
from flowctl.interpreter.persistence.store import CallDone, RunStore, StepStarted
from flowctl.interpreter.persistence.store_errors import RunBusy
from flowctl.interpreter.redact import Redactor
from tests.persistence.backends import open_spec
from tests.persistence.helpers import create, root_record


def say(line: str) -> None:
    print(line, flush=True)


def hold() -> None:
    sys.stdin.read()  # until the test closes stdin (or kills this process)


def run_recorder(store: RunStore, run_id: str) -> None:
    async def main() -> None:
        recorder = Recorder(store, Redactor(), this_process(), background_delay=None)
        recorder.start_root(root_record(run_id))
        recorder.call_done(run_id, "a/llm#0", "digest", {"content": "paid for"})
        await recorder.durable()
        recorder.step_started(run_id, "b", "agent")
        recorder.event(run_id, "queued", None, "b")
        say("committed")
        hold()

    anyio.run(main)


def main(spec: str, action: str, *args: str) -> None:
    store = open_spec(json.loads(spec))
    if action == "create":
        create(store, args[0], this_process())
        say("claimed")
        hold()
    elif action == "claim":
        say("ready")
        sys.stdin.readline()
        try:
            store.claim(args[0], this_process())
        except RunBusy:
            say("busy")
        else:
            say("claimed")
        hold()
    elif action == "commit":
        claim = create(store, args[0], this_process())
        store.commit([CallDone(args[0], "a/llm#0", "digest", '{"content": "paid for"}', 1.0),
                      StepStarted(args[0], "a", "agent", 1.0)], claim)  # fmt: skip
        say("committed")
        hold()
    elif action == "signals":
        run_id, prefix, count = args
        for index in range(int(count)):
            store.send_signal(run_id, f"{prefix}-{index}", {"from": prefix, "index": index})
        say("sent")
    elif action == "recorder":
        run_recorder(store, args[0])
    else:
        raise SystemExit(f"unknown action {action!r}")
    store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
