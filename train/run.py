"""One training run: a run folder that appears complete or not at all, resumable after a kill.

The run is built in ``.<name>.partial/`` beside the run folder and renamed into place when
everything is written. While training, that folder holds ``config.json``, ``split.json`` and a
``checkpoint.pt`` with the whole training state (models, optimisers, memories, generator and RNG
states), saved after an epoch at most every ``checkpoint_seconds``; ``--resume`` continues from
it and reaches the same final numbers as an uninterrupted run (CPU, same thread count). The
process training a run holds its lock (``.<name>.lock`` beside it, :class:`aqa.files.FileLock`):
a second process training the same folder is refused with the holder named.

A finished run folder holds:

* ``config.json``: the :class:`~train.config.TrainConfig` (plus what it ``resolved`` to);
* ``split.json``: ``{"labelled", "unlabelled", "test"[, "validation"]}`` key lists;
* ``predictions.csv``: ``key,split,true,pred,labelled,group`` for train and test videos, in the
  score's own units (``true`` empty for a train video without a score);
* ``metrics.json``: test-split measures of the final model (``spearman``, ``rl2``, ``mse``; no
  model selection on test), identity and sizes, validation measures when a validation set was
  carved;
* ``checkpoint.pt``: final state (tensors and plain data; ``torch.load(weights_only=True)``);
* ``diagnostics.json`` (trs): pseudo-label quality against the unlabelled videos' true labels;
* ``epoch_predictions.csv`` (only with ``keep_epoch_predictions``): ``epoch,key,true,pred`` of the
  test videos after every epoch, for the evaluator's clearly labelled best-on-test mode.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aqa import __version__
from aqa.config import read_json, to_dict, write_json
from aqa.errors import UserError
from aqa.files import FileLock, atomic_write_bytes, atomic_writer, create_temporary_folder, write_failure
from evaluate.metrics import mse, rl2, spearman
from train.config import TrainConfig, config_from_json
from train.data import TrainingData, check_config, prepare_data
from train.engine import CheckpointMismatch, make_trainer

CHECKPOINT = "checkpoint.pt"
RUN_FILES = ("config.json", "split.json", "predictions.csv", "metrics.json", CHECKPOINT)


class StoppedEarly(Exception):
    """Raised after ``stop_after_epoch`` units (a simulated interruption for tests)."""


def partial_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.partial"


def is_finished(run_dir: Path) -> bool:
    return all((run_dir / name).is_file() for name in RUN_FILES)


def finished_config_matches(run_dir: Path, config: TrainConfig) -> bool:
    """True when ``run_dir`` is a finished run of exactly ``config``."""
    if not is_finished(run_dir):
        return False
    try:
        stored = config_from_json(read_json(run_dir / "config.json"), run_dir / "config.json")
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
    """What the run (not the trainer) adds to a checkpoint: elapsed time, and in the final one the
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


def _restore_checkpoint(trainer, state: dict, config: TrainConfig, data: TrainingData, path: Path) -> float:
    """Check ``state`` against the run it claims to continue, then load it into ``trainer``;
    returns the seconds of training it already holds. Any mismatch is one :class:`UserError`
    naming the checkpoint, raised before the state is used (so nothing is trained or published)."""
    try:
        _check_run_fields(state, config, data)
        trainer.load_state(state)  # checks the training state first (Trainer.check_state)
    except CheckpointMismatch as error:
        raise UserError(f"cannot resume: the checkpoint {error}; run without --resume to start over", path) from None
    except (ValueError, KeyError, RuntimeError, TypeError) as error:  # what the checks did not foresee
        raise UserError(f"cannot resume from this checkpoint ({error}); run without --resume to start over",
                        path) from None
    return float(state.get("wall_seconds", 0.0))


def _format_number(value: float) -> str:
    return "" if not math.isfinite(value) else repr(float(value))


def _predictions_csv(data: TrainingData, predicted: np.ndarray) -> str:
    labelled = set(data.labelled.tolist())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "split", "true", "pred", "labelled", "group"])
    train_rows = np.concatenate([data.labelled, data.unlabelled, data.validation])
    for split, rows in (("train", train_rows), ("test", data.test)):
        for index in rows:
            writer.writerow([data.keys[index], split, _format_number(data.scores[index]),
                             _format_number(predicted[index]), int(index in labelled), data.groups[index]])
    return out.getvalue()


def _epoch_predictions_csv(data: TrainingData, epoch_predictions) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", "key", "true", "pred"])
    for epoch, predicted in epoch_predictions:
        for index, value in zip(data.test, predicted):
            writer.writerow([epoch, data.keys[index], _format_number(data.scores[index]), _format_number(value)])
    return out.getvalue()


def _measures(true: np.ndarray, predicted: np.ndarray) -> dict:
    return {"spearman": spearman(true, predicted), "rl2": rl2(true, predicted), "mse": mse(true, predicted)}


def _progress_bar(total: int, enabled: bool | None, description: str):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, disable=not enabled, desc=description, unit="epoch", dynamic_ncols=True, leave=True)


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
    check_config(config)
    if _check_run_dir(run_dir, config, resume, overwrite) == "done":
        log(f"{run_dir}: already finished with this configuration")
        return read_json(run_dir / "metrics.json")
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
        return read_json(run_dir / "metrics.json")
    work = partial_dir(run_dir)
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise UserError("the run's work folder is a symbolic link or a file; remove it", work)
    trainer = make_trainer(config, data)
    elapsed_before = 0.0
    resumed = False
    if resume and (work / CHECKPOINT).is_file() and (work / "config.json").is_file():
        stored = config_from_json(read_json(work / "config.json"), work / "config.json")
        if stored.identity() == config.identity():
            state = load_checkpoint(work / CHECKPOINT)
            elapsed_before = _restore_checkpoint(trainer, state, config, data, work / CHECKPOINT)
            resumed = True
            log(f"resuming {run_dir} after epoch {trainer.completed} of {len(trainer.units)}")
        else:
            log(f"{work}: interrupted run of another configuration; starting over")
    if not resumed:
        try:
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
        except OSError as error:
            raise write_failure(error, work) from None
        write_json(work / "config.json", to_dict(config))
        write_json(work / "split.json", data.split_lists())

    started = time.perf_counter()
    last_save = started

    def wall() -> float:
        return elapsed_before + time.perf_counter() - started

    def save():
        _save_checkpoint(work / CHECKPOINT, {**trainer.state(), "wall_seconds": wall()})

    bar = _progress_bar(len(trainer.units), progress, f"{config.method} r={config.ratio:g} s={config.seed}")
    bar.update(trainer.completed)
    try:
        while not trainer.finished:
            record = trainer.run_unit()
            bar.update(1)
            shown = {key: (f"{value:.4f}" if isinstance(value, float) else value) for key, value in record.items()
                     if key not in ("seconds",) and value is not None}
            bar.set_postfix(shown, refresh=False)
            stopping = stop_after_epoch is not None and trainer.completed >= stop_after_epoch
            if stopping or time.perf_counter() - last_save >= checkpoint_seconds:
                save()
                last_save = time.perf_counter()
            if stopping and not trainer.finished:
                raise StoppedEarly(f"stopped after epoch {trainer.completed} (resume with --resume)")
    finally:
        bar.close()

    all_rows = np.arange(len(data.keys))
    predicted = trainer.predict_scores(all_rows)
    if not np.isfinite(predicted).all():
        raise UserError("training diverged: the model predicts NaN or infinity (try a lower optim.lr)", work)
    test_measures = _measures(data.scores[data.test], predicted[data.test])
    metrics = {
        **test_measures,
        "method": config.method,
        "ratio": config.ratio,
        "seed": config.seed,
        "target": data.target,
        "dataset": data.dataset_name,
        "preset": config.preset,
        "difficulty_aware": data.difficulty_aware,
        "n_test": int(len(data.test)),
        "n_labelled": int(len(data.labelled)),
        "n_unlabelled": int(len(data.unlabelled)),
        "n_validation": int(len(data.validation)),
        "epochs": len(trainer.units),
        "wall_seconds": round(wall(), 3),
        "torch_threads": torch.get_num_threads(),
        "protocol": "final model, test split never used for any choice",
        **trainer.model_summary(),
    }
    if len(data.validation):
        validation = _measures(data.scores[data.validation], predicted[data.validation])
        metrics.update({f"validation_{name}": value for name, value in validation.items()})
    unlabelled_truth = data.scores[data.unlabelled]
    known = np.isfinite(unlabelled_truth)
    if known.sum() >= 2:
        metrics["unlabelled_spearman"] = spearman(unlabelled_truth[known], predicted[data.unlabelled][known])

    atomic_write_bytes(work / "predictions.csv", _predictions_csv(data, predicted).encode())
    if config.keep_epoch_predictions:
        atomic_write_bytes(work / "epoch_predictions.csv", _epoch_predictions_csv(data, trainer.epoch_predictions).encode())
    if hasattr(trainer, "finish_diagnostics"):
        write_json(work / "diagnostics.json", trainer.finish_diagnostics())
    final_state = {
        **trainer.state(),
        "wall_seconds": wall(),
        "final": True,
        "config": to_dict(config),
        "keys": list(data.keys),
        "feature_mean": torch.from_numpy(data.feature_mean),
        "feature_std": torch.from_numpy(data.feature_std),
        "num_tokens": data.num_tokens,
    }
    if hasattr(trainer, "target_mean"):
        final_state.update(target_mean=trainer.target_mean, target_std=trainer.target_std)
    _save_checkpoint(work / CHECKPOINT, final_state)
    write_json(work / "metrics.json", metrics)  # last: its presence marks the run finished

    _publish_run_folder(work, run_dir)
    return metrics


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
