#!/usr/bin/env python
"""The same Fis-V grid through both sweep backends on this machine: joblib and a loopback Dask cluster.

Runs ``pipeline.py sweep`` three times on the real Fis-V bank, each into its own folder under
``--runs`` (emptied first):

1. joblib: ``--jobs 2 --threads 1``;
2. Dask: a scheduler and 2 workers (1 thread each, separate processes on 127.0.0.1) started here,
   and ``--scheduler ADDRESS``;
3. Dask again, with the worker training a run killed (SIGKILL) once ``--kill-after`` runs have
   finished and a checkpoint of a run in progress exists; the other worker has to resume it.

then prints wall times and whether every run's metrics.json (all fields but wall_seconds, which
is a time) and predictions.csv are identical across the three. The default grid is 40 runs:
supervised and mean-teacher, 10 % and 25 % labels, TES and PCS, seeds 0-4.

With ``--slurm``, steps 2 and 3 go through a real Slurm queue instead (``sweep --cluster slurm``:
dask-jobqueue writes the job scripts and submits 2 one-core jobs with ``sbatch``), and in step 3
the Slurm job whose worker trains a run with a checkpoint is cancelled with ``scancel`` (what a
preemption or a node failure does to a run). A one-node Slurm on 127.0.0.1 for this:
``bench/slurm_loopback.sh`` (Debian's slurm-wlm).

    python bench/bench_sweep_backends.py [--fisv-dir ../shared/data/fisv-swin] [--runs DIR]
    python bench/bench_sweep_backends.py --slurm [--slurm-queue debug]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, ensure_fisv_cache  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


class LoopbackDask:
    """A scheduler and ``workers`` one-thread workers (no nanny: a worker's pid is the process that
    trains), each in its own process group, killed on exit."""

    def __init__(self, folder: Path, workers: int = 2):
        self.folder, self.count = folder, workers
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, module: str, *arguments: str, log: str) -> subprocess.Popen:
        with open(self.folder / log, "wb") as handle:
            process = subprocess.Popen([sys.executable, "-m", module, *arguments], cwd=self.folder, env=ENV,
                                       stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def __enter__(self) -> "LoopbackDask":
        self.folder.mkdir(parents=True, exist_ok=True)
        scheduler_file = self.folder / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        self._spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(scheduler_file), log="scheduler.log")
        while not scheduler_file.is_file():
            time.sleep(0.05)
        self.address = json.loads(scheduler_file.read_text())["address"]
        for index in range(self.count):
            self.workers.append(self._spawn(
                "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                "--nworkers", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--preload", "train.run",
                log=f"worker{index}.log"))
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(self.count, timeout=120)
        return self

    def __exit__(self, *exc_info) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(timeout=30)


def sweep(cache: Path, fisv_dir: Path, out: Path, grid: list[str], *backend: str) -> float:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "pipeline.py", "sweep", "--features", str(cache), "--dataset", "fis-v",
               "--data-root", str(fisv_dir), *grid, "--out", str(out), "--no-progress", *backend]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (out.parent / f"{out.name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"sweep into {out} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return seconds


def wait_for_a_run_with_checkpoint(out: Path, after: int, owner) -> tuple[int, object, str] | None:
    """Once ``after`` runs are finished, the first run in progress that has a checkpoint and whose
    training process ``owner(pid)`` accepts: (pid, what owner returned, run name); None after 15 min."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if len(list(out.rglob("metrics.json"))) >= after:
            for lock in out.rglob(".s*.lock"):
                checkpoint = lock.parent / (lock.name[:-len(".lock")] + ".partial") / "checkpoint.pt"
                try:
                    pid = json.loads(lock.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                accepted = owner(pid)
                if checkpoint.is_file() and accepted:
                    return pid, accepted, str(lock.parent.relative_to(out) / lock.name[1:-len(".lock")])
        time.sleep(0.02)
    return None


def kill_a_worker_mid_run(cluster: LoopbackDask, out: Path, after: int, record: dict) -> None:
    """Once ``after`` runs are finished, SIGKILL the worker holding a run that has a checkpoint."""
    worker_pids = {worker.pid for worker in cluster.workers}
    found = wait_for_a_run_with_checkpoint(out, after, lambda pid: pid in worker_pids)
    if found is not None:
        pid, _, run = found
        os.kill(pid, signal.SIGKILL)
        record.update(pid=pid, run=run)


def slurm_job_of(pid: int) -> str | None:
    """The Slurm job a process on this machine runs in (its SLURM_JOB_ID), or None."""
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environment:
        if entry.startswith(b"SLURM_JOB_ID="):
            return entry.split(b"=", 1)[1].decode()
    return None


def cancel_a_job_mid_run(out: Path, after: int, record: dict) -> None:
    """Once ``after`` runs are finished, ``scancel`` the Slurm job whose worker holds a run that
    has a checkpoint."""
    found = wait_for_a_run_with_checkpoint(out, after, slurm_job_of)
    if found is not None:
        pid, job, run = found
        subprocess.run(["scancel", job], check=True)
        record.update(pid=pid, job=job, run=run)


def slurm_options(runs: Path, queue: str) -> str:
    """--cluster-options for 2 one-core worker jobs that reach the sweep's scheduler on loopback."""
    return (f"queue={queue},cores=1,memory=4GB,jobs=2,walltime=00:30:00,interface=lo,"
            f"log_directory={runs / 'slurm-logs'},prologue=export OMP_NUM_THREADS=1")


def results(out: Path) -> dict:
    table = {}
    for metrics_file in sorted(out.rglob("metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        metrics.pop("wall_seconds")
        table[str(metrics_file.parent.relative_to(out))] = (
            json.dumps(metrics, sort_keys=True), (metrics_file.parent / "predictions.csv").read_bytes())
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fisv-dir", type=Path, default=DEFAULT_FISV_DIR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "bench" / "results" / "sweep_backends")
    parser.add_argument("--methods", default="supervised,mean-teacher")
    parser.add_argument("--ratios", default="0.1,0.25")
    parser.add_argument("--targets", default="TES,PCS")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--kill-after", type=int, default=10, help="Kill a worker once this many runs finished.")
    parser.add_argument("--slurm", action="store_true",
                        help="Steps 2 and 3 on a real Slurm queue (sweep --cluster slurm) instead of loopback Dask.")
    parser.add_argument("--slurm-queue", default="debug", help="Slurm partition for --slurm.")
    args = parser.parse_args()
    if args.slurm and shutil.which("sbatch") is None:
        sys.exit("--slurm: no sbatch on PATH (bench/slurm_loopback.sh starts a one-node Slurm)")

    cache = ensure_fisv_cache(args.fisv_dir, args.cache)
    grid = ["--methods", args.methods, "--ratios", args.ratios, "--targets", args.targets, "--seeds", args.seeds]
    runs = args.runs.resolve()
    load_before = os.getloadavg()
    joblib_seconds = sweep(cache, args.fisv_dir, runs / "joblib", grid, "--jobs", "2", "--threads", "1")
    killed: dict = {}
    if args.slurm:
        cluster_seconds = None
        backend = ["--cluster", "slurm", "--cluster-options", slurm_options(runs, args.slurm_queue)]
        dask_seconds = sweep(cache, args.fisv_dir, runs / "dask", grid, *backend)
        killer = threading.Thread(target=cancel_a_job_mid_run,
                                  args=(runs / "dask-killed", args.kill_after, killed), daemon=True)
        killer.start()
        killed_seconds = sweep(cache, args.fisv_dir, runs / "dask-killed", grid, *backend,
                               "--checkpoint-seconds", "0.5")
    else:
        started = time.perf_counter()
        with LoopbackDask(runs / "cluster") as cluster:
            cluster_seconds = time.perf_counter() - started
            dask_seconds = sweep(cache, args.fisv_dir, runs / "dask", grid, "--scheduler", cluster.address)
            killer = threading.Thread(target=kill_a_worker_mid_run,
                                      args=(cluster, runs / "dask-killed", args.kill_after, killed), daemon=True)
            killer.start()
            killed_seconds = sweep(cache, args.fisv_dir, runs / "dask-killed", grid, "--scheduler", cluster.address,
                                   "--checkpoint-seconds", "0.5")
    load_after = os.getloadavg()

    reference = results(runs / "joblib")
    resumed_lines = [line for line in (runs / "dask-killed.log").read_text().splitlines() if "resumed after" in line]
    if args.slurm:
        names = ("Slurm, 2 jobs x 1 core (--cluster slurm)", "Slurm, one job cancelled mid-run (scancel)")
    else:
        names = ("Dask, 2 workers x 1 thread (--scheduler)", "Dask, one worker killed mid-run")
    rows = [("joblib --jobs 2 --threads 1", joblib_seconds, reference),
            (names[0], dask_seconds, results(runs / "dask")),
            (names[1], killed_seconds, results(runs / "dask-killed"))]
    print(f"{len(reference)} runs ({' '.join(grid)}) on {socket.gethostname()}, {os.cpu_count()} CPUs; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("| backend | wall time (s) | ratio to joblib | runs | metrics.json and predictions.csv identical to joblib |")
    print("|---|---|---|---|---|")
    for name, seconds, table in rows:
        same = table == reference
        print(f"| {name} | {seconds:.1f} | {seconds / joblib_seconds:.2f} | {len(table)} | {'yes' if same else 'NO'} |")
    if args.slurm:
        print("\nSlurm: the times include submitting the jobs and their workers starting (torch imports).")
        print(f"cancelled: Slurm job {killed.get('job')} (worker pid {killed.get('pid')}) while training "
              f"{killed.get('run')}; resumed on the other job's worker: {resumed_lines or 'none'}")
    else:
        print(f"\nDask cluster start (scheduler + 2 workers importing torch): {cluster_seconds:.1f} s, not in the times.")
        print(f"killed: worker pid {killed.get('pid')} while training {killed.get('run')}; "
              f"resumed on the other worker: {resumed_lines or 'none'}")


if __name__ == "__main__":
    main()
