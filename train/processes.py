"""Worker processes that training starts (a sweep's workers, the gate's forked fold workers) end
with the process that started them.

A worker busy in a run or a fold job only notices a dead parent when it next asks for work; after
a ``kill -9`` of its parent it would keep computing (and, in a sweep, writing, racing a rerun), and
a forked worker may never notice at all: its siblings hold the work queue's pipe open. One daemon
thread per worker watches the parent instead (a dead parent's children are re-parented, so
``getppid`` changes) and ends the worker at once.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_watched: tuple[int, int] | None = None  # (this process, the parent it watches), once watching


def die_with_parent(parent_pid: int, period: float = 0.25) -> None:
    """In a worker process: kill this process as soon as ``parent_pid`` is gone.

    Once per process (a forked child of a watching process watches afresh: threads do not survive
    fork); nothing in the parent itself."""
    global _watched
    if os.getpid() == parent_pid or (_watched is not None and _watched[0] == os.getpid()):
        return
    _watched = (os.getpid(), parent_pid)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(period)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:  # the parent died before this worker started
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


__all__ = ["die_with_parent"]
