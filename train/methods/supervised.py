"""``supervised``: the student head on labelled videos only, and the base of every neural method.

The labelled-only phase here is also the burn-in of the semi-supervised methods, which therefore
start from exactly the model ``supervised`` ends with (same seed). This class owns what they all
share: the student and its optimiser, the seed streams, batched inference, the run's state and
its checks; a subclass adds phases (:meth:`_plan_units`, :meth:`_epoch`) and state entries
(:meth:`_extra_state`, :meth:`_check_extra_state`, :meth:`_load_extra_state`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Callable

import numpy as np
import torch

from aqa.metrics import spearman
from train.config import TrainConfig
from train.data import TrainingData
from train.methods.interface import Unit
from train.methods.state_checks import (
    STATE_FORMAT, check_entry, check_history, check_identity, check_module_state, check_optimiser_state,
    check_tensor, require,
)
from train.models import MaskedRecovery, MixerHead, make_optimiser, regression_loss
from train.views import ViewMaker, epoch_batches

INFERENCE_BATCH = 256
# Seed streams: every random source is derived from the run seed and its own stream number.
STUDENT_STREAM, REFERENCE_STREAM, SEMI_STREAM = 1, 2, 3  # trs's gate: 4 (train.methods.gate)
# Masked-clip recovery (optim.recovery_weight): the stream bench/masked_pretrain_probe.py measured it with.
RECOVERY_STREAM = 11
# Phases in which the student does not change (no validation ρ, no kept test predictions).
STUDENT_FIXED_PHASES = ("reference", "gate")


def stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


@torch.no_grad()
def predict_in_batches(model: torch.nn.Module, indices: torch.Tensor, view: Callable[[torch.Tensor], torch.Tensor],
                       dropout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, log-variance) of ``model`` on ``view(indices)``, in batches; dropout on if asked (MC dropout)."""
    model.train(dropout)
    values, log_variances = [], []
    for start in range(0, len(indices), INFERENCE_BATCH):
        value, log_variance = model(view(indices[start:start + INFERENCE_BATCH]))
        values.append(value)
        log_variances.append(log_variance)
    model.train(False)
    return torch.cat(values), torch.cat(log_variances)


class SupervisedMethod:
    """The labelled-only phase shared by every neural method (:class:`~train.methods.Method`)."""

    name = "supervised"

    def __init__(self, config: TrainConfig, data: TrainingData):
        self.config = config
        self.data = data
        self.tokens = torch.from_numpy(data.tokens)
        targets = data.training_target(data.labelled)
        self.target_mean = float(targets.mean())
        self.target_std = float(targets.std()) or 1.0
        self.labelled = torch.from_numpy(data.labelled).long()
        self.unlabelled = torch.from_numpy(data.unlabelled).long()
        self.labelled_targets = torch.from_numpy((targets - self.target_mean) / self.target_std).float()
        # Position of each labelled video in `labelled_targets`.
        self.labelled_position = {int(index): position for position, index in enumerate(data.labelled)}
        self.units = self._plan_units()
        self.completed = 0
        self.history: list[dict] = []
        self.epoch_predictions: list[tuple[int, np.ndarray]] = []
        # Pseudo-label quality per refresh (saved as the state's "diagnostics"; empty here).
        self.pseudo_label_quality: dict = {}
        self._build()

    # ------------------------------------------------------------------ set-up

    def _plan_units(self) -> list[Unit]:
        epochs = self.config.optim.epochs
        return [Unit("supervised", epoch, epochs) for epoch in range(1, epochs + 1)]

    def _build(self):
        torch.manual_seed(stream_seed(self.config.seed, STUDENT_STREAM))
        self.generator = torch.Generator().manual_seed(stream_seed(self.config.seed, STUDENT_STREAM))
        self.views = ViewMaker(self.tokens, self.config.views, self.generator)
        self.student = MixerHead(self.data.num_tokens, self.data.feature_dim, self.config.head)
        self.optimiser = make_optimiser(self.student.parameters(), self.config.optim)
        self.recovery: MaskedRecovery | None = None
        if self.config.optim.recovery_weight > 0:
            self._build_recovery()

    def _build_recovery(self):
        """The recovery task's module, optimiser and streams. It draws its batches, masks and views
        from its own generator and its dropout from its own torch RNG state (swapped in around its
        forward pass), so the score loss's draws are exactly those of a run without it."""
        run_rng = torch.get_rng_state()
        seed = stream_seed(self.config.seed, RECOVERY_STREAM)
        self.recovery_generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.recovery_views = ViewMaker(self.tokens, self.config.views, self.recovery_generator)
        optim = self.config.optim
        self.recovery = MaskedRecovery(self.config.head.dim, self.data.feature_dim, optim.recovery_mask_share)
        self.recovery_optimiser = make_optimiser(self.recovery.parameters(), optim)
        self.recovery_rng = torch.get_rng_state()
        torch.set_rng_state(run_rng)
        # The videos the task sees: the labelled ones (drawn from all training videos it helped
        # less: research log, session 14).
        self.recovery_pool = self.labelled

    @property
    def finished(self) -> bool:
        return self.completed >= len(self.units)

    # ------------------------------------------------------------------ steps

    def _labelled_targets(self, batch: torch.Tensor) -> torch.Tensor:
        return self.labelled_targets[[self.labelled_position[int(index)] for index in batch]]

    def _step(self, loss: torch.Tensor, model: torch.nn.Module, optimiser: torch.optim.Optimizer):
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.optim.grad_clip)
        optimiser.step()

    def _supervised_epoch(self) -> dict:
        self.student.train()
        totals = {"loss": 0.0}
        batches = epoch_batches(self.labelled, self.config.optim.batch_size, self.config.optim.min_steps_per_epoch,
                                self.generator)
        if self.recovery is not None:
            totals["recovery_loss"] = 0.0
        for batch in batches:
            value, log_variance = self.student(self.views.weak(batch))
            squared, nll = regression_loss(value, log_variance, self._labelled_targets(batch))
            loss = squared + nll
            if self.recovery is not None:
                recovery = self._recovery_loss()
                loss = loss + self.config.optim.recovery_weight * recovery
                self.recovery_optimiser.zero_grad(set_to_none=True)
                totals["recovery_loss"] += recovery.item() / len(batches)
            self._step(loss, self.student, self.optimiser)
            if self.recovery is not None:
                self.recovery_optimiser.step()
            totals["loss"] += squared.item() / len(batches)
        return totals

    def _recovery_loss(self) -> torch.Tensor:
        """The masked-clip recovery loss on ``optim.recovery_batch`` videos of the pool, drawn with replacement."""
        drawn = torch.randint(0, len(self.recovery_pool), (self.config.optim.recovery_batch,),
                              generator=self.recovery_generator)
        run_rng = torch.get_rng_state()
        torch.set_rng_state(self.recovery_rng)
        try:
            return self.recovery.loss(self.student, self.recovery_views.weak(self.recovery_pool[drawn]),
                                      self.recovery_generator)
        finally:
            self.recovery_rng = torch.get_rng_state()
            torch.set_rng_state(run_rng)

    def run_unit(self) -> dict:
        unit = self.units[self.completed]
        started = time.perf_counter()
        losses = self._epoch(unit)
        self.completed += 1
        record = {"phase": unit.phase, "epoch": unit.epoch, **{key: round(value, 6) for key, value in losses.items()},
                  "seconds": round(time.perf_counter() - started, 4)}
        if len(self.data.validation) and unit.phase not in STUDENT_FIXED_PHASES:
            record["validation_spearman"] = spearman(self.data.scores[self.data.validation],
                                                     self.predict_scores(self.data.validation))
        self.history.append(record)
        if self.config.keep_epoch_predictions and unit.phase not in STUDENT_FIXED_PHASES:
            self.epoch_predictions.append((self.completed, self.predict_scores(self.data.test)))
        return record

    def _epoch(self, unit: Unit) -> dict:
        """Train ``unit``; returns its losses."""
        return self._supervised_epoch()

    @contextlib.contextmanager
    def session(self):
        """The context :func:`train.fitting.train_units` runs units in (nothing to start or end here)."""
        yield self

    # ------------------------------------------------------------------ inference

    def predict_scores(self, indices) -> np.ndarray:
        """The student's predictions for videos ``indices``, in the score's own units."""
        indices = np.ascontiguousarray(indices)  # a reversed or strided view cannot become a tensor
        if len(indices) == 0:
            return np.zeros(0)
        value, _ = predict_in_batches(self.student, torch.from_numpy(indices).long(), self.views.canonical)
        target = value.double().numpy() * self.target_std + self.target_mean
        return self.data.to_score(indices, target)

    # ------------------------------------------------------------------ state

    def state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "method": self.name,
            "completed": self.completed,
            "student": self.student.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "epoch_predictions": [(epoch, torch.from_numpy(pred)) for epoch, pred in self.epoch_predictions],
            "diagnostics": self.pseudo_label_quality,
            **self._recovery_state(),
            **self._extra_state(),
        }

    def _recovery_state(self) -> dict:
        if self.recovery is None:
            return {}
        return {"recovery": self.recovery.state_dict(), "recovery_optimiser": self.recovery_optimiser.state_dict(),
                "recovery_generator": self.recovery_generator.get_state(), "recovery_rng": self.recovery_rng}

    def _extra_state(self) -> dict:
        return {}

    def check_state(self, state) -> None:
        """Raise :class:`CheckpointMismatch` unless ``state`` is a training state of this very run:
        its method, an epoch count within the run's plan, and tensors shaped like the models'."""
        completed = check_identity(state, self.name)
        require(completed <= len(self.units),
                f"claims {completed} finished epochs but the run has {len(self.units)}")
        missing = [name for name in self.state() if name not in state]
        require(not missing, f"has no {missing[0] if missing else ''!r} entry"
                             + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        check_module_state(state.get("student"), self.student, "student")
        check_optimiser_state(state.get("optimiser"), self.optimiser, "optimiser")
        check_tensor(state.get("generator"), self.generator.get_state(), "generator")
        check_tensor(state.get("torch_rng"), torch.get_rng_state(), "torch_rng")
        check_history(state, completed)
        predictions = check_entry(state, "epoch_predictions", list)
        done = self.units[:completed]
        kept = sum(unit.phase not in STUDENT_FIXED_PHASES for unit in done)
        expected = kept if self.config.keep_epoch_predictions else 0
        require(len(predictions) == expected,
                f"has test predictions of {len(predictions)} epochs, the run would have kept {expected}")
        test_template = torch.zeros(len(self.data.test), dtype=torch.float64)
        for entry in predictions:
            require(isinstance(entry, (list, tuple)) and len(entry) == 2, "epoch_predictions holds a non-pair")
            epoch, predicted = entry
            require(isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch <= completed,
                    f"epoch_predictions names epoch {epoch!r} of {completed} finished")
            check_tensor(predicted, test_template, f"epoch_predictions of epoch {epoch}")
        check_entry(state, "diagnostics", dict)
        if self.recovery is not None:
            check_module_state(state.get("recovery"), self.recovery, "recovery")
            check_optimiser_state(state.get("recovery_optimiser"), self.recovery_optimiser, "recovery_optimiser")
            check_tensor(state.get("recovery_generator"), self.recovery_generator.get_state(), "recovery_generator")
            check_tensor(state.get("recovery_rng"), self.recovery_rng, "recovery_rng")
        self._check_extra_state(state, done)

    def _check_extra_state(self, state: Mapping, done: list[Unit]) -> None:
        pass

    def load_state(self, state: dict):
        """Continue from ``state`` (checked first: a mismatch changes nothing)."""
        self.check_state(state)
        self.completed = int(state["completed"])
        self.student.load_state_dict(state["student"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = list(state["history"])
        self.epoch_predictions = [(int(epoch), pred.numpy()) for epoch, pred in state["epoch_predictions"]]
        self.pseudo_label_quality = dict(state["diagnostics"])
        if self.recovery is not None:
            self.recovery.load_state_dict(state["recovery"])
            self.recovery_optimiser.load_state_dict(state["recovery_optimiser"])
            self.recovery_generator.set_state(state["recovery_generator"])
            self.recovery_rng = state["recovery_rng"].clone()
        self._load_extra_state(state)

    def _load_extra_state(self, state: dict):
        pass

    # ------------------------------------------------------------------ reporting

    def model_summary(self) -> dict:
        return {"student_parameters": sum(p.numel() for p in self.student.parameters())}

    def diagnostics(self) -> dict | None:
        return None

    def prediction_fields(self) -> dict:
        # The head regresses standardised targets: a predictor needs the standardisation back.
        return {"target_mean": self.target_mean, "target_std": self.target_std}
