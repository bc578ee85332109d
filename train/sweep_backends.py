"""Where a sweep's runs execute: joblib processes on this machine (the default), or a Dask cluster.

A backend takes the runs :func:`train.sweep.run_sweep` found unfinished and calls ``finished(job,
status, message, seconds)`` once per run as results arrive; each run is
:func:`train.sweep._run_one` (``train_run`` with ``resume=True``) wherever it executes, so a run
folder is trained in its ``.partial`` sibling and renamed into place by the process that trained it,
exactly as in a one-machine sweep.

:class:`DaskBackend` needs the optional ``dask`` extra (``distributed``, and ``dask-jobqueue``
for Slurm/PBS); it is imported only when a Dask option is given, so the default needs neither.
One run is one Dask task (``pure=False``: the same run submitted twice is two trainings, never a
cached result). A worker killed mid-run loses its task; the scheduler gives it to another worker
(up to its ``allowed-failures``), and that worker resumes the run from the checkpoint the dead one
left in the ``.partial`` folder; the run folder's lock (an ``flock``) died with the killed process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

from aqa.config import CheckedConfig, from_dict, require, to_dict, write_json
from aqa.errors import UserError
from aqa.files import ensure_folder

# How long the command waits for a scheduler before saying it cannot be reached: a scheduler that
# is up answers in milliseconds; a wrong address or a firewall would otherwise hang the sweep.
SCHEDULER_CONNECT_SECONDS = 5.0
# A task that raised (not one whose worker died: that is the scheduler's allowed-failures) is
# tried again this many times; runs catch their own errors, so this covers the infrastructure.
TASK_RETRIES = 2
# How many workers may die running one task before the scheduler gives up on it (KilledWorker);
# set on the clusters this module starts. An existing scheduler keeps its own (Dask's default: 3).
ALLOWED_FAILURES = 3
# The worker resource that limits how many runs a worker trains at once (``--resources runs=R``).
RUNS_RESOURCE = "runs"
CLUSTER_KINDS = ("local", "slurm", "pbs")
BATCH_SUBMIT = {"slurm": "sbatch", "pbs": "qsub"}

Finished = Callable[[object, str, str, float], None]


class JoblibBackend:
    """Runs in ``n_jobs`` joblib (loky) processes on this machine, ``threads`` torch threads each
    (default: the CPUs split between the jobs). Workers die with the sweep."""

    def __init__(self, n_jobs: int = 1, threads: int | None = None):
        self.n_jobs = n_jobs
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // max(1, n_jobs))

    def start(self) -> None:
        """Nothing to start: the processes are made when the first run is handed out."""

    def close(self) -> None:
        """Nothing to stop: joblib ends its processes itself."""

    def describe(self) -> str:
        return f"with {self.n_jobs} job(s)"

    def run(self, pending: list, finished: Finished, checkpoint_seconds: float = 30.0) -> None:
        from joblib import Parallel, delayed

        from train.sweep import _run_one

        runner = Parallel(n_jobs=self.n_jobs, return_as="generator",
                          backend="loky" if self.n_jobs > 1 else "sequential")
        sweep_pid = os.getpid()  # workers watch this process and die with it
        results = runner(delayed(_run_one)(job, self.threads, sweep_pid, checkpoint_seconds) for job in pending)
        for job, (status, message, seconds) in zip(pending, results):
            finished(job, status, message, seconds)


_MEMORY = re.compile(r"\d+(\.\d+)?\s*([kmgtp]i?b?|b)", re.IGNORECASE)
_WALLTIME = re.compile(r"(\d+-)?\d+(:\d{2}){0,2}")


@dataclass
class ClusterOptions(CheckedConfig):
    """What each batch job of ``--cluster slurm|pbs`` asks for (``--cluster-options``).

    Each job runs ``processes`` Dask worker processes sharing ``cores`` cores; every run gets
    ``--threads`` torch threads (default 1), so a job trains ``cores / threads`` runs at once.
    """

    cores: int = 1                      # CPU cores per batch job
    memory: str = "4GB"                 # memory per batch job (e.g. 16GB)
    processes: int = 1                  # Dask worker processes per job; the cores are split between them
    jobs: int = 1                       # how many batch jobs to submit
    queue: Optional[str] = None         # Slurm partition / PBS queue  [default: the batch system's]
    account: Optional[str] = None       # account or project to charge
    walltime: Optional[str] = None      # per job: HH:MM:SS (Slurm also D-HH:MM:SS)  [default: the queue's]
    interface: Optional[str] = None     # network interface workers reach the scheduler on (e.g. ib0)
    log_directory: Optional[str] = None  # where the jobs' stdout/stderr go  [default: the batch system's]
    job_extra: list[str] = field(default_factory=list)  # more #SBATCH / #PBS directives, verbatim
    prologue: list[str] = field(default_factory=list)   # shell lines before the worker starts

    def check(self) -> None:
        require(self.cores >= 1, "cores", f"must be at least 1, got {self.cores}")
        require(self.processes >= 1, "processes", f"must be at least 1, got {self.processes}")
        require(self.cores % self.processes == 0, "processes",
                f"{self.processes} processes cannot share {self.cores} cores evenly")
        require(self.jobs >= 1, "jobs", f"must be at least 1, got {self.jobs}")
        require(_MEMORY.fullmatch(self.memory.strip()) is not None, "memory",
                f"expected a size like 16GB or 4096MB, got {self.memory!r}")
        require(self.walltime is None or _WALLTIME.fullmatch(self.walltime) is not None, "walltime",
                f"expected HH:MM:SS or D-HH:MM:SS, got {self.walltime!r}")


_INT_FIELDS = {"cores", "processes", "jobs"}
_LIST_FIELDS = {"job_extra", "prologue"}


def parse_cluster_options(text: str | None) -> ClusterOptions:
    """``--cluster-options``: ``KEY=VALUE,KEY=VALUE`` (list values separated by ``;``) or a JSON
    object; checked field by field (an unknown key, a wrong type, a value out of range: one line)."""
    if text is None or not text.strip():
        return ClusterOptions()
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"--cluster-options: not a JSON object ({error})") from None
    else:
        data = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, separator, value = item.partition("=")
            key, value = key.strip().replace("-", "_"), value.strip()
            if not separator or not key:
                raise UserError(f"--cluster-options: {item!r} is not KEY=VALUE (or give a JSON object)")
            if key in data:
                raise UserError(f"--cluster-options: {key} is given twice")
            if key in _INT_FIELDS:
                try:
                    data[key] = int(value)
                except ValueError:
                    raise UserError(f"--cluster-options: {key}: expected an integer, got {value!r}") from None
            elif key in _LIST_FIELDS:
                data[key] = [line.strip() for line in value.split(";") if line.strip()]
            else:
                data[key] = value
    try:
        return from_dict(ClusterOptions, data)
    except UserError as error:
        raise UserError(f"--cluster-options: {error.problem}") from None


@dataclass
class DaskSettings(CheckedConfig):
    """Where a Dask sweep runs (written to ``OUT/sweep_backend.json`` beside its runs)."""

    scheduler: Optional[str] = None                                  # an existing scheduler's address
    cluster: Optional[Literal["local", "slurm", "pbs"]] = None       # or a cluster this command starts
    cluster_options: Optional[ClusterOptions] = None                 # slurm/pbs only
    workers: Optional[int] = None                                    # local only: worker processes
    threads: Optional[int] = None                                    # torch threads per run  [default: from the worker]

    def check(self) -> None:
        # Plain one-line refusals in the words of the command line (these come from its options).
        if self.cluster_options is not None and self.cluster not in ("slurm", "pbs"):
            raise UserError("--cluster-options describes batch jobs: use it with --cluster slurm or pbs")
        if (self.scheduler is None) == (self.cluster is None):
            raise UserError("give one of --scheduler ADDRESS (an existing cluster) and --cluster local|slurm|pbs")
        if self.workers is not None and self.cluster != "local":
            raise UserError("--jobs sets the worker processes of --cluster local only; with --scheduler the "
                            "cluster has its own workers, with --cluster slurm|pbs give --cluster-options jobs=N")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--jobs must be at least 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        options = self.cluster_options
        if options is not None and self.threads is not None and self.threads > options.cores // options.processes:
            raise UserError(f"--threads {self.threads} is more than the {options.cores // options.processes} "
                            f"core(s) of each worker process (cores={options.cores}, processes={options.processes})")


def threads_per_run(nthreads: int, runs_at_once: int | None) -> int:
    """Torch threads for one run on a worker of ``nthreads`` threads that trains ``runs_at_once``
    runs at a time (``None``: as many as it has threads, Dask's rule): its cores shared out."""
    runs = nthreads if runs_at_once is None else max(1, min(runs_at_once, nthreads))
    return max(1, nthreads // runs)


_cwd_guard = threading.Lock()


def run_on_dask_worker(job, threads: int | None, checkpoint_seconds: float, sweep_folder: str,
                       limited_by_resource: bool) -> tuple[str, str, float]:
    """The Dask task of one run: (status, message, seconds), as :func:`train.sweep._run_one`.

    Torch threads: ``threads`` if the sweep gave ``--threads``, else the worker's threads shared
    between the runs it trains at once (its ``runs`` resource when tasks ask for it). Relative paths
    of the run's configuration mean what they meant where the sweep was started: the worker works
    in ``sweep_folder``, which a shared filesystem gives the same path on every host.
    """
    import socket

    from distributed import get_worker

    from train.sweep import _run_one

    worker = get_worker()
    if threads is None:
        runs = worker.state.total_resources.get(RUNS_RESOURCE) if limited_by_resource else None
        threads = threads_per_run(worker.state.nthreads, None if runs is None else int(runs))
    with _cwd_guard:
        if os.getcwd() != sweep_folder:
            try:
                os.chdir(sweep_folder)
            except OSError:
                return ("failed", f"the sweep's folder {sweep_folder} does not exist on worker host "
                                  f"{socket.gethostname()}: the data and --out must be on a filesystem the "
                                  "workers share", 0.0)
    return _run_one(job, threads, None, checkpoint_seconds)


class DaskBackend:
    """One task per run on a Dask cluster: an existing scheduler, a ``LocalCluster``, or workers in
    Slurm/PBS batch jobs started through ``dask-jobqueue``."""

    def __init__(self, settings: DaskSettings, out: str | os.PathLike | None = None,
                 connect_timeout: float = SCHEDULER_CONNECT_SECONDS):
        self.settings = settings
        self.out = None if out is None else Path(out)
        self.connect_timeout = connect_timeout
        self.client = None
        self.cluster = None
        self.limited_by_resource = False

    def start(self) -> None:
        """Connect to the scheduler (or start the cluster); a scheduler that does not answer within
        :data:`SCHEDULER_CONNECT_SECONDS` is a :class:`UserError` naming its address."""
        try:
            import dask
            from distributed import Client
        except ImportError:
            raise UserError("--scheduler and --cluster need Dask: pip install 'trs-aqa[dask]' "
                            "(distributed, dask-jobqueue)") from None
        settings = self.settings
        if settings.scheduler is not None:
            check_scheduler_address(settings.scheduler)
            try:
                self.client = Client(settings.scheduler, timeout=self.connect_timeout, set_as_default=False)
            except (OSError, TimeoutError) as error:
                raise UserError(f"cannot reach the Dask scheduler at {settings.scheduler} within "
                                f"{self.connect_timeout:g} s ({_first_line(error)})") from None
            workers = self.client.scheduler_info().get("workers", {}).values()
            # Ask for the runs resource only where every worker has it, or tasks could wait forever.
            self.limited_by_resource = bool(workers) and all(
                RUNS_RESOURCE in (info.get("resources") or {}) for info in workers)
        else:
            with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
                self.cluster = self._start_cluster()
            self.client = Client(self.cluster, set_as_default=False)
            self.limited_by_resource = True
        if self.out is not None:
            ensure_folder(self.out)
            write_json(self.out / "sweep_backend.json", {"backend": "dask", **to_dict(settings),
                                                        "scheduler_address": self.client.scheduler.address})

    def _start_cluster(self):
        settings = self.settings
        if settings.cluster == "local":
            from distributed import LocalCluster

            workers = settings.workers or 1
            threads = settings.threads or max(1, (os.cpu_count() or 1) // workers)
            # Its own log lines (a slow worker shutdown under load) would bury the sweep's report.
            return LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                                dashboard_address=":0", resources={RUNS_RESOURCE: 1}, silence_logs=logging.ERROR)
        submit = BATCH_SUBMIT[settings.cluster]
        if shutil.which(submit) is None:
            raise UserError(f"--cluster {settings.cluster} submits the workers with {submit}, which is not on PATH "
                            "here: run the sweep on the cluster's login node")
        cluster = jobqueue_cluster_class(settings.cluster)(**jobqueue_arguments(settings))
        cluster.scale(jobs=_options(settings).jobs)
        return cluster

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing must not hide the sweep's own result or error
                    pass
        self.client = self.cluster = None

    def describe(self) -> str:
        address = self.client.scheduler.address if self.client is not None else self.settings.scheduler
        workers = self.client.scheduler_info().get("workers", {}) if self.client is not None else {}
        threads = sum(info.get("nthreads", 0) for info in workers.values())
        return f"on the Dask cluster at {address} ({len(workers)} worker(s), {threads} thread(s) now)"

    def run(self, pending: list, finished: Finished, checkpoint_seconds: float = 30.0) -> None:
        from distributed import as_completed

        sweep_folder = os.getcwd()
        futures = {}
        for job in pending:
            task_job = dataclasses.replace(job, run_dir=Path(job.run_dir).absolute())  # the worker's cwd may differ
            name = "/".join(task_job.run_dir.parts[-5:])
            future = self.client.submit(
                run_on_dask_worker, task_job, self.settings.threads, checkpoint_seconds, sweep_folder,
                self.limited_by_resource, key=f"train-run {name} {uuid.uuid4().hex[:8]}", pure=False,
                retries=TASK_RETRIES, resources={RUNS_RESOURCE: 1} if self.limited_by_resource else None)
            futures[future] = job
        try:
            for future in as_completed(futures, loop=self.client.loop):
                job = futures[future]
                try:
                    status, message, seconds = future.result()
                except Exception as error:  # the task never returned: KilledWorker, lost scheduler
                    status, message, seconds = "failed", _task_failure(error), 0.0
                finished(job, status, message, seconds)
        finally:
            self.client.cancel(list(futures))  # after Ctrl-C: nothing left queued in the cluster's name


def check_scheduler_address(address: str) -> None:
    """Refuse an address Dask cannot parse before a client is made: a half-made client would hang
    the interpreter's exit for its close timeout."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):  # what dask-scheduler serves; ucx/ws need extra packages
            raise ValueError(f"scheme {scheme}:// is not tcp:// or tls://")
        parse_host_port(location)
    except (ValueError, TypeError) as error:
        raise UserError(f"--scheduler {address!r} is not a scheduler address like tcp://HOST:8786 "
                        f"({_first_line(error)})") from None


def _options(settings: DaskSettings) -> ClusterOptions:
    return settings.cluster_options or ClusterOptions()


def jobqueue_cluster_class(kind: str):
    try:
        from dask_jobqueue import PBSCluster, SLURMCluster
    except ImportError:
        raise UserError(f"--cluster {kind} needs dask-jobqueue: pip install 'trs-aqa[dask]'") from None
    return {"slurm": SLURMCluster, "pbs": PBSCluster}[kind]


def jobqueue_arguments(settings: DaskSettings) -> dict:
    """dask-jobqueue's arguments for the batch jobs ``settings`` describe. Each worker process
    declares how many runs it trains at once (``runs`` resource): its cores / ``--threads``."""
    options = _options(settings)
    per_worker = options.cores // options.processes
    runs_per_worker = max(1, per_worker // (settings.threads or 1))
    arguments = {
        "cores": options.cores, "memory": options.memory, "processes": options.processes,
        "queue": options.queue, "account": options.account, "walltime": options.walltime,
        "interface": options.interface, "log_directory": options.log_directory,
        "job_extra_directives": list(options.job_extra), "job_script_prologue": list(options.prologue),
        "worker_extra_args": ["--resources", f"{RUNS_RESOURCE}={runs_per_worker}"],
    }
    return {key: value for key, value in arguments.items() if value is not None}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _task_failure(error: BaseException) -> str:
    if type(error).__name__ == "KilledWorker":
        return ("every worker that ran it died (the scheduler's allowed-failures were used up); "
                "rerun the sweep to resume it from its checkpoint")
    if type(error).__name__ == "CancelledError":
        return "cancelled: the scheduler lost the task (was the scheduler stopped?)"
    return f"{type(error).__name__}: {_first_line(error)}"
