"""The semi-supervised baselines, and the phase over unlabelled videos they share with ``trs``.

* ``mean-teacher``: the supervised model as burn-in, then a consistency loss between the
  student on strong views of unlabelled videos and an EMA teacher on weak views.
* ``pseudo-label``: the supervised model as burn-in, then self-training: each epoch the model
  labels the unlabelled videos and trains on them (strong views) with the labelled ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Callable

import torch

from aqa.metrics import known_pairs, spearman
from train.methods.interface import Unit
from train.methods.state_checks import check_entry, check_module_state, check_tensor, require
from train.methods.supervised import SEMI_STREAM, SupervisedMethod, predict_in_batches, stream_seed
from train.models import MixerHead, ema_update, regression_loss
from train.views import epoch_batches


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` that no optimiser moves (the EMA teacher)."""
    copied = copy.deepcopy(model)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


class SemiSupervisedMethod(SupervisedMethod):
    """Burn-in (the supervised schedule), then epochs over the unlabelled videos.

    Subclasses say what one semi-supervised epoch does (:meth:`_semi_epoch`) and whether the
    phase keeps an EMA teacher (:attr:`uses_teacher`).
    """

    uses_teacher = True

    def _plan_units(self) -> list[Unit]:
        units = super()._plan_units()
        if len(self.unlabelled):
            semi = self.config.semi.semi_epochs
            units += [Unit("semi", epoch, semi) for epoch in range(1, semi + 1)]
        return units

    def _build(self):
        super()._build()
        self.teacher: MixerHead | None = None
        self.semi_generator = torch.Generator().manual_seed(stream_seed(self.config.seed, SEMI_STREAM))

    def _epoch(self, unit: Unit) -> dict:
        if unit.phase == "supervised":
            return self._supervised_epoch()
        if unit.phase == "semi":
            if unit.epoch == 1:
                self._start_semi_phase()
            return self._semi_epoch(unit)
        raise AssertionError(unit.phase)

    def _start_semi_phase(self):
        # The semi-supervised phase draws from its own generator, so the burn-in is exactly the
        # supervised run of the same seed.
        self.views.generator = self.semi_generator
        if self.uses_teacher:
            self.teacher = frozen_copy(self.student)

    def _semi_epoch(self, unit: Unit) -> dict:
        raise NotImplementedError

    def _semi_steps(self, unlabelled_loss: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """One pass over the unlabelled videos: each step the labelled loss (weak views) plus
        ``semi.unlabelled_weight`` times ``unlabelled_loss`` of an unlabelled batch; the teacher
        (if any) follows the student by EMA."""
        self.student.train()
        totals = {"loss": 0.0, "unlabelled_loss": 0.0}
        generator = self.semi_generator
        unlabelled_batches = epoch_batches(self.unlabelled, self.config.optim.unlabelled_batch_size, 1, generator)
        labelled_batches = epoch_batches(self.labelled, self.config.optim.batch_size, len(unlabelled_batches),
                                         generator)[:len(unlabelled_batches)]
        weight = self.config.semi.unlabelled_weight
        for labelled, unlabelled in zip(labelled_batches, unlabelled_batches):
            value, log_variance = self.student(self.views.weak(labelled))
            squared, nll = regression_loss(value, log_variance, self._labelled_targets(labelled))
            loss_on_unlabelled = unlabelled_loss(unlabelled)
            self._step(squared + nll + weight * loss_on_unlabelled, self.student, self.optimiser)
            if self.teacher is not None:
                ema_update(self.teacher, self.student, self.config.semi.ema_decay)
            totals["loss"] += squared.item() / len(unlabelled_batches)
            totals["unlabelled_loss"] += loss_on_unlabelled.item() / len(unlabelled_batches)
        return totals

    def _extra_state(self) -> dict:
        return {
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "semi_generator": self.semi_generator.get_state(),
            "views_on_semi": self.views.generator is self.semi_generator,
        }

    def _check_extra_state(self, state: Mapping, done: list[Unit]) -> None:
        semi_started = any(unit.phase == "semi" for unit in done)
        check_tensor(state.get("semi_generator"), self.semi_generator.get_state(), "semi_generator")
        views_on_semi = check_entry(state, "views_on_semi", bool)
        require(views_on_semi == semi_started,
                f"views_on_semi is {views_on_semi} after {len(done)} finished epochs of the run's plan")
        teacher = state.get("teacher")
        if self.uses_teacher and semi_started:  # the teacher is made when the phase starts
            require(teacher is not None, f"has no teacher after {len(done)} finished epochs")
            check_module_state(teacher, self.student, "teacher")
        else:
            require(teacher is None, f"has a teacher after {len(done)} finished epochs, before the run makes one")

    def _load_extra_state(self, state: dict):
        self.semi_generator.set_state(state["semi_generator"])
        if state["views_on_semi"]:
            self.views.generator = self.semi_generator
        if state["teacher"] is not None:
            self.teacher = frozen_copy(self.student)
            self.teacher.load_state_dict(state["teacher"])


class MeanTeacherMethod(SemiSupervisedMethod):
    """Consistency between the student (strong view) and the EMA teacher (weak view)."""

    name = "mean-teacher"

    def _semi_epoch(self, unit: Unit) -> dict:
        return self._semi_steps(self._consistency_loss)

    def _consistency_loss(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.teacher.eval()
            target, _ = self.teacher(self.views.weak(batch))
        value, _ = self.student(self.views.strong(batch))
        return ((value - target) ** 2).mean()


class PseudoLabelMethod(SemiSupervisedMethod):
    """Self-training: each epoch the model labels the unlabelled videos, then trains on them."""

    name = "pseudo-label"
    uses_teacher = False  # the model labels for itself

    def _semi_epoch(self, unit: Unit) -> dict:
        value, _ = predict_in_batches(self.student, self.unlabelled, self.views.canonical)
        self.pseudo = torch.zeros(len(self.tokens))
        self.pseudo[self.unlabelled] = value
        pairs = known_pairs(self.data.training_target(self.data.unlabelled), value.numpy())
        if pairs is not None:
            self.pseudo_label_quality.setdefault("pseudo_label_spearman", []).append(spearman(*pairs))
        return self._semi_steps(self._pseudo_label_loss)

    def _pseudo_label_loss(self, batch: torch.Tensor) -> torch.Tensor:
        value, _ = self.student(self.views.strong(batch))
        return ((value - self.pseudo[batch]) ** 2).mean()
