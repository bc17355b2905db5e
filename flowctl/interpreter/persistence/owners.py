"""Who runs a run: the owner id a process writes into the claims it takes (`host:pid`), and whether such an owner
is still alive as far as this host can tell."""

from __future__ import annotations

import os
import socket


def this_process() -> str:
    """The owner id of the runs this process runs: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def local_owner_alive(owner: str) -> bool | None:
    """Whether an owner on this host is alive (its process exists); None when the owner is another host's, which
    only that host could check (a store decides those by the claim's heartbeat)."""
    host, _, pid = owner.rpartition(":")
    if not pid.isdigit() or int(pid) <= 0:
        return False
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
