"""A grid of runs (targets × methods × ratios × seeds) in parallel, skipping finished ones.

Each run goes to ``OUT/<dataset>/<target>/<method>/r<ratio>/s<seed>`` (the folder layout the
evaluator groups by). A run folder whose ``metrics.json`` exists and whose ``config.json`` equals
the configuration the sweep would run is skipped; an interrupted run resumes from its
checkpoint. This module plans the grid and reports on it; where the runs execute (joblib
processes on this machine, or a Dask cluster) is :mod:`train.sweep_backends`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aqa.errors import UserError
from aqa.progress import progress_bar
from train.config import METHODS, TrainConfig, apply_overrides, preset_config
from train.processes import die_with_parent
from train.run import finished_config_matches, train_run


@dataclass
class SweepJob:
    config: TrainConfig
    run_dir: Path


# A grid is counted before anything of it is built: a typo like 0-100000000 must be refused at
# once, not eat the machine's memory. A hundred thousand runs is years of CPU time already.
MAX_SWEEP_RUNS = 100_000
MAX_SEED_RANGE = 100_000


def parse_list(text: str, what: str, convert=str) -> list:
    """``"a, b,a"`` -> ``["a", "b"]``: comma-separated, in order, repeats dropped (a repeated
    item would name the same run folder twice)."""
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        raise UserError(f"--{what}: empty list")
    try:
        return list(dict.fromkeys(convert(item) for item in items))
    except ValueError:
        raise UserError(f"--{what}: {text!r} is not a comma-separated list of numbers") from None


def parse_ratios(text: str) -> list[float]:
    """Labelled ratios, each in (0, 1] (checked by the run configuration's own rule)."""
    ratios = parse_list(text, "ratios", float)
    for ratio in ratios:
        if not 0 < ratio <= 1:  # NaN fails this too
            raise UserError(f"--ratios: each ratio must be in (0, 1], got {ratio:g}")
    return ratios


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"``; ``"0-2,9"``. Seeds are non-negative; a range
    is counted (and refused above :data:`MAX_SEED_RANGE`) before it is expanded."""
    seeds: list[int] = []
    for part in parse_list(text, "seeds"):
        match = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part)
        if match:
            first, last = int(match.group(1)), int(match.group(2))
            if first < 0 or last < 0:
                raise UserError(f"--seeds: range {part!r}: seeds must not be negative")
            if last < first:
                raise UserError(f"--seeds: range {part!r} runs backwards (write {last}-{first})")
            if last - first + 1 > MAX_SEED_RANGE:
                raise UserError(f"--seeds: range {part!r} has {last - first + 1:,} seeds; at most "
                                f"{MAX_SEED_RANGE:,} in one range")
            seeds.extend(range(first, last + 1))
        else:
            try:
                seed = int(part)
            except ValueError:
                raise UserError(f"--seeds: {part!r} is not an integer or a range like 0-4") from None
            if seed < 0:
                raise UserError(f"--seeds: {seed} is negative; seeds must not be negative")
            seeds.append(seed)
        if len(seeds) > MAX_SWEEP_RUNS:
            raise UserError(f"--seeds {text!r}: more than {MAX_SWEEP_RUNS:,} seeds")
    return list(dict.fromkeys(seeds))


def check_grid_size(targets: list, methods: list, ratios: list, seeds: list) -> int:
    """The number of runs of the grid; refused above :data:`MAX_SWEEP_RUNS`, before any is planned."""
    count = len(targets) * len(methods) * len(ratios) * len(seeds)
    if count > MAX_SWEEP_RUNS:
        raise UserError(f"the sweep has {count:,} runs ({len(targets)} target(s) x {len(methods)} method(s) x "
                        f"{len(ratios)} ratio(s) x {len(seeds)} seed(s)); at most {MAX_SWEEP_RUNS:,} in one sweep")
    return count


def run_folder_name(dataset: str, target: str, method: str, ratio: float, seed: int) -> Path:
    return Path(dataset) / target / method / f"r{ratio:g}" / f"s{seed}"


def plan_sweep(base: TrainConfig, out: str | os.PathLike, targets: list[str | None], methods: list[str],
               ratios: list[float], seeds: list[int], overrides: list[str] = ()) -> list[SweepJob]:
    """The runs of the grid, with each method's preset and the overrides applied."""
    check_grid_size(targets, methods, ratios, seeds)
    jobs = []
    for method in methods:
        if method not in METHODS:
            raise UserError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if any(target is None for target in targets):
        # Name the folder after the dataset's own default target (final_score, TES, score).
        from train.data import load_labels

        default_target = load_labels(base).default_target
        targets = [target or default_target for target in targets]
    for target in targets:
        for method in methods:
            for ratio in ratios:
                for seed in seeds:
                    config = dataclasses.replace(
                        preset_config(base.preset, method), **{**base.data_fields(), "target": target,
                                                               "ratio": ratio, "seed": seed},
                        keep_epoch_predictions=base.keep_epoch_predictions)
                    config = apply_overrides(config, list(overrides))
                    config.validate()  # the whole grid is refused before any run starts
                    name = base.dataset if base.dataset != "manifest" else Path(base.manifest).stem
                    folder = Path(out) / run_folder_name(name, target, method, ratio, seed)
                    jobs.append(SweepJob(config, folder))
    return jobs


def _run_one(job: SweepJob, threads: int, parent_pid: int | None = None,
             checkpoint_seconds: float = 30.0) -> tuple[str, str, float]:
    """One run of the grid, in whatever process a backend runs it: ('done'|'failed', message,
    seconds). A run that continued from a checkpoint says so in its message."""
    import torch

    if parent_pid is not None:
        die_with_parent(parent_pid)  # the run resumes from its last checkpoint

    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    resumed: list[str] = []
    try:
        metrics = train_run(job.config, job.run_dir, resume=True, progress=False,
                            checkpoint_seconds=checkpoint_seconds,
                            log=lambda message: resumed.append(message) if message.startswith("resuming") else None)
    except UserError as error:
        return "failed", str(error), time.perf_counter() - started
    except Exception as error:  # a crash of one run must not lose the others' results
        return "failed", f"{type(error).__name__}: {error}", time.perf_counter() - started
    rho = metrics.get("spearman")
    shown = "undefined" if rho is None else f"{rho:.4f}"
    note = ", resumed after " + resumed[0].rsplit(" after ", 1)[-1] if resumed else ""
    if metrics.get("gate_choice"):  # trs: what its label-only gate chose (train.methods.gate.VERDICTS)
        note += f", gate: {metrics['gate_choice']} ({metrics.get('gate_verdict')})"
    return "done", f"spearman {shown}{note}", time.perf_counter() - started


def run_sweep(jobs: list[SweepJob], n_jobs: int = 1, threads: int | None = None,
              log: Callable[[str], None] = print, progress: bool | None = None, backend=None,
              checkpoint_seconds: float = 30.0) -> dict:
    """Run the jobs that are not finished; returns counts and failures.

    ``backend`` decides where the runs execute (:mod:`train.sweep_backends`): by default joblib
    processes on this machine (``n_jobs`` of them, ``threads`` torch threads each); a
    :class:`~train.sweep_backends.DaskBackend` sends one task per run to a Dask cluster. Either
    way every run is :func:`_run_one` (``train_run`` with ``resume=True``), the progress bar counts
    finished runs, each result is logged as it arrives, and failures are collected, not raised.
    """
    from train.sweep_backends import JoblibBackend

    backend = backend or JoblibBackend(n_jobs=n_jobs, threads=threads)
    pending = [job for job in jobs if not finished_config_matches(job.run_dir, job.config)]
    skipped = len(jobs) - len(pending)
    if not pending:
        log(f"{len(jobs)} runs: {skipped} finished (skipped), 0 to run")
        return {"total": len(jobs), "skipped": skipped, "ran": 0, "failed": []}
    results = []
    try:
        backend.start()  # a cluster that cannot be reached is refused here, before any run is sent
        log(f"{len(jobs)} runs: {skipped} finished (skipped), {len(pending)} to run {backend.describe()}")
        bar = progress_bar(len(pending), enabled=progress, desc="sweep", unit="run")

        def finished(job: SweepJob, status: str, message: str, seconds: float) -> None:
            results.append((job, status, message))
            bar.update(1)
            if status == "failed":
                bar.set_postfix_str(f"{sum(item[1] == 'failed' for item in results)} failed", refresh=True)
            log(f"{status:6s} {job.run_dir}  {message}  ({seconds:.1f} s)")

        try:
            backend.run(pending, finished, checkpoint_seconds=checkpoint_seconds)
        finally:
            bar.close()
    finally:
        backend.close()
    failures = [(str(job.run_dir), message) for job, status, message in results if status == "failed"]
    return {"total": len(jobs), "skipped": skipped, "ran": len(results) - len(failures), "failed": failures}
