"""`pipeline.py sweep` on a real Dask cluster on loopback: a scheduler and two workers, each its own
process on 127.0.0.1, started here and killed in a finalizer.

The Dask grid equals the joblib grid bit for bit; a worker killed with SIGKILL in the middle of a
run hands it to the other worker, which resumes from the checkpoint to the uninterrupted result;
an address where no scheduler listens is one line and exit 2 within seconds. Plus the options'
validation and the Slurm job script, which need no cluster.
"""

from __future__ import annotations

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

import pytest

from pipeline import main

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60
# A run the kill test can interrupt: long enough (a few seconds) to be caught mid-training, with
# a checkpoint after every epoch (--checkpoint-seconds 0).
SLOW_RUN = ["optim.epochs=150", "head.dim=16", "head.token_hidden=8", "head.channel_hidden=16"]


def set_flags(assignments):
    return [flag for assignment in assignments for flag in ("--set", assignment)]


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LoopbackCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (one thread each, no nanny, so a
    worker's pid is the process that trains), each in its own process group."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def _spawn(self, module: str, *arguments: str, log: str) -> subprocess.Popen:
        handle = open(self.folder / log, "wb")
        process = subprocess.Popen([sys.executable, "-m", module, *arguments], cwd=self.folder, env=self.env,
                                   stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        handle.close()
        self.processes.append(process)
        return process

    def start(self, workers: int = 2) -> "LoopbackCluster":
        self._spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(self.scheduler_file), log="scheduler.log")
        self._wait(lambda: self.scheduler_file.is_file(), "the scheduler file")
        self.workers = [None] * workers
        return self.with_live_workers()

    def with_live_workers(self) -> "LoopbackCluster":
        """Start a worker in place of each that is not running (the kill test's victim), and wait
        until the scheduler sees them all. Workers import torch and the training code on start
        (--preload), once per worker process instead of in every test's first run."""
        for index, worker in enumerate(self.workers):
            if worker is None or worker.poll() is not None:
                self.workers[index] = self._spawn(
                    "distributed.cli.dask_worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1",
                    "--nworkers", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                    "--preload", "train.run", "--local-directory", str(self.folder / f"worker{index}"),
                    log=f"worker{index}-{len(self.processes)}.log")
        from distributed import Client

        with Client(self.address, timeout=STARTUP_SECONDS) as client:
            deadline = time.monotonic() + STARTUP_SECONDS
            while len(client.scheduler_info()["workers"]) != len(self.workers):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the workers did not join within {STARTUP_SECONDS} s: {self.logs()}")
                time.sleep(0.05)
        return self

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not ready():
            if any(process.poll() is not None for process in self.processes):
                raise RuntimeError(f"a cluster process died before {what} appeared: {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} after {STARTUP_SECONDS} s: {self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        return " | ".join(path.read_text(errors="replace")[-400:] for path in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory, request):
    cluster = LoopbackCluster(tmp_path_factory.mktemp("dask-cluster"))
    request.addfinalizer(cluster.stop)  # registered before start: a half-started cluster is killed too
    return cluster.start()


@pytest.fixture
def loopback_cluster(running_cluster):
    """The module's cluster with both workers alive (one the previous test killed is replaced)."""
    return running_cluster.with_live_workers()


def sweep_args(tiny_dataset, out, *extra):
    return ["sweep", "--features", str(tiny_dataset["cache"]), "--manifest", str(tiny_dataset["manifest"]),
            "--out", str(out), "--no-progress", *extra]


def result_files(out: Path) -> dict:
    """{run folder: (spearman, rl2, mse, predictions.csv bytes, config.json)} of every finished run."""
    results = {}
    for metrics_file in sorted(out.rglob("metrics.json")):
        folder = metrics_file.parent
        metrics = json.loads(metrics_file.read_text())
        results[str(folder.relative_to(out))] = (
            metrics["spearman"], metrics["rl2"], metrics["mse"], (folder / "predictions.csv").read_bytes(),
            json.loads((folder / "config.json").read_text())["method"])
    return results


def test_dask_grid_equals_the_joblib_grid_bit_for_bit(tiny_dataset, fast_flags, loopback_cluster, tmp_path,
                                                      monkeypatch, capsys):
    # Relative paths, from a folder the workers were not started in: they must mean the same there.
    monkeypatch.chdir(tmp_path)
    relative = {"cache": os.path.relpath(tiny_dataset["cache"]), "manifest": os.path.relpath(tiny_dataset["manifest"])}
    grid = ["--methods", "supervised,ridge", "--ratios", "0.3,0.6", "--seeds", "0", *fast_flags]
    # joblib in this process (--jobs 1): the same code path as its worker processes, without their start-up.
    assert main(sweep_args(relative, "joblib-runs", "--jobs", "1", "--threads", "1", *grid)) == 0
    # No --threads: each run takes its worker's one thread (torch_threads 1, as joblib's runs).
    assert main(sweep_args(relative, "dask-runs", "--scheduler", loopback_cluster.address, *grid)) == 0
    out = capsys.readouterr().out
    assert "on the Dask cluster at tcp://127.0.0.1:" in out and "(2 worker(s), 2 thread(s) now)" in out
    joblib_results, dask_results = result_files(tmp_path / "joblib-runs"), result_files(tmp_path / "dask-runs")
    assert len(dask_results) == 4 and dask_results == joblib_results
    for folder in (tmp_path / "dask-runs").rglob("config.json"):  # the same configuration, paths included
        twin = tmp_path / "joblib-runs" / folder.relative_to(tmp_path / "dask-runs")
        assert folder.read_bytes() == twin.read_bytes()
    assert json.loads((tmp_path / "dask-runs" / "sweep_backend.json").read_text())["scheduler"] == \
        loopback_cluster.address
    # Finished runs are skipped on Dask too (nothing is sent to the cluster).
    assert main(sweep_args(relative, "dask-runs", "--scheduler", loopback_cluster.address, *grid)) == 0
    assert "4 finished (skipped), 0 to run" in capsys.readouterr().out


def test_a_worker_killed_mid_run_is_resumed_on_the_other_worker(tiny_dataset, loopback_cluster, tmp_path, capsys):
    grid = ["--methods", "supervised", "--ratios", "0.5", "--seeds", "3", *set_flags(SLOW_RUN)]
    run_dir = tmp_path / "dask-runs" / "manifest" / "score" / "supervised" / "r0.5" / "s3"
    partial = run_dir.parent / ".s3.partial"
    lock_file = run_dir.parent / ".s3.lock"
    outcome = {}
    sweep = threading.Thread(target=lambda: outcome.setdefault("status", main(sweep_args(
        tiny_dataset, tmp_path / "dask-runs", "--scheduler", loopback_cluster.address, "--checkpoint-seconds", "0",
        *grid))))
    sweep.start()
    try:
        deadline = time.monotonic() + 60
        while not (partial / "checkpoint.pt").is_file():  # some epochs are done and saved
            assert sweep.is_alive() and time.monotonic() < deadline, "the run never wrote a checkpoint"
            time.sleep(0.01)
        holder = json.loads(lock_file.read_text())["pid"]  # the worker process training the run
        assert holder in [worker.pid for worker in loopback_cluster.workers]
        os.kill(holder, signal.SIGKILL)
    finally:
        sweep.join(timeout=120)
    assert outcome.get("status") == 0
    out = capsys.readouterr().out
    assert "resumed after epoch" in out  # not started over: the other worker continued the checkpoint
    survivor = [worker for worker in loopback_cluster.workers if worker.pid != holder]
    assert survivor[0].poll() is None
    # The same run, uninterrupted, with joblib on this machine.
    assert main(sweep_args(tiny_dataset, tmp_path / "joblib-runs", "--threads", "1", "--checkpoint-seconds", "0",
                           *grid)) == 0
    resumed = json.loads((run_dir / "metrics.json").read_text())
    uninterrupted = json.loads((tmp_path / "joblib-runs" / run_dir.relative_to(tmp_path / "dask-runs") /
                                "metrics.json").read_text())
    for name in ("spearman", "rl2", "mse", "epochs", "torch_threads"):
        assert resumed[name] == uninterrupted[name]
    assert (run_dir / "predictions.csv").read_bytes() == \
        (tmp_path / "joblib-runs" / run_dir.relative_to(tmp_path / "dask-runs") / "predictions.csv").read_bytes()


def test_an_unreachable_scheduler_is_one_line_and_exit_2_within_seconds(tiny_dataset, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    started = time.monotonic()
    status = main(sweep_args(tiny_dataset, tmp_path / "runs", "--scheduler", address, "--methods", "ridge",
                             "--ratios", "0.5", "--seeds", "0"))
    elapsed = time.monotonic() - started
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "cannot reach the Dask scheduler" in lines[0], lines
    assert elapsed < 15  # the connection timeout is 5 s
    assert not list((tmp_path / "runs").rglob("metrics.json"))


def test_cluster_local_starts_a_local_cluster_for_the_sweep(tiny_dataset, tmp_path, capsys):
    args = sweep_args(tiny_dataset, tmp_path / "runs", "--cluster", "local", "--jobs", "1", "--threads", "1",
                      "--methods", "ridge", "--ratios", "0.5", "--seeds", "0")
    assert main(args) == 0
    assert "(1 worker(s), 1 thread(s) now)" in capsys.readouterr().out
    assert (tmp_path / "runs" / "manifest" / "score" / "ridge" / "r0.5" / "s0" / "metrics.json").is_file()
    backend = json.loads((tmp_path / "runs" / "sweep_backend.json").read_text())
    assert backend["cluster"] == "local" and backend["workers"] == 1 and backend["threads"] == 1


@pytest.mark.parametrize("flags, message", [
    (["--scheduler", "tcp://127.0.0.1:1", "--cluster", "local"], "exclude each other"),
    (["--cluster-options", "cores=4"], "use it with --cluster slurm or pbs"),
    (["--cluster", "local", "--cluster-options", "cores=4"], "use it with --cluster slurm or pbs"),
    (["--cluster", "slurm", "--cluster-options", "cores=4,processes=3"], "cannot share 4 cores evenly"),
    (["--cluster", "slurm", "--cluster-options", "cores=four"], "cores: expected an integer"),
    (["--cluster", "slurm", "--cluster-options", "memory=lots"], "memory: expected a size"),
    (["--cluster", "slurm", "--cluster-options", "walltime=2h"], "walltime: expected HH:MM:SS"),
    (["--cluster", "slurm", "--cluster-options", "queue=a,queue=b"], "queue is given twice"),
    (["--cluster", "slurm", "--cluster-options", "partition=short"], "unknown ClusterOptions field(s): partition"),
    (["--cluster", "slurm", "--cluster-options", '{"cores": "8"}'], "cores: expected an integer"),
    (["--cluster", "slurm", "--cluster-options", "cores=2", "--threads", "4"], "more than the 2 core(s)"),
    (["--cluster", "slurm", "--jobs", "3"], "--cluster-options jobs=N"),
    (["--scheduler", "tcp://127.0.0.1:1", "--jobs", "3"], "--jobs sets the worker processes"),
    (["--scheduler", "127.0.0.1"], "is not a scheduler address like tcp://HOST:8786"),
    (["--scheduler", "ucx://127.0.0.1:1"], "scheme ucx:// is not tcp:// or tls://"),
])
def test_cluster_options_are_refused_in_one_line(tiny_dataset, tmp_path, capsys, flags, message):
    args = ["sweep", "--features", str(tiny_dataset["cache"]), "--manifest", str(tiny_dataset["manifest"]),
            "--out", str(tmp_path / "runs"), "--methods", "ridge", "--seeds", "0", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists()


def test_slurm_job_script_carries_the_cluster_options(monkeypatch):
    pytest.importorskip("dask_jobqueue")
    from train.sweep_backends import DaskSettings, jobqueue_arguments, jobqueue_cluster_class, parse_cluster_options

    options = parse_cluster_options("queue=short,account=aqa,walltime=02:00:00,memory=16GB,cores=8,processes=2,"
                                    "jobs=4,job_extra=--exclusive;--constraint=skylake,prologue=source .venv/bin/activate")
    assert options.job_extra == ["--exclusive", "--constraint=skylake"] and options.jobs == 4
    assert parse_cluster_options('{"cores": 8, "memory": "16GB", "job_extra": ["--gres=gpu:1"]}').job_extra == \
        ["--gres=gpu:1"]
    settings = DaskSettings(cluster="slurm", cluster_options=options, threads=2)
    cluster = jobqueue_cluster_class("slurm")(**jobqueue_arguments(settings), scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for expected in ("#SBATCH -p short", "#SBATCH -A aqa", "#SBATCH -t 02:00:00", "#SBATCH --exclusive",
                     "#SBATCH --constraint=skylake", "#SBATCH --cpus-per-task=8", "source .venv/bin/activate",
                     "--nworkers 2", "--nthreads 4", "--resources runs=2"):
        assert expected in script, (expected, script)


def test_threads_per_run_share_a_workers_threads_between_its_runs():
    from train.sweep_backends import threads_per_run

    assert threads_per_run(1, None) == 1   # dask worker --nthreads 1: one run of one thread
    assert threads_per_run(8, None) == 1   # eight runs at once, one thread each
    assert threads_per_run(8, 2) == 4      # --resources runs=2: two runs of four threads
    assert threads_per_run(8, 1) == 8
    assert threads_per_run(2, 8) == 1      # more run slots than threads: never below one


SBATCH_SHIM = """#!/usr/bin/env bash
# sbatch on this machine: keep the job script (dask-jobqueue deletes its own), start it in its own
# session, answer as Slurm does.
set -e
script="${@: -1}"
id=$$
cp "$script" "$SHIM_JOBS/$id.sh"
setsid bash "$SHIM_JOBS/$id.sh" > "$SHIM_JOBS/$id.log" 2>&1 < /dev/null &
echo $! > "$SHIM_JOBS/$id.pid"
echo "Submitted batch job $id"
"""

SCANCEL_SHIM = """#!/usr/bin/env bash
for id in "$@"; do
    echo "$id" >> "$SHIM_JOBS/cancelled"
    kill -KILL -- "-$(cat "$SHIM_JOBS/$id.pid")" 2>/dev/null || true
done
"""


def test_a_slurm_sweep_submits_job_scripts_whose_workers_train_the_grid(tiny_dataset, fast_flags, tmp_path,
                                                                         monkeypatch, capsys):
    """--cluster slurm end to end, with sbatch and scancel replaced by shims that run each job script
    on this machine: dask-jobqueue writes and submits the scripts, the workers they start join the
    sweep's scheduler on loopback and train the grid (equal to joblib's), and the jobs are cancelled
    when the sweep ends. (This checks everything on this side of sbatch on any machine; the test
    below submits to a real Slurm where one answers.)"""
    pytest.importorskip("dask_jobqueue")
    shims, jobs = tmp_path / "bin", tmp_path / "jobs"
    shims.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", SBATCH_SHIM), ("scancel", SCANCEL_SHIM)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SHIM_JOBS", str(jobs))
    monkeypatch.chdir(tmp_path)
    grid = ["--methods", "supervised,ridge", "--ratios", "0.5", "--seeds", "0", *fast_flags]
    options = ("cores=1,memory=2GB,jobs=2,walltime=00:10:00,interface=lo,"
               f"log_directory={tmp_path / 'dask-logs'},prologue=export OMP_NUM_THREADS=1;"
               f"export PYTHONPATH={REPO}")
    try:
        status = main(sweep_args(tiny_dataset, tmp_path / "slurm-runs", "--cluster", "slurm", "--cluster-options",
                                 options, *grid))
    finally:
        for pid_file in jobs.glob("*.pid"):  # whatever happened, no worker outlives the test
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    out = capsys.readouterr().out
    logs = " | ".join(path.read_text(errors="replace")[-300:] for path in jobs.glob("*.log"))
    assert status == 0, (out, logs)
    scripts = sorted(jobs.glob("*.sh"))
    assert len(scripts) == 2  # jobs=2: two sbatch submissions
    script = scripts[0].read_text()
    for expected in ("#SBATCH -t 00:10:00", "#SBATCH --cpus-per-task=1", "export OMP_NUM_THREADS=1",
                     "distributed.cli.dask_worker tcp://127.0.0.1:"):
        assert expected in script, (expected, script)
    assert sorted((jobs / "cancelled").read_text().split()) == sorted(path.stem for path in scripts)
    assert main(sweep_args(tiny_dataset, tmp_path / "joblib-runs", "--jobs", "1", "--threads", "1", *grid)) == 0
    slurm_results, joblib_results = result_files(tmp_path / "slurm-runs"), result_files(tmp_path / "joblib-runs")
    assert len(slurm_results) == 2 and slurm_results == joblib_results
    assert json.loads((tmp_path / "slurm-runs" / "sweep_backend.json").read_text())["cluster"] == "slurm"


def _idle_slurm_partition() -> str | None:
    """The default partition of a Slurm controller that answers here with an idle node, else None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None
    try:
        listing = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in listing.stdout.splitlines():
        partition, _, state = line.partition(" ")
        if state.startswith("idle") or state.startswith("mix"):
            return partition.rstrip("*")
    return None


def test_a_real_slurm_queue_trains_the_grid_and_its_jobs_end_with_the_sweep(tiny_dataset, fast_flags, tmp_path,
                                                                            monkeypatch, capsys):
    """--cluster slurm against a real Slurm controller (``bench/slurm_loopback.sh`` starts a
    one-node one on 127.0.0.1): two jobs go through sbatch, their workers train the grid to
    joblib's results, and the jobs are gone from the queue once the sweep has returned."""
    pytest.importorskip("dask_jobqueue")
    partition = _idle_slurm_partition()
    if partition is None:
        pytest.skip("no Slurm controller with an idle node answers here (bench/slurm_loopback.sh starts one)")
    monkeypatch.chdir(tmp_path)
    grid = ["--methods", "supervised,ridge", "--ratios", "0.5", "--seeds", "0", *fast_flags]
    job_name = f"trs-test-{os.getpid()}"
    options = json.dumps({
        "queue": partition, "cores": 1, "memory": "2GB", "jobs": 2, "walltime": "00:10:00", "interface": "lo",
        "log_directory": str(tmp_path / "dask-logs"), "job_extra": [f"--job-name={job_name}"],
        "prologue": ["export OMP_NUM_THREADS=1", f"export PYTHONPATH={REPO}"]})
    try:
        status = main(sweep_args(tiny_dataset, tmp_path / "slurm-runs", "--cluster", "slurm",
                                 "--cluster-options", options, *grid))
    finally:
        subprocess.run(["scancel", "--name", job_name], capture_output=True, timeout=30)
    assert status == 0, capsys.readouterr().out
    assert len(list((tmp_path / "dask-logs").glob("*.err"))) == 2  # two jobs ran
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # scancel from the sweep's exit takes a moment to show
        queued = subprocess.run(["squeue", "-h", "--name", job_name, "-o", "%i %T"], capture_output=True,
                                text=True, timeout=10).stdout.split("\n")
        if not any(line.strip() for line in queued):
            break
        time.sleep(0.5)
    assert not any(line.strip() for line in queued), queued
    assert main(sweep_args(tiny_dataset, tmp_path / "joblib-runs", "--jobs", "1", "--threads", "1", *grid)) == 0
    slurm_results, joblib_results = result_files(tmp_path / "slurm-runs"), result_files(tmp_path / "joblib-runs")
    assert len(slurm_results) == 2 and slurm_results == joblib_results
