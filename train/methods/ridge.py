"""``ridge``: closed-form ridge regression on canonical features averaged per time segment (no epochs).

The same :class:`~train.methods.Method` as the neural methods, with an empty plan: fitted when
built, finished at once, and its state only says what it is (the fit is recomputed on resume,
never loaded: deterministic and instantaneous).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from train.config import TrainConfig
from train.data import TrainingData, ridge_features
from train.methods.interface import Unit
from train.methods.state_checks import STATE_FORMAT, check_identity, require


def fit_ridge(features: np.ndarray, targets: np.ndarray, ridge) -> tuple[np.ndarray, float, float, dict]:
    """Ridge regression of ``targets`` on the rows of ``features`` (float64), in the dual (fewer
    videos than features), with ``ridge.alpha`` or, for ``"auto"``, the penalty of ``ridge.alphas``
    with the least exact leave-one-out error. Returns (weights, bias, alpha, {alpha: LOO MSE})."""
    feature_mean, target_mean = features.mean(axis=0), targets.mean()
    centred, centred_targets = features - feature_mean, targets - target_mean
    gram = centred @ centred.T
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    projected = eigenvectors.T @ centred_targets
    count = len(targets)
    loo_errors = {}
    if ridge.alpha != "auto":
        alpha = float(ridge.alpha)
    else:
        for candidate in ridge.alphas:
            shrink = eigenvalues / (eigenvalues + candidate)
            fitted = eigenvectors @ (shrink * projected)
            leverage = (eigenvectors ** 2) @ shrink + 1.0 / count
            residual = (centred_targets - fitted) / np.clip(1.0 - leverage, 1e-6, None)
            loo_errors[float(candidate)] = float(np.mean(residual ** 2))
        alpha = min(loo_errors, key=loo_errors.get)
    dual = eigenvectors @ (projected / (eigenvalues + alpha))
    weights = centred.T @ dual
    bias = target_mean - feature_mean @ weights
    return weights, float(bias), alpha, loo_errors


class RidgeMethod:
    """The penalty ``alpha`` is fixed (``ridge.alpha``, a positive number) or chosen from
    ``ridge.alphas`` by the exact leave-one-out error on the labelled subset (``ridge.alpha = "auto"``)."""

    name = "ridge"

    def __init__(self, config: TrainConfig, data: TrainingData):
        self.config = config
        self.data = data
        self.units: list[Unit] = []
        self.completed = 0
        self.history: list[dict] = []
        self.epoch_predictions: list[tuple[int, np.ndarray]] = []
        self.pooled = ridge_features(data.tokens[:, 0], config.ridge, data.feature_mean, data.feature_std)
        self.weights, self.bias, self.alpha, self.loo_errors = self._fit()

    @property
    def finished(self) -> bool:
        return True

    def run_unit(self) -> dict:
        raise RuntimeError("ridge regression has no epochs to run (it is fitted when made)")

    def _fit(self):
        data = self.data
        return fit_ridge(self.pooled[data.labelled], data.training_target(data.labelled), self.config.ridge)

    @contextlib.contextmanager
    def session(self):
        """Nothing to start or end: ridge is fitted when built."""
        yield self

    def predict_scores(self, indices) -> np.ndarray:
        indices = np.asarray(indices)
        if len(indices) == 0:
            return np.zeros(0)
        return self.data.to_score(indices, self.pooled[indices] @ self.weights + self.bias)

    def state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "method": self.name,
            "completed": 0,
            "ridge_weights": torch.from_numpy(self.weights),
            "ridge_bias": self.bias,
            "ridge_alpha": self.alpha,
            "history": [],
            "epoch_predictions": [],
            "diagnostics": {},
        }

    def check_state(self, state) -> None:
        """Only the identity matters: the fit is recomputed, never loaded."""
        completed = check_identity(state, self.name)
        require(completed == 0, f"claims {completed} finished epochs but ridge regression has none")

    def load_state(self, state: dict):
        self.check_state(state)  # then nothing: refitting gives the same weights

    def model_summary(self) -> dict:
        return {"ridge_alpha": self.alpha, "ridge_loo_mse": self.loo_errors or None}

    def diagnostics(self) -> dict | None:
        return None

    def prediction_fields(self) -> dict:
        return {}  # the weights predict the target itself
