"""What every training method is to its callers (:func:`train.fitting.fit`, :mod:`train.run`, tests).

A method trains on one :class:`~train.data.TrainingData` in *units* (epochs of a phase). After
each unit its whole state can be saved (:meth:`Method.state`); :meth:`Method.load_state` continues
from there to bit-identical results on CPU, after :meth:`Method.check_state` has refused a state
of another run. A method without epochs (ridge) has no units and is finished when built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import numpy as np

    from train.config import TrainConfig
    from train.data import TrainingData


@dataclass
class Unit:
    """One unit of work: a phase's epoch."""

    phase: str  # "supervised", "reference" or "semi"
    epoch: int  # 1-based within the phase
    epochs: int  # of the phase


class Method(Protocol):
    """The declared interface of a training method (one module per family in :mod:`train.methods`)."""

    name: str  # the config's method name, saved in its state
    config: TrainConfig
    data: TrainingData
    units: list[Unit]  # the whole plan
    completed: int  # units done
    history: list[dict]  # one record per completed unit (losses, seconds, validation ρ)
    epoch_predictions: list[tuple[int, np.ndarray]]  # (unit, test predictions) with keep_epoch_predictions

    @property
    def finished(self) -> bool: ...

    def run_unit(self) -> dict:
        """Train the next unit; returns its history record."""

    def session(self) -> AbstractContextManager:
        """A context for running units: inside it a method may compute beside the caller (trs's gate
        workers), and leaving it ends that, finished or not (:func:`train.fitting.train_units`).
        Units run outside it give the same results."""

    def predict_scores(self, indices) -> np.ndarray:
        """Predictions for the videos ``indices`` (rows of ``data.keys``), in the score's own units."""

    def state(self) -> dict:
        """Everything needed to continue (tensors and plain data: loads with ``weights_only=True``)."""

    def check_state(self, state) -> None:
        """Raise :class:`~train.methods.CheckpointMismatch` unless ``state`` continues this very run."""

    def load_state(self, state: dict) -> None:
        """Continue from ``state``, checked first (a mismatch changes nothing)."""

    def model_summary(self) -> dict:
        """What ``metrics.json`` says about the model (parameter counts, the chosen penalty)."""

    def diagnostics(self) -> dict | None:
        """``diagnostics.json``'s content, or ``None`` for a method that writes none."""

    def prediction_fields(self) -> dict:
        """What the final checkpoint adds for scoring new videos beyond :meth:`state`
        (the target standardisation of a neural head; nothing for ridge)."""
