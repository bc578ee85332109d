"""One training run: a run folder that appears complete or not at all, resumable after a kill.

The run is built in ``.<name>.partial/`` beside the run folder and renamed into place when
everything is written. While training, that folder holds ``config.json``, ``split.json`` and a
``checkpoint.pt`` with the whole training state (models, optimisers, memories, generator and RNG
states), saved after an epoch at most every ``checkpoint_seconds``; ``--resume`` continues from
it and reaches the same final numbers as an uninterrupted run (CPU, same thread count). The
process training a run holds its lock (``.<name>.lock`` beside it, :class:`aqa.files.FileLock`):
a second process training the same folder is refused with the holder named.

A finished run folder holds the files :mod:`aqa.run_folder` describes (the contract with
evaluation and ``predict``): ``config.json``, ``split.json``, ``predictions.csv``, ``metrics.json``,
``checkpoint.pt`` (final state, ``torch.load(weights_only=True)``), ``diagnostics.json`` (trs) and,
with ``keep_epoch_predictions``, ``epoch_predictions.csv``; this module writes them through it.
The final checkpoint is the method's state plus ``wall_seconds``, ``final``, ``config``, ``keys``,
``feature_mean``, ``feature_std``, ``num_tokens`` and, for a neural head, ``target_mean`` and
``target_std`` (what ``predict`` needs). The training itself is :func:`train.fitting.fit`, in memory.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from aqa import __version__, run_folder
from aqa.config import read_json, to_dict, write_json
from aqa.errors import UserError
from aqa.files import FileLock, atomic_writer, create_temporary_folder, write_failure
from aqa.run_folder import CONFIG_FILE, DIAGNOSTICS_FILE, METRICS_FILE, SPLIT_FILE, RunIdentity, is_finished
from train.config import TrainConfig, config_from_json
from train.data import TrainingData, prepare_data
from train.fitting import FitResult, TrainingDiverged, fit
from train.methods import CheckpointMismatch, Method, make_method
from train.methods.gate import describe_outcome
from train.processes import keep_freed_memory_in_the_process

CHECKPOINT = run_folder.CHECKPOINT_FILE


class StoppedEarly(Exception):
    """Raised after ``stop_after_epoch`` units (a simulated interruption for tests)."""


def partial_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.partial"


def finished_config_matches(run_dir: Path, config: TrainConfig) -> bool:
    """True when ``run_dir`` is a finished run of exactly ``config``."""
    if not is_finished(run_dir):
        return False
    try:
        stored = config_from_json(read_json(run_dir / CONFIG_FILE), run_dir / CONFIG_FILE)
    except UserError:
        return False
    return stored.identity() == config.identity()


def _save_checkpoint(path: Path, state: dict):
    with atomic_writer(path) as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A run's checkpoint (tensors and plain data only): a dict, else a :class:`UserError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError("checkpoint not found", path) from None
    except Exception as error:  # truncated files raise many types
        raise UserError(f"unreadable checkpoint ({type(error).__name__}: {error})", path) from None
    if not isinstance(state, dict):
        raise UserError(f"not a run checkpoint (holds a {type(state).__name__}, expected a dict of training state)",
                        path)
    return state


def _check_run_fields(state: dict, config: TrainConfig, data: TrainingData) -> None:
    """What the run (not the method) adds to a checkpoint: elapsed time, and in the final one the
    configuration and the videos it was trained on; each must fit the run resuming from it."""
    seconds = state.get("wall_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise CheckpointMismatch(f"has wall_seconds {seconds!r:.40}, expected a number of seconds")
    if "config" in state:
        try:
            stored = config_from_json(state["config"], "the checkpoint's config")
        except UserError as error:
            raise CheckpointMismatch(f"has a config that is not a run configuration ({error.problem})") from None
        if stored.identity() != config.identity():
            raise CheckpointMismatch("was saved by a run of another configuration than this run's config.json")
    if "keys" in state and (not isinstance(state["keys"], list) or state["keys"] != list(data.keys)):
        raise CheckpointMismatch("was saved by a run on other videos than this run's features and labels")


def _restore_checkpoint(method: Method, state: dict, config: TrainConfig, data: TrainingData, path: Path) -> float:
    """Check ``state`` against the run it claims to continue, then load it into ``method``;
    returns the seconds of training it already holds. Any mismatch is one :class:`UserError`
    naming the checkpoint, raised before the state is used (so nothing is trained or published)."""
    try:
        _check_run_fields(state, config, data)
        method.load_state(state)  # checks the training state first (Method.check_state)
    except CheckpointMismatch as error:
        raise UserError(f"cannot resume: the checkpoint {error}; run without --resume to start over", path) from None
    except (ValueError, KeyError, RuntimeError, TypeError) as error:  # what the checks did not foresee
        raise UserError(f"cannot resume from this checkpoint ({error}); run without --resume to start over",
                        path) from None
    return float(state.get("wall_seconds", 0.0))


def _prediction_rows(data: TrainingData, predicted: np.ndarray):
    """``predictions.csv``'s rows (:func:`aqa.run_folder.predictions_csv`): train videos, then test."""
    labelled = set(data.labelled.tolist())
    train_rows = np.concatenate([data.labelled, data.unlabelled, data.validation])
    for split, rows in (("train", train_rows), ("test", data.test)):
        for index in rows:
            yield data.keys[index], split, data.scores[index], predicted[index], index in labelled, data.groups[index]


def _epoch_prediction_rows(data: TrainingData, epoch_predictions):
    """``epoch_predictions.csv``'s rows: every test video after every epoch."""
    for epoch, predicted in epoch_predictions:
        for index, value in zip(data.test, predicted):
            yield epoch, data.keys[index], data.scores[index], value


def _check_run_dir(run_dir: Path, config: TrainConfig, resume: bool, overwrite: bool) -> str:
    """'fresh', 'done' (finished run of this config, with resume) or raises."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError("run folder path exists and is not a folder", run_dir)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if overwrite:
            return "fresh"
        if resume and finished_config_matches(run_dir, config):
            return "done"
        what = "a finished run" if is_finished(run_dir) else "not empty"
        raise UserError(f"run folder exists ({what}); use another --run-dir, or --overwrite to replace it", run_dir)
    return "fresh"


def train_run(
    config: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    stop_after_epoch: int | None = None,
    checkpoint_seconds: float = 30.0,
    log=None,
) -> dict:
    """Train ``config`` into ``run_dir``; returns the metrics. Input problems raise UserError
    before anything is written."""
    run_dir = Path(run_dir)
    log = log or (lambda message: None)
    config.validate()
    if _check_run_dir(run_dir, config, resume, overwrite) == "done":
        log(f"{run_dir}: already finished with this configuration")
        return read_json(run_dir / METRICS_FILE)
    keep_freed_memory_in_the_process()  # once per process, before the run allocates anything
    data = prepare_data(config)
    config.resolved = {**data.summary(), "software_version": __version__}
    # Inputs are checked; from here on the run folder is written, by this process only.
    with FileLock(run_dir, "the run folder"):
        return _train_in_locked_run_folder(
            config, run_dir, data, resume=resume, overwrite=overwrite, progress=progress,
            stop_after_epoch=stop_after_epoch, checkpoint_seconds=checkpoint_seconds, log=log)


def _train_in_locked_run_folder(config: TrainConfig, run_dir: Path, data: TrainingData, *, resume: bool,
                                overwrite: bool, progress: bool | None, stop_after_epoch: int | None,
                                checkpoint_seconds: float, log) -> dict:
    """The part of :func:`train_run` that writes, under the run folder's lock (``.<name>.lock``)."""
    # Checked again under the lock: another process may have finished this run meanwhile.
    if _check_run_dir(run_dir, config, resume, overwrite) == "done":
        log(f"{run_dir}: already finished with this configuration")
        return read_json(run_dir / METRICS_FILE)
    work = partial_dir(run_dir)
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise UserError("the run's work folder is a symbolic link or a file; remove it", work)
    method = make_method(config, data)
    elapsed_before = 0.0
    resumed = False
    if resume and (work / CHECKPOINT).is_file() and (work / CONFIG_FILE).is_file():
        stored = config_from_json(read_json(work / CONFIG_FILE), work / CONFIG_FILE)
        if stored.identity() == config.identity():
            state = load_checkpoint(work / CHECKPOINT)
            elapsed_before = _restore_checkpoint(method, state, config, data, work / CHECKPOINT)
            resumed = True
            log(f"resuming {run_dir} after epoch {method.completed} of {len(method.units)}")
        else:
            log(f"{work}: interrupted run of another configuration; starting over")
    if not resumed:
        try:
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
        except OSError as error:
            raise write_failure(error, work) from None
        write_json(work / CONFIG_FILE, to_dict(config))
        write_json(work / SPLIT_FILE, data.split_lists())

    started = time.perf_counter()
    last_save = started

    def wall() -> float:
        return elapsed_before + time.perf_counter() - started

    def checkpoint_after(method: Method, record: dict) -> None:
        """After each unit: save a checkpoint every ``checkpoint_seconds`` (and when stopping)."""
        nonlocal last_save
        stopping = stop_after_epoch is not None and method.completed >= stop_after_epoch
        if stopping or time.perf_counter() - last_save >= checkpoint_seconds:
            _save_checkpoint(work / CHECKPOINT, {**method.state(), "wall_seconds": wall()})
            last_save = time.perf_counter()
        if stopping and not method.finished:
            raise StoppedEarly(f"stopped after epoch {method.completed} (resume with --resume)")

    try:
        result = fit(config, data, progress=progress, method=method, after_unit=checkpoint_after)
    except TrainingDiverged as error:
        raise UserError(error.problem, work) from None
    metrics = _metrics(result, wall())
    _write_run_files(work, result, metrics, wall())
    _publish_run_folder(work, run_dir)
    gate = (result.diagnostics or {}).get("gate")
    if gate:
        log(describe_outcome(gate))
    return metrics


def _metrics(result: FitResult, wall_seconds: float) -> dict:
    """metrics.json: the final model's test measures, the run's identity, sizes and cost."""
    config, data, method = result.config, result.data, result.method
    identity = RunIdentity(dataset=data.dataset_name, target=data.target, method=config.method,
                           ratio=config.ratio, seed=config.seed, preset=config.preset)
    metrics = {
        **result.test,
        **identity.as_dict(),
        "difficulty_aware": data.difficulty_aware,
        "n_test": int(len(data.test)),
        "n_labelled": int(len(data.labelled)),
        "n_unlabelled": int(len(data.unlabelled)),
        "n_validation": int(len(data.validation)),
        "epochs": len(method.units),
        "wall_seconds": round(wall_seconds, 3),
        "torch_threads": torch.get_num_threads(),
        "protocol": "final model, test split never used for any choice",
        **method.model_summary(),
    }
    if result.validation is not None:
        metrics.update({f"validation_{name}": value for name, value in result.validation.items()})
    if result.unlabelled is not None:
        metrics["unlabelled_spearman"] = result.unlabelled["spearman"]
    return metrics


def _write_run_files(work: Path, result: FitResult, metrics: dict, wall_seconds: float) -> None:
    """The finished run's files into the work folder, through the run-folder contract."""
    config, data, method = result.config, result.data, result.method
    run_folder.write_predictions(work, _prediction_rows(data, result.predictions))
    if config.keep_epoch_predictions:
        run_folder.write_epoch_predictions(work, _epoch_prediction_rows(data, method.epoch_predictions))
    if result.diagnostics is not None:
        write_json(work / DIAGNOSTICS_FILE, result.diagnostics)
    final_state = {
        **method.state(),
        "wall_seconds": wall_seconds,
        "final": True,
        "config": to_dict(config),
        "keys": list(data.keys),
        "feature_mean": torch.from_numpy(data.feature_mean),
        "feature_std": torch.from_numpy(data.feature_std),
        "num_tokens": data.num_tokens,
        **method.prediction_fields(),
    }
    _save_checkpoint(work / CHECKPOINT, final_state)
    run_folder.write_metrics(work, metrics)  # last: its presence marks the run finished


def _publish_run_folder(work: Path, run_dir: Path) -> None:
    """Rename the finished work folder to ``run_dir`` (replacing an old run with --overwrite)."""
    try:
        if run_dir.exists():
            # --overwrite: move the old folder aside first so that the new one appears in one
            # rename. The aside name is a fresh empty folder of our own, which rename replaces.
            old = create_temporary_folder(run_dir, suffix=".old")
            os.replace(run_dir, old)
            os.replace(work, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, run_dir)
    except OSError as error:
        raise write_failure(error, run_dir) from None
