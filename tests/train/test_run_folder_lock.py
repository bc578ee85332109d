"""Concurrency and failed writes of stage 2: a run folder is written by one process (a second is
told who holds it), the old-run aside name cannot be planted, and after kill -9 of a sweep its
worker processes die with it instead of training on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aqa.files import lock_path
from pipeline import main

REPO_ROOT = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from aqa.files import FileLock
    with FileLock(sys.argv[2], "the run folder"):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def train_args(dataset, run_dir, *extra, method="ridge"):
    return ["train", "--features", str(dataset["cache"]), "--manifest", str(dataset["manifest"]), "--method", method,
            "--ratio", "0.5", "--seed", "0", "--run-dir", str(run_dir), "--threads", "1", "--no-progress", *extra]


def one_error_line(capsys, code) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]])
def test_a_run_folder_being_trained_is_refused_to_a_second_process_naming_it(tiny_dataset, tmp_path, capsys, flags):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO_ROOT), str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        line = one_error_line(capsys, main(train_args(tiny_dataset, run_dir, *flags)))
        assert line.startswith(f"error: {run_dir}: the run folder is being written by process {holder.pid} on ")
        assert not run_dir.exists() and not (tmp_path / ".run.partial").exists()
    finally:
        holder.communicate("\n", timeout=60)
    assert main(train_args(tiny_dataset, run_dir)) == 0
    assert not lock_path(run_dir).exists()


def test_a_run_folder_under_a_file_is_one_line(tiny_dataset, tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("a file")
    line = one_error_line(capsys, main(train_args(tiny_dataset, blocker / "run")))
    assert str(blocker / "run") in line and "is a file, not a folder" in line
    assert blocker.read_text() == "a file"


def test_overwrite_is_not_fooled_by_a_planted_aside_folder_name(tiny_dataset, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    run_dir = tmp_path / "run"
    assert main(train_args(tiny_dataset, run_dir)) == 0
    (tmp_path / f".run.old.{os.getpid()}").symlink_to(victim)  # the name an earlier version used
    assert main(train_args(tiny_dataset, run_dir, "--overwrite", "--seed", "1")) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["seed"] == 1
    assert (victim / "keep.txt").read_text() == "precious"


# ----------------------------------------------------------------------------- sweep workers


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its parent (now init) has to reap it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_parallel_sweep_leaves_no_worker_running(tiny_dataset, tmp_path, fast_flags):
    out = tmp_path / "runs"
    args = ["sweep", "--features", str(tiny_dataset["cache"]), "--manifest", str(tiny_dataset["manifest"]),
            "--methods", "supervised", "--ratios", "0.3,0.6", "--seeds", "0", "--out", str(out), "--jobs", "2",
            "--threads", "1", "--no-progress", *fast_flags, "--set", "optim.epochs=100000"]
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    sweep = subprocess.Popen([sys.executable, str(REPO_ROOT / "pipeline.py"), *args], cwd=REPO_ROOT, env=environment,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Wait until both workers are inside a run (each holds its run folder's lock).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sweep.poll() is None:
            if len(list(out.rglob(".s0.lock"))) == 2:
                break
            time.sleep(0.1)
        assert len(list(out.rglob(".s0.lock"))) == 2, "the sweep's workers did not start their runs"
        workers = children_of(sweep.pid)
        assert len(workers) >= 2
    finally:
        sweep.send_signal(signal.SIGKILL)
        sweep.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:  # never leave them behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "sweep workers survived the kill of their parent"
