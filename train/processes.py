"""How a training process conducts itself: the memory it keeps, and workers that end with their parent.

**Freed memory stays in the process** (:func:`keep_freed_memory_in_the_process`, called by every
run, :func:`train.run.train_run`): glibc's allocator gives the buffers of a training step back to
the kernel when they are freed and maps them again at the next step. The heads are small, so that
churn is a large share of a step: a `trs` run at MTL-AQA size took 2.7 million page faults and 10 s
of system time, and a Dask worker (which trains in a thread, where it is worse) took 1.7x as long
as a joblib process. Fixed thresholds keep those buffers in the heap (``/usr/bin/time`` around
``pipeline.py train`` on bench/bench_train_time.py's cache: 0.3 million faults, 1.9 s of system
time, the run 4-7 s shorter; BENCHMARKS.md). Only memory kept for reuse
changes, never a number.

**Workers end with their parent** (:func:`die_with_parent`): a sweep's workers and the gate's
forked fold workers.

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
_allocator_tuned = False

# glibc mallopt parameters: bytes of free memory at the top of the heap before it is given back,
# and the size from which an allocation gets its own mmap.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory_in_the_process() -> bool:
    """Stop glibc giving freed memory back to the kernel after every step, in this process (and
    the processes it forks later): a gigabyte free at the top of the heap before trimming, 256 MB
    before an allocation gets its own mmap. False where the C library is not glibc."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        tuned = bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 28))
    except (OSError, AttributeError):
        return False
    _allocator_tuned = tuned
    return tuned


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


__all__ = ["die_with_parent", "keep_freed_memory_in_the_process"]
