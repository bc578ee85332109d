"""The training methods, as resumable units of work.

Every method trains on the same :class:`~train.data.TrainingData` and the same labelled subset:

* ``supervised``: the student head (:class:`~train.models.MixerHead`) on labelled videos only.
* ``mean-teacher``: the supervised model as burn-in, then a consistency loss between the
  student on strong views of unlabelled videos and an EMA teacher on weak views.
* ``pseudo-label``: the supervised model as burn-in, then self-training: each epoch the model
  labels the unlabelled videos and trains on them (strong views) with the labelled ones.
* ``trs``: teacher-reference-student (see :class:`TRSTrainer` for our reading of the paper).
* ``ridge``: closed-form ridge regression on mean-pooled features (no epochs).

Work is cut into *units* (epochs of a phase). After each unit the whole state (models,
optimisers, memories, generator and RNG states) can be saved; :meth:`Trainer.load_state`
continues from there to bit-identical results on CPU. A saved state is checked against the run
that loads it (:meth:`Trainer.check_state`) before any of it is used: a checkpoint is a file
someone may have edited, and one of the wrong structure must fail with its fault named, never
train on (or publish) a model it does not describe.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from evaluate.metrics import spearman
from train.config import TrainConfig
from train.data import TrainingData
from train.graph import (
    LABELLED_ANCHOR, knn_laplacian_from_similarity, pooled_similarity, refine_on_graph, token_similarity,
)
from train.models import MixerHead, ReferenceNetwork, ema_update, regression_loss
from train.views import ViewMaker, epoch_batches

STATE_FORMAT = 1
_INFERENCE_BATCH = 256
# Seed streams: every random source is derived from the run seed and its own stream number.
_STREAM_STUDENT, _STREAM_REFERENCE, _STREAM_SEMI = 1, 2, 3


def _seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


class CheckpointMismatch(ValueError):
    """A saved training state that does not fit the run loading it; the message says what differs."""


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise CheckpointMismatch(problem)


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def _check_tensor(value, template: torch.Tensor, name: str) -> None:
    """``value`` must be a tensor of ``template``'s shape and dtype."""
    _require(isinstance(value, torch.Tensor), f"{name} is a {type(value).__name__}, expected a tensor")
    _require(value.shape == template.shape and value.dtype == template.dtype,
             f"{name} is a {value.dtype} tensor of shape {_shape(value)}, the run's is {template.dtype} "
             f"{_shape(template)}")


def _check_entry(state: Mapping, name: str, kind: type, owner: str = ""):
    """``state[name]``, which must exist and be a ``kind`` (an ``int`` is never a ``bool`` here)."""
    where = f"{owner} {name}".strip()
    _require(name in state, f"{owner + ' ' if owner else ''}has no {name!r} entry")
    value = state[name]
    described = {int: "a whole number", bool: "true or false", list: "a list", dict: "a dict"}
    _require(isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool),
             f"{where} is {_shown(value)}, expected {described.get(kind, kind.__name__)}")
    return value


def _shown(value, limit: int = 40) -> str:
    """A short description of a checkpoint value: small plain values as written, others by type."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        text = repr(value)
        if len(text) <= limit:
            return text
    return f"a {type(value).__name__}"


def _check_identity(state, method: str) -> int:
    """The checks every trainer makes first: a dict of this format and method; returns ``completed``."""
    _require(isinstance(state, Mapping), f"holds a {type(state).__name__}, expected a training state dict")
    state_format, state_method = state.get("format"), state.get("method")
    _require(isinstance(state_format, int) and state_format == STATE_FORMAT,
             f"has state format {_shown(state_format)}, this version reads {STATE_FORMAT}")
    _require(isinstance(state_method, str) and state_method == method,
             f"was saved by a {_shown(state_method)} run, this run trains {method!r}")
    completed = _check_entry(state, "completed", int)
    _require(completed >= 0, f"claims {completed} finished epochs; a count cannot be negative")
    return completed


def _check_module_state(value, model: torch.nn.Module, name: str) -> None:
    """``value`` must be a state dict of ``model``: the same names, shapes and dtypes."""
    _require(isinstance(value, Mapping), f"{name} is a {type(value).__name__}, expected a model state dict")
    template = model.state_dict()
    missing = [key for key in template if key not in value]
    unexpected = [str(key) for key in value if key not in template]
    _require(not missing, f"{name} lacks {len(missing)} of the model's tensors "
                          f"(first: {missing[0] if missing else ''})")
    _require(not unexpected, f"{name} has {len(unexpected)} tensors the model does not "
                             f"(first: {unexpected[0] if unexpected else ''})")
    for key, tensor in template.items():
        _check_tensor(value[key], tensor, f"{name} {key}")


# Optimiser hyper-parameters come from the run's configuration; a checkpoint must not change them.
_OPTIMISER_SETTINGS = ("lr", "weight_decay", "betas", "eps", "amsgrad", "maximize")


def _check_optimiser_state(value, optimiser: torch.optim.Optimizer, name: str) -> None:
    """``value`` must be a state dict of ``optimiser``: its parameters, settings and moment shapes."""
    _require(isinstance(value, Mapping), f"{name} is a {type(value).__name__}, expected an optimiser state dict")
    template = optimiser.state_dict()
    groups = _check_entry(value, "param_groups", list, owner=name)
    _require(len(groups) == len(template["param_groups"]),
             f"{name} has {len(groups)} parameter groups, the run's optimiser {len(template['param_groups'])}")
    for stored, expected in zip(groups, template["param_groups"]):
        _require(isinstance(stored, Mapping), f"{name} has a parameter group that is a {type(stored).__name__}")
        params = stored.get("params")
        _require(isinstance(params, list) and params == expected["params"],
                 f"{name} is for {len(params) if isinstance(params, list) else _shown(params)} parameters, "
                 f"the run's optimiser has {len(expected['params'])}")
        for setting in _OPTIMISER_SETTINGS:
            if setting in expected:
                have, want = stored.get(setting), expected[setting]
                if isinstance(have, (list, tuple)) and isinstance(want, (list, tuple)):
                    have, want = list(have), list(want)
                # A tensor never equals a setting: comparing one would give a tensor, not a bool.
                _require(not isinstance(have, torch.Tensor) and have == want,
                         f"{name} {setting} is {_shown(have)}, the run's is {want!r}")
    parameters = [parameter for group in optimiser.param_groups for parameter in group["params"]]
    moments = value.get("state")
    _require(isinstance(moments, Mapping), f"{name} state is a {type(moments).__name__}, expected a dict")
    for index, entries in moments.items():
        _require(isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(parameters),
                 f"{name} has state for parameter {_shown(index)}, the run's optimiser has {len(parameters)}")
        _require(isinstance(entries, Mapping), f"{name} state of parameter {index} is a {type(entries).__name__}")
        for key, tensor in entries.items():
            where = f"{name} {key} of parameter {index}"
            if key == "step":  # a scalar count (a tensor in current torch, a number in old ones)
                _require(isinstance(tensor, (int, float, torch.Tensor)) and not isinstance(tensor, bool)
                         and (not isinstance(tensor, torch.Tensor) or tensor.numel() == 1),
                         f"{where} is not a count")
                continue
            _check_tensor(tensor, parameters[index].detach(), where)


def _check_history(state: Mapping, completed: int) -> None:
    history = _check_entry(state, "history", list)
    _require(all(isinstance(record, Mapping) for record in history), "history holds something other than records")
    _require(len(history) == completed,
             f"history has {len(history)} epoch records but the checkpoint claims {completed} finished epochs")


@dataclass
class Unit:
    """One unit of work: a phase's epoch."""

    phase: str  # "supervised", "reference" or "semi"
    epoch: int  # 1-based within the phase
    epochs: int  # of the phase


class Trainer:
    """Base: the labelled-only phase shared by every neural method."""

    method = "supervised"

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
        self.diagnostics: dict = {}
        self._build()

    # ------------------------------------------------------------------ set-up

    def _plan_units(self) -> list[Unit]:
        epochs = self.config.optim.epochs
        return [Unit("supervised", epoch, epochs) for epoch in range(1, epochs + 1)]

    def _build(self):
        torch.manual_seed(_seed(self.config.seed, _STREAM_STUDENT))
        self.generator = torch.Generator().manual_seed(_seed(self.config.seed, _STREAM_STUDENT))
        self.views = ViewMaker(self.tokens, self.config.views, self.generator)
        self.student = MixerHead(self.data.num_tokens, self.data.feature_dim, self.config.head)
        self.optimiser = torch.optim.AdamW(self.student.parameters(), lr=self.config.optim.lr,
                                           weight_decay=self.config.optim.weight_decay)

    @property
    def finished(self) -> bool:
        return self.completed >= len(self.units)

    def has_unlabelled(self) -> bool:
        return len(self.unlabelled) > 0

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
        for batch in batches:
            value, log_variance = self.student(self.views.weak(batch))
            squared, nll = regression_loss(value, log_variance, self._labelled_targets(batch))
            self._step(squared + nll, self.student, self.optimiser)
            totals["loss"] += squared.item() / len(batches)
        return totals

    def run_unit(self) -> dict:
        unit = self.units[self.completed]
        started = time.perf_counter()
        losses = self._run(unit)
        self.completed += 1
        record = {"phase": unit.phase, "epoch": unit.epoch, **{key: round(value, 6) for key, value in losses.items()},
                  "seconds": round(time.perf_counter() - started, 4)}
        if len(self.data.validation) and unit.phase != "reference":  # the student does not change there
            record["validation_spearman"] = spearman(self.data.scores[self.data.validation],
                                                     self.predict_scores(self.data.validation))
        self.history.append(record)
        if self.config.keep_epoch_predictions and unit.phase != "reference":
            self.epoch_predictions.append((self.completed, self.predict_scores(self.data.test)))
        return record

    def _run(self, unit: Unit) -> dict:
        return self._supervised_epoch()

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def _predict_standardised(self, model: torch.nn.Module, indices: torch.Tensor, dropout: bool = False,
                              view: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        model.train(dropout)
        values, log_variances = [], []
        for start in range(0, len(indices), _INFERENCE_BATCH):
            chunk = indices[start:start + _INFERENCE_BATCH]
            inputs = (view or self.views.canonical)(chunk)
            value, log_variance = model(inputs)
            values.append(value)
            log_variances.append(log_variance)
        model.train(False)
        return torch.cat(values), torch.cat(log_variances)

    def predict_scores(self, indices) -> np.ndarray:
        """The student's predictions for videos ``indices``, in the score's own units."""
        indices = np.asarray(indices)
        if len(indices) == 0:
            return np.zeros(0)
        value, _ = self._predict_standardised(self.student, torch.from_numpy(indices).long())
        target = value.double().numpy() * self.target_std + self.target_mean
        return self.data.to_score(indices, target)

    # ------------------------------------------------------------------ state

    def state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "method": self.method,
            "completed": self.completed,
            "student": self.student.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "epoch_predictions": [(epoch, torch.from_numpy(pred)) for epoch, pred in self.epoch_predictions],
            "diagnostics": self.diagnostics,
            **self._extra_state(),
        }

    def _extra_state(self) -> dict:
        return {}

    def check_state(self, state) -> None:
        """Raise :class:`CheckpointMismatch` unless ``state`` is a training state of this very run:
        its method, an epoch count within the run's plan, and tensors shaped like the models'."""
        completed = _check_identity(state, self.method)
        _require(completed <= len(self.units),
                 f"claims {completed} finished epochs but the run has {len(self.units)}")
        missing = [name for name in self.state() if name not in state]
        _require(not missing, f"has no {missing[0] if missing else ''!r} entry"
                              + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        _check_module_state(state.get("student"), self.student, "student")
        _check_optimiser_state(state.get("optimiser"), self.optimiser, "optimiser")
        _check_tensor(state.get("generator"), self.generator.get_state(), "generator")
        _check_tensor(state.get("torch_rng"), torch.get_rng_state(), "torch_rng")
        _check_history(state, completed)
        predictions = _check_entry(state, "epoch_predictions", list)
        done = self.units[:completed]
        expected = sum(unit.phase != "reference" for unit in done) if self.config.keep_epoch_predictions else 0
        _require(len(predictions) == expected,
                 f"has test predictions of {len(predictions)} epochs, the run would have kept {expected}")
        test_template = torch.zeros(len(self.data.test), dtype=torch.float64)
        for entry in predictions:
            _require(isinstance(entry, (list, tuple)) and len(entry) == 2, "epoch_predictions holds a non-pair")
            epoch, predicted = entry
            _require(isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch <= completed,
                     f"epoch_predictions names epoch {epoch!r} of {completed} finished")
            _check_tensor(predicted, test_template, f"epoch_predictions of epoch {epoch}")
        _check_entry(state, "diagnostics", dict)
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
        self.diagnostics = dict(state["diagnostics"])
        self._load_extra_state(state)

    def _load_extra_state(self, state: dict):
        pass

    def model_summary(self) -> dict:
        return {"student_parameters": sum(p.numel() for p in self.student.parameters())}


class SemiTrainer(Trainer):
    """Burn-in (the supervised schedule), then epochs over the unlabelled videos."""

    def _plan_units(self) -> list[Unit]:
        units = super()._plan_units()
        if self.has_unlabelled():
            semi = self.config.semi.semi_epochs
            units += [Unit("semi", epoch, semi) for epoch in range(1, semi + 1)]
        return units

    def _build(self):
        super()._build()
        self.teacher: MixerHead | None = None
        self.semi_generator = torch.Generator().manual_seed(_seed(self.config.seed, _STREAM_SEMI))

    def _run(self, unit: Unit) -> dict:
        if unit.phase == "supervised":
            return self._supervised_epoch()
        if unit.phase == "semi":
            if unit.epoch == 1:
                self._start_semi()
            return self._semi_epoch(unit)
        raise AssertionError(unit.phase)

    def _start_semi(self):
        # The semi-supervised phase draws from its own generator, so the burn-in is exactly the
        # supervised run of the same seed.
        self.views.generator = self.semi_generator
        self.teacher = copy.deepcopy(self.student)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def _semi_batches(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        generator = self.semi_generator
        unlabelled = epoch_batches(self.unlabelled, self.config.optim.unlabelled_batch_size, 1, generator)
        labelled = epoch_batches(self.labelled, self.config.optim.batch_size, len(unlabelled), generator)
        return labelled[:len(unlabelled)], unlabelled

    def _semi_epoch(self, unit: Unit) -> dict:
        raise NotImplementedError

    def _unlabelled_loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def _semi_steps(self) -> dict:
        self.student.train()
        totals = {"loss": 0.0, "unlabelled_loss": 0.0}
        labelled_batches, unlabelled_batches = self._semi_batches()
        weight = self.config.semi.unlabelled_weight
        for labelled, unlabelled in zip(labelled_batches, unlabelled_batches):
            value, log_variance = self.student(self.views.weak(labelled))
            squared, nll = regression_loss(value, log_variance, self._labelled_targets(labelled))
            unlabelled_loss = self._unlabelled_loss(unlabelled)
            self._step(squared + nll + weight * unlabelled_loss, self.student, self.optimiser)
            if self.teacher is not None:
                ema_update(self.teacher, self.student, self.config.semi.ema_decay)
            totals["loss"] += squared.item() / len(unlabelled_batches)
            totals["unlabelled_loss"] += unlabelled_loss.item() / len(unlabelled_batches)
        return totals

    def _extra_state(self) -> dict:
        return {
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "semi_generator": self.semi_generator.get_state(),
            "views_on_semi": self.views.generator is self.semi_generator,
        }

    def _expects_teacher(self, semi_started: bool) -> bool:
        """Whether the state after ``semi_started`` holds an EMA teacher (made when the phase starts)."""
        return semi_started

    def _check_extra_state(self, state: Mapping, done: list[Unit]) -> None:
        semi_started = any(unit.phase == "semi" for unit in done)
        _check_tensor(state.get("semi_generator"), self.semi_generator.get_state(), "semi_generator")
        views_on_semi = _check_entry(state, "views_on_semi", bool)
        _require(views_on_semi == semi_started,
                 f"views_on_semi is {views_on_semi} after {len(done)} finished epochs of the run's plan")
        teacher = state.get("teacher")
        if self._expects_teacher(semi_started):
            _require(teacher is not None, f"has no teacher after {len(done)} finished epochs")
            _check_module_state(teacher, self.student, "teacher")
        else:
            _require(teacher is None, f"has a teacher after {len(done)} finished epochs, before the run makes one")

    def _load_extra_state(self, state: dict):
        self.semi_generator.set_state(state["semi_generator"])
        if state["views_on_semi"]:
            self.views.generator = self.semi_generator
        if state["teacher"] is not None:
            self.teacher = copy.deepcopy(self.student)
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])


class MeanTeacherTrainer(SemiTrainer):
    """Consistency between the student (strong view) and the EMA teacher (weak view)."""

    method = "mean-teacher"

    def _semi_epoch(self, unit: Unit) -> dict:
        return self._semi_steps()

    def _unlabelled_loss(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.teacher.eval()
            target, _ = self.teacher(self.views.weak(batch))
        value, _ = self.student(self.views.strong(batch))
        return ((value - target) ** 2).mean()


class PseudoLabelTrainer(SemiTrainer):
    """Self-training: each epoch the model labels the unlabelled videos, then trains on them."""

    method = "pseudo-label"

    def _start_semi(self):
        self.views.generator = self.semi_generator  # no teacher: the model labels for itself

    def _expects_teacher(self, semi_started: bool) -> bool:
        return False

    def _semi_epoch(self, unit: Unit) -> dict:
        value, _ = self._predict_standardised(self.student, self.unlabelled)
        self.pseudo = torch.zeros(len(self.tokens))
        self.pseudo[self.unlabelled] = value
        self._diagnose_pseudo(value)
        return self._semi_steps()

    def _diagnose_pseudo(self, value: torch.Tensor):
        truth = self.data.scores[self.data.unlabelled]
        known = np.isfinite(truth)
        if known.sum() >= 2:
            rho = spearman(self.data.training_target(self.data.unlabelled)[known], value.numpy()[known])
            self.diagnostics.setdefault("pseudo_label_spearman", []).append(rho)

    def _unlabelled_loss(self, batch: torch.Tensor) -> torch.Tensor:
        value, _ = self.student(self.views.strong(batch))
        return ((value - self.pseudo[batch]) ** 2).mean()


class TRSTrainer(SemiTrainer):
    """Teacher-reference-student, as we read the paper (README, "TRS as we read it").

    * Burn-in on labelled data: the student (= the supervised model), then the reference
      network trained pairwise on labelled pairs (n^2 pairs: relative scores).
    * Each semi-supervised epoch starts with a refresh of the pseudo-labels:
      - teacher (EMA of the student) on weak views with MC dropout: score and confidence
        1 / (predictive variance + predicted variance);
      - reference network: the video against K labelled exemplars (same difficulty where
        known): pseudo-score = exemplar score + relative score, averaged; confidence
        1 / (spread over exemplars + predicted variance);
      - confidence memories M^T, M^R: per video the most confident output so far (stored
        confidences decay so a better later output can replace an early one);
      - fusion by confidence (precision-weighted mean), then refinement on a kNN graph of all
        training videos (label-free features; labelled videos anchored at their labels).
    * The student trains on labelled videos (weak views) and on the fused pseudo-labels of
      strong views, each video weighted by its confidence; the teacher follows by EMA.
    * The student predicts at test time.
    Switches (``semi.use_reference``, ``use_memory``, ``use_confidence``, ``use_graph``) ablate
    each part.
    """

    method = "trs"

    def _plan_units(self) -> list[Unit]:
        units = Trainer._plan_units(self)
        if self.has_unlabelled():
            if self.config.semi.use_reference:
                epochs = self.config.reference.epochs
                units += [Unit("reference", epoch, epochs) for epoch in range(1, epochs + 1)]
            semi = self.config.semi.semi_epochs
            units += [Unit("semi", epoch, semi) for epoch in range(1, semi + 1)]
        return units

    def _build(self):
        super()._build()
        self.reference: ReferenceNetwork | None = None
        self.reference_optimiser = None
        self.reference_generator = torch.Generator().manual_seed(_seed(self.config.seed, _STREAM_REFERENCE))
        count = len(self.tokens)
        # Memories in standardised target units, indexed by video; confidence 0 = empty.
        self.memory = {name: torch.zeros(count, dtype=torch.float64) for name in
                       ("teacher_value", "teacher_confidence", "reference_value", "reference_confidence")}
        self.pseudo = torch.zeros(count)
        self.weights = torch.ones(count)
        self.laplacian = None
        self._exemplar_pools = None

    def _run(self, unit: Unit) -> dict:
        if unit.phase == "reference":
            if self.reference is None:
                self._build_reference()
            return self._reference_epoch()
        return super()._run(unit)

    # ------------------------------------------------------------ reference network

    def _build_reference(self):
        # Its own seed stream: the student's burn-in stays identical to `supervised`.
        torch.manual_seed(_seed(self.config.seed, _STREAM_REFERENCE))
        self.reference = ReferenceNetwork(self.data.feature_dim, self.config.reference)
        self.reference_optimiser = torch.optim.AdamW(self.reference.parameters(), lr=self.config.optim.lr,
                                                     weight_decay=self.config.optim.weight_decay)

    def _reference_epoch(self) -> dict:
        """One epoch of relative-score training: each labelled video against random labelled exemplars."""
        self.reference.train()
        generator = self.reference_generator
        views = ViewMaker(self.tokens, self.config.views, generator)
        count = len(self.labelled)
        batch_size = max(self.config.optim.batch_size, 32)
        steps = max(self.config.optim.min_steps_per_epoch, math.ceil(count / batch_size))
        total = 0.0
        for _ in range(steps):
            first = torch.randint(0, count, (batch_size,), generator=generator)
            second = torch.randint(0, count, (batch_size,), generator=generator)
            delta, log_variance = self.reference(views.weak(self.labelled[first]), views.weak(self.labelled[second]))
            target = self.labelled_targets[first] - self.labelled_targets[second]
            squared, nll = regression_loss(delta, log_variance, target)
            self._step(squared + nll, self.reference, self.reference_optimiser)
            total += squared.item() / steps
        return {"reference_loss": total}

    def _exemplar_pool(self) -> list[torch.Tensor]:
        """For each unlabelled video, the labelled positions it may be compared with."""
        if self._exemplar_pools is None:
            everyone = torch.arange(len(self.labelled))
            pools = [everyone] * len(self.unlabelled)
            if self.data.difficulty is not None:
                labelled_difficulty = self.data.difficulty[self.data.labelled]
                by_difficulty: dict[float, torch.Tensor] = {}
                for value in np.unique(labelled_difficulty):
                    by_difficulty[float(value)] = torch.from_numpy(np.flatnonzero(labelled_difficulty == value))
                pools = [by_difficulty.get(float(self.data.difficulty[int(index)]), everyone)
                         for index in self.unlabelled]
            self._exemplar_pools = pools
        return self._exemplar_pools

    @torch.no_grad()
    def _reference_pseudo_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unlabelled video: mean over exemplars of (exemplar target + delta), and its variance."""
        self.reference.eval()
        generator = self.semi_generator
        count = self.config.reference.exemplars
        # Embed each video once; pairs then only run the cross-attention and the MLP.
        embedded_unlabelled = self.reference.embed(self.views.canonical(self.unlabelled))
        embedded_labelled = self.reference.embed(self.views.canonical(self.labelled))
        pools = self._exemplar_pool()
        queries, exemplars = [], []
        for row, pool in enumerate(pools):
            if len(pool) > count:
                chosen = pool[torch.randperm(len(pool), generator=generator)[:count]]
            else:
                chosen = pool
            queries.append(torch.full((len(chosen),), row, dtype=torch.long))
            exemplars.append(chosen)
        query_rows, exemplar_positions = torch.cat(queries), torch.cat(exemplars)
        deltas, log_variances = [], []
        chunk = 4 * _INFERENCE_BATCH
        for start in range(0, len(query_rows), chunk):
            rows = query_rows[start:start + chunk]
            positions = exemplar_positions[start:start + chunk]
            delta, log_variance = self.reference.forward_embedded(
                self.reference.select(embedded_unlabelled, rows), self.reference.select(embedded_labelled, positions))
            deltas.append(delta)
            log_variances.append(log_variance)
        estimates = (self.labelled_targets[exemplar_positions] + torch.cat(deltas)).double()
        predicted_variance = torch.exp(torch.cat(log_variances)).double()
        videos = len(self.unlabelled)
        counts = torch.bincount(query_rows, minlength=videos).double()
        mean = torch.zeros(videos, dtype=torch.float64).index_add_(0, query_rows, estimates) / counts
        spread = torch.zeros(videos, dtype=torch.float64).index_add_(0, query_rows, (estimates - mean[query_rows]) ** 2)
        spread = spread / counts.clamp_min(2) * (counts > 1)
        aleatoric = torch.zeros(videos, dtype=torch.float64).index_add_(0, query_rows, predicted_variance) / counts
        return mean, spread + aleatoric

    # ------------------------------------------------------------ teacher

    @torch.no_grad()
    def _teacher_pseudo_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        passes = [self._predict_standardised(self.teacher, self.unlabelled, dropout=self.config.semi.mc_samples > 1,
                                             view=self.views.weak)
                  for _ in range(self.config.semi.mc_samples)]
        values = torch.stack([value for value, _ in passes]).double()
        predicted_variance = torch.stack([torch.exp(log_variance) for _, log_variance in passes]).double().mean(0)
        spread = values.var(0, unbiased=True) if len(passes) > 1 else torch.zeros(values.shape[1], dtype=torch.float64)
        return values.mean(0), spread + predicted_variance

    # ------------------------------------------------------------ refresh and training

    def _remember(self, name: str, value: torch.Tensor, variance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        confidence = 1.0 / (variance + 1e-6)
        if not self.config.semi.use_memory:
            return value, confidence
        stored_value = self.memory[f"{name}_value"]
        stored_confidence = self.memory[f"{name}_confidence"]
        rows = self.unlabelled
        stored_confidence[rows] *= self.config.semi.memory_decay
        better = confidence > stored_confidence[rows]
        stored_value[rows[better]] = value[better]
        stored_confidence[rows[better]] = confidence[better]
        return stored_value[rows].clone(), stored_confidence[rows].clone()

    def _graph(self) -> np.ndarray:
        if self.laplacian is None:
            semi = self.config.semi
            nodes = np.concatenate([self.data.labelled, self.data.unlabelled])
            tokens = self.data.tokens[nodes, 0].astype(np.float64)  # canonical view
            if not semi.graph_standardised:
                tokens = tokens * self.data.feature_std + self.data.feature_mean
            if semi.graph_features == "tokens":
                similarity = token_similarity(tokens)
            else:
                similarity = pooled_similarity(tokens.mean(axis=1))
            self.laplacian = knn_laplacian_from_similarity(similarity, semi.graph_neighbours)
        return self.laplacian

    def _refresh(self, epoch: int) -> dict:
        semi = self.config.semi
        teacher_value, teacher_confidence = self._remember("teacher", *self._teacher_pseudo_labels())
        sources = {"teacher": teacher_value}
        fused, confidence = teacher_value, teacher_confidence
        if semi.use_reference:
            reference_value, reference_confidence = self._remember("reference", *self._reference_pseudo_labels())
            sources["reference"] = reference_value
            if semi.use_confidence:
                fused = (teacher_confidence * teacher_value + reference_confidence * reference_value) / (
                    teacher_confidence + reference_confidence)
                confidence = teacher_confidence + reference_confidence
            else:
                fused = 0.5 * (teacher_value + reference_value)
        if not semi.use_confidence:
            confidence = torch.ones_like(fused)
        relative = (confidence / confidence.mean()).numpy()
        sources["fused"] = fused
        pseudo = fused.numpy()
        if semi.use_graph and semi.graph_strength > 0:
            anchors = self.labelled_targets.double().numpy()
            values = np.concatenate([anchors, pseudo])
            node_confidence = np.concatenate([np.full(len(anchors), LABELLED_ANCHOR), relative])
            pseudo = refine_on_graph(self._graph(), values, node_confidence, semi.graph_strength)[len(anchors):]
            sources["refined"] = torch.from_numpy(pseudo)
        self.pseudo[self.unlabelled] = torch.from_numpy(pseudo).float()
        weights = np.clip(relative, 0.0, semi.max_confidence_weight) if semi.use_confidence else np.ones_like(relative)
        self.weights[self.unlabelled] = torch.from_numpy(weights).float()
        return self._diagnose(epoch, sources, pseudo, relative)

    def _diagnose(self, epoch: int, sources: dict, pseudo: np.ndarray, confidence: np.ndarray) -> dict:
        """How good the pseudo-labels are, against the unlabelled videos' true labels (never trained on)."""
        truth_all = self.data.training_target(self.data.unlabelled)
        known = np.isfinite(truth_all)
        record: dict = {"epoch": epoch}
        if known.sum() < 2:
            self.diagnostics.setdefault("refreshes", []).append(record)
            return {}
        truth = (truth_all[known] - self.target_mean) / self.target_std
        for name, value in sources.items():
            record[f"{name}_spearman"] = spearman(truth, np.asarray(value)[known])
        final = pseudo[known]
        record["pseudo_spearman"] = spearman(truth, final)
        error = np.abs(final - truth) * self.target_std  # in target units
        record["pseudo_mae"] = float(error.mean())
        conf = confidence[known]
        record["confidence_error_spearman"] = spearman(conf, error)  # negative when confidence ranks error
        if len(conf) >= 5:
            order = np.argsort(-conf, kind="stable")
            record["mae_by_confidence_quintile"] = [float(error[part].mean()) for part in np.array_split(order, 5)]
        self.diagnostics.setdefault("refreshes", []).append(record)
        return {"pseudo_rho": record["pseudo_spearman"] or 0.0}

    def _semi_epoch(self, unit: Unit) -> dict:
        refreshed = self._refresh(unit.epoch)
        losses = self._semi_steps()
        losses.update(refreshed)
        return losses

    def _unlabelled_loss(self, batch: torch.Tensor) -> torch.Tensor:
        value, _ = self.student(self.views.strong(batch))
        weights = self.weights[batch]
        return (weights * (value - self.pseudo[batch]) ** 2).sum() / weights.sum().clamp_min(1e-8)

    def _extra_state(self) -> dict:
        state = super()._extra_state()
        state.update({
            "reference": None if self.reference is None else self.reference.state_dict(),
            "reference_optimiser": None if self.reference_optimiser is None else self.reference_optimiser.state_dict(),
            "reference_generator": self.reference_generator.get_state(),
            "memory": self.memory,
            "pseudo": self.pseudo,
            "weights": self.weights,
        })
        return state

    def _check_extra_state(self, state: Mapping, done: list[Unit]) -> None:
        super()._check_extra_state(state, done)
        _check_tensor(state.get("reference_generator"), self.reference_generator.get_state(), "reference_generator")
        reference, reference_optimiser = state.get("reference"), state.get("reference_optimiser")
        if any(unit.phase == "reference" for unit in done):
            _require(reference is not None and reference_optimiser is not None,
                     f"has no reference network after {len(done)} finished epochs")
            network, optimiser = self._reference_template()
            _check_module_state(reference, network, "reference")
            _check_optimiser_state(reference_optimiser, optimiser, "reference_optimiser")
        else:
            _require(reference is None and reference_optimiser is None,
                     f"has a reference network after {len(done)} finished epochs, before the run trains one")
        memory = _check_entry(state, "memory", dict)
        _require(set(memory) == set(self.memory),
                 f"memory holds {sorted(map(str, memory))}, the run's {sorted(self.memory)}")
        for name, template in self.memory.items():
            _check_tensor(memory[name], template, f"memory {name}")
        _check_tensor(state.get("pseudo"), self.pseudo, "pseudo")
        _check_tensor(state.get("weights"), self.weights, "weights")

    def _reference_template(self) -> tuple[ReferenceNetwork, torch.optim.Optimizer]:
        """A reference network and optimiser shaped like the run's, made without consuming its RNG."""
        with torch.random.fork_rng(devices=[]):
            network = ReferenceNetwork(self.data.feature_dim, self.config.reference)
        optimiser = torch.optim.AdamW(network.parameters(), lr=self.config.optim.lr,
                                      weight_decay=self.config.optim.weight_decay)
        return network, optimiser

    def _load_extra_state(self, state: dict):
        super()._load_extra_state(state)
        self.reference_generator.set_state(state["reference_generator"])
        if state["reference"] is not None:
            self._build_reference_shell()
            self.reference.load_state_dict(state["reference"])
            self.reference_optimiser.load_state_dict(state["reference_optimiser"])
        self.memory = {name: value.clone() for name, value in state["memory"].items()}
        self.pseudo = state["pseudo"].clone()
        self.weights = state["weights"].clone()

    def _build_reference_shell(self):
        saved = torch.get_rng_state()
        self._build_reference()
        torch.set_rng_state(saved)  # building consumed RNG the restored run already accounted for

    def finish_diagnostics(self) -> dict:
        """diagnostics.json: the last refresh, every refresh's summary, and the student on unlabelled data."""
        refreshes = self.diagnostics.get("refreshes", [])
        result = {
            "note": ("Pseudo-label quality against the true labels of the unlabelled training videos, which "
                     "training never uses. Spearman per source (teacher, reference, fused by confidence, "
                     "refined on the graph = what the student was trained on); confidence_error_spearman < 0 "
                     "means confidence ranks pseudo-label error; mae_by_confidence_quintile goes from the most "
                     "to the least confident fifth (target units)."),
            "switches": {name: getattr(self.config.semi, name) for name in
                         ("use_reference", "use_memory", "use_confidence", "use_graph")},
            "last_refresh": refreshes[-1] if refreshes else None,
            "refreshes": refreshes,
        }
        truth = self.data.scores[self.data.unlabelled]
        known = np.isfinite(truth)
        if known.sum() >= 2:
            predicted = self.predict_scores(self.data.unlabelled)
            result["student_unlabelled_spearman"] = spearman(truth[known], predicted[known])
        return result

    def model_summary(self) -> dict:
        summary = super().model_summary()
        if self.reference is not None:
            summary["reference_parameters"] = sum(p.numel() for p in self.reference.parameters())
        return summary


TRAINERS = {
    "supervised": Trainer,
    "mean-teacher": MeanTeacherTrainer,
    "pseudo-label": PseudoLabelTrainer,
    "trs": TRSTrainer,
}


class RidgeTrainer:
    """Ridge regression on mean-pooled canonical features, in closed form (no epochs).

    The penalty ``alpha`` is fixed (``ridge.alpha``, a positive number) or chosen from
    ``ridge.alphas`` by the exact leave-one-out error on the labelled subset (``ridge.alpha = "auto"``).
    """

    method = "ridge"

    def __init__(self, config: TrainConfig, data: TrainingData):
        self.config = config
        self.data = data
        self.units: list[Unit] = []
        self.completed = 0
        self.history: list[dict] = []
        self.epoch_predictions: list = []
        self.diagnostics: dict = {}
        self.pooled = data.tokens[:, 0].mean(axis=1).astype(np.float64)
        if not config.ridge.standardise:
            self.pooled = self.pooled * data.feature_std + data.feature_mean
        self.weights, self.bias, self.alpha, self.loo_errors = self._fit()

    finished = True

    def _fit(self):
        data = self.data
        features = self.pooled[data.labelled]
        targets = data.training_target(data.labelled)
        feature_mean, target_mean = features.mean(axis=0), targets.mean()
        centred, centred_targets = features - feature_mean, targets - target_mean
        gram = centred @ centred.T
        eigenvalues, eigenvectors = np.linalg.eigh(gram)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        projected = eigenvectors.T @ centred_targets
        count = len(targets)
        loo_errors = {}
        if self.config.ridge.alpha != "auto":
            alpha = float(self.config.ridge.alpha)
        else:
            for candidate in self.config.ridge.alphas:
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

    def predict_scores(self, indices) -> np.ndarray:
        indices = np.asarray(indices)
        if len(indices) == 0:
            return np.zeros(0)
        return self.data.to_score(indices, self.pooled[indices] @ self.weights + self.bias)

    def state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "method": self.method,
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
        completed = _check_identity(state, self.method)
        _require(completed == 0, f"claims {completed} finished epochs but ridge regression has none")

    def load_state(self, state: dict):
        self.check_state(state)  # then nothing: deterministic and instantaneous, refitting gives the same weights

    def model_summary(self) -> dict:
        return {"ridge_alpha": self.alpha, "ridge_loo_mse": self.loo_errors or None}


def make_trainer(config: TrainConfig, data: TrainingData):
    if config.method == "ridge":
        return RidgeTrainer(config, data)
    return TRAINERS[config.method](config, data)
