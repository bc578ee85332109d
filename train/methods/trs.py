"""``trs``: teacher-reference-student, as we read the paper (README, "TRS as we read it").

* Burn-in on labelled data: the student (= the supervised model), then the reference network
  trained pairwise on labelled pairs (relative scores), when a pseudo-label source uses it.
* Each semi-supervised epoch (:meth:`TRSMethod._semi_epoch`, top-down) refreshes the
  pseudo-labels: every source (:mod:`train.methods.pseudo_labels`: the EMA teacher with MC
  dropout, the reference network against labelled exemplars) gives a value and a confidence per
  unlabelled video, through its confidence memory; they are fused by confidence, refined on a
  kNN graph of all training videos, and the confidences become per-video loss weights. Then the
  student trains on labelled videos (weak views) and on the pseudo-labels of strong views; the
  teacher follows by EMA.
* Between the burn-in and the semi-supervised phase, the label-only gate
  (:mod:`train.methods.gate`, ``semi.gate``) cross-fits the options on the labelled videos and
  picks which sources feed the pseudo-labels and the graph strength; the semi-supervised phase
  runs with its choice (the configured option unless another clearly beats it). Before it, the
  graph guard (:mod:`train.methods.graph_guard`) may rule the graph out, and then (``semi.teacher
  = "auto"``) the teacher source is a ridge on the labelled videos' time-segment means instead of
  the EMA teacher. Where the guard kept a graph that lost out of fold, the gate's ridge check
  (``semi.gate_ridge_check``, :func:`train.methods.gate.ridge_check`) scores that ridge on the
  gate's folds and makes the same switch where it clearly beats the gate's choice. Where the
  EMA teacher teaches, its pseudo-labels are moved halfway to that ridge's
  (``semi.teacher_ridge_share``, :class:`~train.methods.pseudo_labels.BlendedTeacherSource`).
* At test time the student predicts, blended with the reference network against every labelled
  exemplar of the video's pool (``reference.test_share``, half by default; 0: the student alone,
  the paper's reading), then, when the run's pseudo-labels went through the graph, with the
  graph: the mean of the video's nearest training videos' labels and last pseudo-labels
  (``semi.graph_test_share``, half by default), and, where the run's teacher was the ridge, with
  that ridge (``semi.ridge_test_share``, half by default). With ``reference.semi_training``
  (default) the reference keeps learning on pseudo-labelled pairs after each refresh.

  Test-time prediction of a scored video::

      student ──(1 − r)──┐
      reference ──(r)────┴─► value ──(1 − g)──┐
      graph neighbours' labels ──(g)──────────┴─► value ──(1 − q)──┐
      ridge on segment means (teacher = ridge) ──(q)───────────────┴─► prediction

  r = ``reference.test_share``, g = ``semi.graph_test_share`` (0 where the graph was dropped),
  q = ``semi.ridge_test_share`` (0 where the teacher was the EMA teacher).

The ``semi.use_*`` switches ablate parts; they only change which parts
:func:`~train.methods.pseudo_labels.build_pseudo_labelling` puts in its lists (and which options
the gate starts from).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import numpy as np
import torch

from aqa.metrics import known_pairs, spearman
from train.config import TrainConfig
from train.data import TrainingData
from train.methods.baselines import SemiSupervisedMethod
from train.methods.gate import chosen_option, gate_options, gate_verdict, run_gate, start_gate_early
from train.methods.interface import Unit
from train.graph import nearest_node_mean, similarity_to_nodes
from train.methods.pseudo_labels import (
    Context, GraphRefiner, RidgeTeacherSource, build_pseudo_labelling, pools_for, resolved_teacher,
    score_against_exemplars,
)
from train.methods.state_checks import (
    check_entry, check_module_state, check_optimiser_state, check_tensor, require, shown,
)
from train.methods.supervised import REFERENCE_STREAM, SupervisedMethod, predict_in_batches, stream_seed
from train.models import ReferenceNetwork, make_optimiser, regression_loss
from train.views import ViewMaker


def blend_predictions(main: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor:
    """``(1 - share) * main + share * other`` in float64 (standardised targets): how the test-time
    prediction takes in the reference (``reference.test_share``) and then the graph
    (``semi.graph_test_share``), here and in :mod:`train.predict`."""
    return (1 - share) * main.double() + share * other.double()


def graph_prediction(query_tokens: np.ndarray, node_tokens: np.ndarray, node_values: np.ndarray,
                     neighbours: int, features: str) -> torch.Tensor:
    """The graph's value of each scored video: the mean of its ``neighbours`` most similar
    training videos' values (:func:`train.graph.nearest_node_mean`), float64."""
    similarity = similarity_to_nodes(query_tokens, node_tokens, features)
    return torch.from_numpy(nearest_node_mean(similarity, node_values, neighbours))


class TRSMethod(SemiSupervisedMethod):
    """Teacher-reference-student (see the module docstring)."""

    name = "trs"

    def __init__(self, config: TrainConfig, data: TrainingData):
        # Built first: which phases the run plans depends on which sources it has.
        self.labelling = build_pseudo_labelling(config, len(data.keys))
        self.memory = self.labelling.memory
        self.gate: dict | None = None  # the gate's outcome (plain data), once it has run
        self._gate_in_flight = None  # its fold jobs, when started before the burn-in (in a session)
        self._in_session = False
        self._gate_start_tried = False  # in this session
        super().__init__(config, data)

    def _plan_units(self) -> list[Unit]:
        units = SupervisedMethod._plan_units(self)
        if len(self.unlabelled):
            if self.labelling.needs_reference_network:
                epochs = self.config.reference.epochs
                units += [Unit("reference", epoch, epochs) for epoch in range(1, epochs + 1)]
            if self.config.semi.gate:
                units.append(Unit("gate", 1, 1))
            semi = self.config.semi.semi_epochs
            units += [Unit("semi", epoch, semi) for epoch in range(1, semi + 1)]
        return units

    def _build(self):
        super()._build()
        self.reference: ReferenceNetwork | None = None
        self.reference_optimiser = None
        self.reference_generator = torch.Generator().manual_seed(stream_seed(self.config.seed, REFERENCE_STREAM))
        count = len(self.tokens)
        # The student's targets on unlabelled videos and their loss weights, set at each refresh.
        self.pseudo = torch.zeros(count)
        self.weights = torch.ones(count)
        self.last_refresh: dict[str, np.ndarray] = {}  # the latest refresh's arrays, per unlabelled video
        self._ridge: tuple | None = None  # the teacher's ridge fit, for its test-time share (_ridge_fit)

    @contextlib.contextmanager
    def session(self):
        """Units run in here may compute beside the run: with several torch threads the gate's fold
        jobs start in worker processes at the first unit before the gate, beside the burn-in
        (:func:`train.methods.gate.start_gate_early`); leaving ends them, finished or not."""
        self._in_session, self._gate_start_tried = True, False
        try:
            yield self
        finally:
            self._in_session = False
            in_flight, self._gate_in_flight = self._gate_in_flight, None
            if in_flight is not None:
                in_flight.close()

    def run_unit(self) -> dict:
        if self._in_session and not self._gate_start_tried:
            self._gate_start_tried = True
            gate_at = next((number for number, unit in enumerate(self.units) if unit.phase == "gate"), None)
            if gate_at is not None and self.completed < gate_at:
                self._gate_in_flight = start_gate_early(self)
        return super().run_unit()

    def _epoch(self, unit: Unit) -> dict:
        if unit.phase == "supervised":  # the student's burn-in: exactly `supervised`
            return self._supervised_epoch()
        if unit.phase == "reference":  # the reference network's burn-in
            if self.reference is None:
                self._build_reference()
            return self._reference_epoch()
        if unit.phase == "gate":  # label-only choice of the pseudo-labels (train.methods.gate)
            in_flight, self._gate_in_flight = self._gate_in_flight, None
            self._apply_gate(run_gate(self, in_flight))
            return {}
        if unit.epoch == 1:
            self._start_semi_phase()  # the EMA teacher starts as the student; views on the semi generator
        return self._semi_epoch(unit)

    # ------------------------------------------------------------ one semi-supervised epoch

    def _semi_epoch(self, unit: Unit) -> dict:
        """Refresh the pseudo-labels from every source, then train the student on them."""
        labelling, rows = self.labelling, self.unlabelled
        context = Context(data=self.data, unlabelled=rows, labelled=self.labelled,
                          labelled_targets=self.labelled_targets, views=self.views, generator=self.semi_generator,
                          teacher=self.teacher, reference=self.reference)
        estimates = {source.name: source.estimate(context) for source in labelling.sources}
        fused, confidence = labelling.fuse(list(estimates.values()))
        relative = (confidence / confidence.mean()).numpy()  # mean 1 over the unlabelled videos
        stages = {**{name: value for name, (value, _) in estimates.items()}, "fused": fused}
        pseudo = fused.numpy()
        for refiner in labelling.refiners:
            pseudo = refiner.refine(context, pseudo, relative)
            stages[refiner.name] = pseudo
        self.pseudo[rows] = torch.from_numpy(pseudo).float()
        self.weights[rows] = torch.from_numpy(labelling.weigh(relative)).float()
        # Per video, for inspection (bench/probe_confidence.py); not part of the state.
        self.last_refresh = {"rows": rows.numpy().copy(), "relative_confidence": relative, "pseudo": pseudo,
                             **{f"{name}_value": value.numpy() for name, (value, _) in estimates.items()},
                             **{f"{name}_confidence": confidence.numpy() for name, (_, confidence) in estimates.items()}}
        quality = self._record_quality(unit.epoch, stages, pseudo, relative)

        losses = self._semi_steps(self._pseudo_label_loss)
        if self.config.reference.semi_training and self.reference is not None:
            losses["reference_loss"] = self._reference_semi_epoch()
        return {**losses, **quality}

    def _reference_semi_epoch(self) -> float:
        """The reference on (training video, labelled exemplar) pairs: labelled videos at their
        labels, unlabelled ones at this refresh's pseudo-labels, weighted by their loss weights."""
        rows = torch.cat([self.labelled, self.unlabelled])
        targets = torch.cat([self.labelled_targets, self.pseudo[self.unlabelled]])
        weights = torch.cat([torch.ones(len(self.labelled)), self.weights[self.unlabelled]])
        return self._reference_steps(self.reference, self.reference_optimiser, rows, targets,
                                     self.reference_generator, exemplars=len(self.labelled), weights=weights)

    def _apply_gate(self, outcome: dict) -> None:
        """The semi-supervised phase's sources and graph strength from the gate's ``outcome``."""
        self.gate = outcome
        self.labelling = build_pseudo_labelling(self.config, len(self.data.keys), chosen_option(outcome),
                                                graph=self.labelling.graph, teacher=outcome.get("teacher"))
        self.memory = self.labelling.memory

    def _pseudo_label_loss(self, batch: torch.Tensor) -> torch.Tensor:
        value, _ = self.student(self.views.strong(batch))
        weights = self.weights[batch]
        return (weights * (value - self.pseudo[batch]) ** 2).sum() / weights.sum().clamp_min(1e-8)

    def _record_quality(self, epoch: int, stages: dict, pseudo: np.ndarray, confidence: np.ndarray) -> dict:
        """How good the pseudo-labels are, against the unlabelled videos' true labels (never trained on)."""
        truth_all = self.data.training_target(self.data.unlabelled)
        known = np.isfinite(truth_all)
        record: dict = {"epoch": epoch}
        if known.sum() < 2:
            self.pseudo_label_quality.setdefault("refreshes", []).append(record)
            return {}
        truth = (truth_all[known] - self.target_mean) / self.target_std
        for name, value in stages.items():
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
        self.pseudo_label_quality.setdefault("refreshes", []).append(record)
        return {"pseudo_rho": record["pseudo_spearman"] or 0.0}

    # ------------------------------------------------------------ the reference network's burn-in

    def _build_reference(self):
        # Its own seed stream: the student's burn-in stays identical to `supervised`.
        torch.manual_seed(stream_seed(self.config.seed, REFERENCE_STREAM))
        self.reference = ReferenceNetwork(self.data.feature_dim, self.config.reference)
        self.reference_optimiser = make_optimiser(self.reference.parameters(), self.config.optim)

    def _reference_epoch(self) -> dict:
        """One epoch of relative-score training: each labelled video against random labelled exemplars."""
        total = self._reference_steps(self.reference, self.reference_optimiser, self.labelled, self.labelled_targets,
                                      self.reference_generator)
        return {"reference_loss": total}

    def _reference_steps(self, reference: ReferenceNetwork, optimiser: torch.optim.Optimizer, rows: torch.Tensor,
                         targets: torch.Tensor, generator: torch.Generator, exemplars: int | None = None,
                         weights: torch.Tensor | None = None) -> float:
        """One epoch of pairwise steps on ``rows`` (standardised ``targets``); the mean squared loss.

        Each pair is a row against an exemplar among the first ``exemplars`` rows (all by default:
        the labelled burn-in); ``weights`` (per row) weigh the first member's loss."""
        reference.train()
        views = ViewMaker(self.tokens, self.config.views, generator)
        count = len(rows)
        exemplars = count if exemplars is None else exemplars
        batch_size = max(self.config.optim.batch_size, 32)
        steps = max(self.config.optim.min_steps_per_epoch, math.ceil(count / batch_size))
        total = 0.0
        for _ in range(steps):
            first = torch.randint(0, count, (batch_size,), generator=generator)
            second = torch.randint(0, exemplars, (batch_size,), generator=generator)
            delta, log_variance = reference(views.weak(rows[first]), views.weak(rows[second]))
            target = targets[first] - targets[second]
            squared, nll = regression_loss(delta, log_variance, target,
                                           None if weights is None else weights[first])
            self._step(squared + nll, reference, optimiser)
            total += squared.item() / steps
        return total

    # ------------------------------------------------------------ inference

    def _reference_predicts(self) -> bool:
        return self.config.reference.test_share > 0 and self.reference is not None and len(self.labelled) > 0

    def _graph_predicts(self) -> bool:
        """Whether the graph takes ``semi.graph_test_share`` of the prediction: the run's
        pseudo-labels went through the graph, and the semi-supervised phase has refreshed them."""
        return (self.config.semi.graph_test_share > 0 and len(self.unlabelled) > 0
                and any(isinstance(refiner, GraphRefiner) for refiner in self.labelling.refiners)
                and any(unit.phase == "semi" for unit in self.units[:self.completed]))

    def _ridge_share(self) -> float:
        """The ridge's share of the prediction: ``semi.ridge_test_share`` where the run's teacher
        was the ridge (as the gate resolved ``semi.teacher``) and the semi-supervised phase has run
        on it, else 0."""
        taught = (len(self.labelled) > 0 and len(self.unlabelled) > 0
                  and resolved_teacher(self.config, (self.gate or {}).get("teacher")) == "ridge"
                  and any(unit.phase == "semi" for unit in self.units[:self.completed]))
        return self.config.semi.ridge_test_share if taught else 0.0

    def _ridge_fit(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The teacher's ridge (:meth:`~train.methods.pseudo_labels.RidgeTeacherSource.fit`) on the
        labelled videos, in standardised target units: every training video's ridge features, the
        weights and the bias. A closed form, so refitting gives the teacher's fit; computed once
        (the labelled videos never change), not part of the state."""
        if self._ridge is None:
            self._ridge = RidgeTeacherSource(self.config.ridge).fit(self.data, self.labelled, self.labelled_targets)
        return self._ridge

    def _graph_nodes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph's nodes as a scored video meets them: standardised canonical tokens of the
        labelled then unlabelled training videos, and their values (labels, last pseudo-labels)."""
        rows = torch.cat([self.labelled, self.unlabelled])
        values = torch.cat([self.labelled_targets.float(), self.pseudo[self.unlabelled].float()])
        return self.views.canonical(rows).contiguous(), values

    def predict_scores(self, indices) -> np.ndarray:
        """The student's predictions, blended with the reference network's (``reference.test_share``),
        then with the graph's (``semi.graph_test_share``), then with the ridge's
        (``semi.ridge_test_share``)."""
        indices = np.ascontiguousarray(indices)
        by_reference, by_graph, by_ridge = self._reference_predicts(), self._graph_predicts(), self._ridge_share() > 0
        if not (by_reference or by_graph or by_ridge) or len(indices) == 0:
            return super().predict_scores(indices)
        rows = torch.from_numpy(indices).long()
        value, _ = predict_in_batches(self.student, rows, self.views.canonical)
        value = value.double()
        if by_reference:
            reference_value, _, _ = score_against_exemplars(
                self.reference, self.views.canonical(rows), self.views.canonical(self.labelled), self.labelled_targets,
                pools_for(self.data, self.labelled, rows))
            value = blend_predictions(value, reference_value, self.config.reference.test_share)
        if by_graph:
            node_tokens, node_values = self._graph_nodes()
            graph_value = graph_prediction(self.views.canonical(rows).numpy(), node_tokens.numpy(),
                                           node_values.numpy(), self.config.semi.graph_neighbours,
                                           self.config.semi.graph_features)
            value = blend_predictions(value, graph_value, self.config.semi.graph_test_share)
        if by_ridge:
            features, weights, bias = self._ridge_fit()
            ridge_value = torch.from_numpy(features[indices] @ weights + bias)
            value = blend_predictions(value, ridge_value, self.config.semi.ridge_test_share)
        return self.data.to_score(indices, value.numpy() * self.target_std + self.target_mean)

    def prediction_fields(self) -> dict:
        """Besides the target standardisation, what the reference's and the graph's shares of a
        prediction need (:mod:`train.predict`): the labelled exemplars' standardised canonical
        tokens, targets and difficulties (the reference network itself is in the state); the
        graph's nodes' tokens and values; the ridge's weights and bias (standardised targets)."""
        fields = super().prediction_fields()
        if self._reference_predicts():
            fields["exemplar_tokens"] = self.views.canonical(self.labelled).contiguous()
            fields["exemplar_targets"] = self.labelled_targets.clone()
            if self.data.difficulty is not None:
                fields["exemplar_difficulty"] = torch.from_numpy(self.data.difficulty[self.labelled.numpy()].copy())
        graph_share = self.config.semi.graph_test_share if self._graph_predicts() else 0.0
        # 0: the graph had no share (the gate dropped it, or there were no unlabelled videos)
        fields["graph_test_share"] = graph_share
        if graph_share > 0:
            fields["graph_node_tokens"], fields["graph_node_values"] = self._graph_nodes()
        # 0: the ridge had no share (the teacher was the EMA teacher)
        fields["ridge_test_share"] = self._ridge_share()
        if fields["ridge_test_share"] > 0:
            _, weights, bias = self._ridge_fit()
            fields["ridge_weights"], fields["ridge_bias"] = torch.from_numpy(weights), bias
        return fields

    # ------------------------------------------------------------ state

    def _extra_state(self) -> dict:
        state = super()._extra_state()
        state.update({
            "reference": None if self.reference is None else self.reference.state_dict(),
            "reference_optimiser": None if self.reference_optimiser is None else self.reference_optimiser.state_dict(),
            "reference_generator": self.reference_generator.get_state(),
            "memory": self.memory.slots,
            "pseudo": self.pseudo,
            "weights": self.weights,
            "gate": self.gate,
        })
        return state

    def _check_extra_state(self, state: Mapping, done: list[Unit]) -> None:
        super()._check_extra_state(state, done)
        check_tensor(state.get("reference_generator"), self.reference_generator.get_state(), "reference_generator")
        reference, reference_optimiser = state.get("reference"), state.get("reference_optimiser")
        if any(unit.phase == "reference" for unit in done):
            require(reference is not None and reference_optimiser is not None,
                    f"has no reference network after {len(done)} finished epochs")
            network, optimiser = self._reference_template()
            check_module_state(reference, network, "reference")
            check_optimiser_state(reference_optimiser, optimiser, "reference_optimiser")
        else:
            require(reference is None and reference_optimiser is None,
                    f"has a reference network after {len(done)} finished epochs, before the run trains one")
        memory = check_entry(state, "memory", dict)
        require(set(memory) == set(self.memory.slots),
                f"memory holds {sorted(map(str, memory))}, the run's {sorted(self.memory.slots)}")
        for name, template in self.memory.slots.items():
            check_tensor(memory[name], template, f"memory {name}")
        check_tensor(state.get("pseudo"), self.pseudo, "pseudo")
        check_tensor(state.get("weights"), self.weights, "weights")
        self._check_gate_state(state.get("gate"), done)

    def _check_gate_state(self, gate, done: list[Unit]) -> None:
        """The gate's outcome exists exactly once the gate unit is done, and chooses one of the run's options."""
        if not any(unit.phase == "gate" for unit in done):
            require(gate is None, f"has a gate outcome after {len(done)} finished epochs, before the run's gate")
            return
        require(isinstance(gate, Mapping), f"gate is {shown(gate)}, expected the gate's outcome (a dict)")
        options = check_entry(gate, "options", dict, owner="gate")
        guard = gate.get("graph_guard")
        require(guard is None or (isinstance(guard, Mapping) and isinstance(guard.get("drops_graph"), bool)),
                f"gate's graph_guard is {shown(guard)}, expected the guard's record (a dict with drops_graph)")
        without_graph = guard is not None and guard["drops_graph"]
        expected = {option.name: option.to_state() for option in gate_options(self.config, without_graph)}
        require(options == expected, f"gate options are {sorted(map(str, options))}, the run's {sorted(expected)}")
        teacher = gate.get("teacher")
        require(teacher is None or teacher in ("ema", "ridge"),
                f"gate's teacher is {shown(teacher)}, expected 'ema' or 'ridge'")
        check = gate.get("ridge_check")
        require(check is None or (self.config.semi.gate_ridge_check and isinstance(check, Mapping)
                                  and isinstance(check.get("switches"), bool)),
                f"gate's ridge_check is {shown(check)}, expected the check's record (a dict with switches) "
                f"and semi.gate_ridge_check on")
        if teacher is not None and self.config.semi.teacher == "auto":  # as train.methods.gate resolves it
            expected = "ridge" if without_graph or (check is not None and check["switches"]) else "ema"
            require(teacher == expected, f"gate's teacher is {shown(teacher)}, the run's guard and ridge check "
                                         f"make it {expected!r}")
        chosen = gate.get("chosen")
        require(isinstance(chosen, str) and chosen in options,
                f"gate chose {shown(chosen)}, not one of the run's options")
        for name in ("estimates", "fold_estimates"):
            check_entry(gate, name, dict, owner="gate")

    def _reference_template(self) -> tuple[ReferenceNetwork, torch.optim.Optimizer]:
        """A reference network and optimiser shaped like the run's, made without consuming its RNG."""
        with torch.random.fork_rng(devices=[]):
            network = ReferenceNetwork(self.data.feature_dim, self.config.reference)
        optimiser = make_optimiser(network.parameters(), self.config.optim)
        return network, optimiser

    def _load_extra_state(self, state: dict):
        super()._load_extra_state(state)
        self.reference_generator.set_state(state["reference_generator"])
        if state["reference"] is not None:
            saved = torch.get_rng_state()
            self._build_reference()
            torch.set_rng_state(saved)  # building consumed RNG the restored run already accounted for
            self.reference.load_state_dict(state["reference"])
            self.reference_optimiser.load_state_dict(state["reference_optimiser"])
        if state["gate"] is not None:  # before the memory: the chosen sources own it
            self._apply_gate(dict(state["gate"]))
        self.memory.slots = {name: value.clone() for name, value in state["memory"].items()}
        self.pseudo = state["pseudo"].clone()
        self.weights = state["weights"].clone()

    # ------------------------------------------------------------ reporting

    def diagnostics(self) -> dict:
        """diagnostics.json: the last refresh, every refresh's summary, and the student on unlabelled data."""
        refreshes = self.pseudo_label_quality.get("refreshes", [])
        result = {
            "note": ("Pseudo-label quality against the true labels of the unlabelled training videos, which "
                     "training never uses. Spearman per source (teacher, reference, fused by confidence, "
                     "refined on the graph = what the student was trained on); confidence_error_spearman < 0 "
                     "means confidence ranks pseudo-label error; mae_by_confidence_quintile goes from the most "
                     "to the least confident fifth (target units); student_unlabelled_spearman is the run's test-time "
                     "prediction on the unlabelled videos (the student, blended with the reference network "
                     "when reference.test_share > 0)."),
            "switches": {name: getattr(self.config.semi, name) for name in
                         ("use_reference", "use_memory", "use_confidence", "use_graph", "gate")},
            "gate": self.gate,
            "last_refresh": refreshes[-1] if refreshes else None,
            "refreshes": refreshes,
        }
        truth = self.data.scores[self.data.unlabelled]
        if known_pairs(truth, truth) is not None:  # predict (a pass over the videos) only when measurable
            predicted = self.predict_scores(self.data.unlabelled)
            result["student_unlabelled_spearman"] = spearman(*known_pairs(truth, predicted))
        return result

    def model_summary(self) -> dict:
        summary = super().model_summary()
        # the ridge's share of the test prediction (semi.ridge_test_share where it taught, else 0)
        summary["ridge_test_share"] = self._ridge_share()
        if self.reference is not None:
            summary["reference_parameters"] = sum(p.numel() for p in self.reference.parameters())
        if self.gate is not None:  # what the label-only gate chose, and how clearly (train.methods.gate.VERDICTS)
            summary["gate_choice"] = self.gate["chosen"]
            summary["gate_verdict"] = gate_verdict(self.gate)
            # the teacher source of the semi-supervised phase, resolved as _apply_gate builds it
            summary["gate_teacher"] = resolved_teacher(self.config, self.gate.get("teacher"))
            guard = self.gate.get("graph_guard")
            if guard is not None:  # train.methods.graph_guard
                summary["gate_graph_guard"] = ("not computed" if guard["signal"] is None else
                                               "dropped the graph" if guard["drops_graph"] else "kept the graph")
        return summary
