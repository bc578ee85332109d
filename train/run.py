"""One training run: a run folder that appears complete or not at all, resumable after a kill.

The run is built in ``.<name>.partial/`` beside the run folder and renamed into place when
everything is written. While training, that folder holds ``config.json``, ``split.json`` and a
``checkpoint.pt`` with the whole training state (models, optimisers, memories, generator and RNG
states), saved after an epoch at most every ``checkpoint_seconds``; ``--resume`` continues from
it and reaches the same final numbers as an uninterrupted run (CPU, same thread count).

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
from aqa.files import atomic_write_bytes
from evaluate.metrics import mse, rl2, spearman
from train.config import TrainConfig, config_from_json
from train.data import TrainingData, check_config, prepare_data
from train.engine import make_trainer

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
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A run's checkpoint (tensors and plain data only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError("checkpoint not found", path) from None
    except Exception as error:  # truncated files raise many types
        raise UserError(f"unreadable checkpoint ({type(error).__name__}: {error})", path) from None


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

    work = partial_dir(run_dir)
    trainer = make_trainer(config, data)
    elapsed_before = 0.0
    resumed = False
    if resume and (work / CHECKPOINT).is_file() and (work / "config.json").is_file():
        stored = config_from_json(read_json(work / "config.json"), work / "config.json")
        if stored.identity() == config.identity():
            state = load_checkpoint(work / CHECKPOINT)
            try:
                trainer.load_state(state)
            except (ValueError, KeyError, RuntimeError) as error:
                raise UserError(f"cannot resume from this checkpoint ({error}); run without --resume", work) from None
            elapsed_before = float(state.get("wall_seconds", 0.0))
            resumed = True
            log(f"resuming {run_dir} after epoch {trainer.completed} of {len(trainer.units)}")
        else:
            log(f"{work}: interrupted run of another configuration; starting over")
    if not resumed:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
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

    if run_dir.exists():
        # --overwrite: move the old folder aside first so that the new one appears in one rename.
        old = run_dir.parent / f".{run_dir.name}.old.{os.getpid()}"
        os.replace(run_dir, old)
        os.replace(work, run_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, run_dir)
    return metrics
