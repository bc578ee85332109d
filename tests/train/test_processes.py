"""train/processes.py: what every training process does to its allocator, and workers that end with their parent."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_the_allocator_keeps_freed_memory_once_per_process():
    # In a fresh interpreter: the test process's own allocator is left alone.
    shown = subprocess.run(
        [sys.executable, "-c", "from train.processes import keep_freed_memory_in_the_process as keep, _allocator_tuned as before;"
         "print(before, keep(), keep())"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert shown.stdout.split() == ["False", "True", "True"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="re-parenting as on Linux")
def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    """parent (killed with -9) -> child watching it: the child is gone within a second or so."""
    child_pid_file = tmp_path / "child.pid"
    parent_code = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import os, time
from train.processes import die_with_parent
die_with_parent({{parent}})
open({str(child_pid_file)!r}, "w").write(str(os.getpid()))
time.sleep(600)
'''.replace("{{parent}}", str(os.getpid()))])
time.sleep(600)
"""
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not child_pid_file.exists() or not child_pid_file.read_text():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child = int(child_pid_file.read_text())
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child outlived its killed parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
