"""Train one configuration in memory: :func:`fit` -> :class:`FitResult`. Writes nothing.

The in-memory half of a run, usable from a notebook and from the benchmarks; :mod:`train.run`
adds the run folder around it (checkpoints, resume, atomic publishing, the lock)::

    from train import build_config, fit
    result = fit(build_config(features="features/fisv.h5", dataset="fis-v", data_root="...", method="trs"))
    result.test["spearman"], result.predictions, result.diagnostics
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from aqa.errors import UserError
from aqa.metrics import known_pairs, measures, spearman
from aqa.progress import progress_bar
from train.config import TrainConfig
from train.data import TrainingData, prepare_data
from train.methods import Method, make_method


class TrainingDiverged(UserError):
    """The trained model predicts NaN or infinity."""


@dataclass
class FitResult:
    """A trained method and what it predicts and measures (test never used for any choice)."""

    config: TrainConfig
    data: TrainingData
    method: Method  # trained: predict_scores, state(), model_summary()
    predictions: np.ndarray  # every row of data.keys, in the score's own units
    test: dict  # {"spearman", "rl2", "mse"} on the test split
    validation: dict | None  # the same on the validation split, when one was carved
    # {"spearman"} against the unlabelled videos' true labels (training never sees them), when at
    # least two are known; None when there is nothing to measure (an undefined ρ is {"spearman": None}).
    unlabelled: dict | None
    diagnostics: dict | None  # diagnostics.json's content (trs), else None
    seconds: float  # training and measuring in this call

    @property
    def state(self) -> dict:
        """The trained method's final state (what checkpoint.pt holds besides the run's fields)."""
        return self.method.state()


def train_units(method: Method, progress: bool | None = None,
                after_unit: Callable[[Method, dict], None] | None = None) -> None:
    """Run ``method``'s remaining units, with a progress bar (on when stderr is a terminal unless
    ``progress`` says); ``after_unit(method, record)`` after each (e.g. to save a checkpoint)."""
    config = method.config
    bar = progress_bar(len(method.units), enabled=progress, desc=f"{config.method} r={config.ratio:g} s={config.seed}",
                       unit="epoch", dynamic_ncols=True, leave=True)
    bar.update(method.completed)
    try:
        with method.session():  # trs's gate workers, started beside the burn-in, end with it
            while not method.finished:
                record = method.run_unit()
                bar.update(1)
                shown = {key: (f"{value:.4f}" if isinstance(value, float) else value) for key, value in record.items()
                         if key not in ("seconds",) and value is not None}
                bar.set_postfix(shown, refresh=False)
                if after_unit is not None:
                    after_unit(method, record)
    finally:
        bar.close()


def fit(config: TrainConfig, data: TrainingData | None = None, *, progress: bool | None = None,
        method: Method | None = None, after_unit: Callable[[Method, dict], None] | None = None) -> FitResult:
    """Train ``config`` (on ``data``, else on the data it names: then it is validated and read
    here) and measure the final model. ``method``: one already made on ``data`` (e.g. restored from
    a checkpoint), trained on from where it is. Raises :class:`TrainingDiverged` if the model
    predicts NaN or infinity."""
    started = time.perf_counter()
    if data is None:
        config.validate()
        data = prepare_data(config)
    if method is None:
        method = make_method(config, data)
    train_units(method, progress, after_unit)

    predictions = method.predict_scores(np.arange(len(data.keys)))
    if not np.isfinite(predictions).all():
        raise TrainingDiverged("training diverged: the model predicts NaN or infinity (try a lower optim.lr)")
    validation = None
    if len(data.validation):
        validation = measures(data.scores[data.validation], predictions[data.validation])
    unlabelled = known_pairs(data.scores[data.unlabelled], predictions[data.unlabelled])
    return FitResult(
        config=config, data=data, method=method, predictions=predictions,
        test=measures(data.scores[data.test], predictions[data.test]),
        validation=validation,
        unlabelled=None if unlabelled is None else {"spearman": spearman(*unlabelled)},
        diagnostics=method.diagnostics(),
        seconds=time.perf_counter() - started,
    )
