"""TRS's pseudo-labels as components: sources, confidence memories, fusion, refiners, weights.

Each semi-supervised epoch of ``trs`` asks every *source* for a pseudo-label and a confidence per
unlabelled video, fuses them, passes the fused labels through every *refiner*, and turns the
confidences into per-video loss weights (:meth:`train.methods.trs.TRSMethod._semi_epoch`). All of
it is in standardised target units, as torch (sources) or numpy (refiners) arrays:

* a source maps the :class:`Context` (the unlabelled and labelled rows, the labelled targets,
  views of the features, the teacher and reference networks) to ``(values, confidences)``, one
  of each per unlabelled video; a confidence is ``1 / variance``;
* :class:`Remembered` wraps a source in a confidence memory (per video the most confident output
  so far);
* a refiner maps ``(values, relative confidences)`` of the unlabelled videos to refined values.

:func:`build_pseudo_labelling` makes the lists once from the configuration: adding a source or a
refiner, or ablating one, is one line there. The ``semi.use_*`` switches are read there only
(through :func:`~train.methods.gate.default_option`, the option the gate starts from).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from scipy.stats import rankdata

from train.config import TrainConfig
from train.data import TrainingData
from train.graph import (
    LABELLED_ANCHOR, knn_laplacian_from_similarity, pooled_similarity, refine_on_graph, token_similarity,
)
from train.methods.gate import GateOption, default_option
from train.methods.supervised import INFERENCE_BATCH, predict_in_batches
from train.models import MixerHead, ReferenceNetwork
from train.views import ViewMaker

Estimate = tuple[torch.Tensor, torch.Tensor]  # (values, confidences), float64, one per unlabelled video


@dataclass
class Context:
    """What a source may look at when it labels the unlabelled videos (at one refresh)."""

    data: TrainingData
    unlabelled: torch.Tensor  # rows of data.keys to label
    labelled: torch.Tensor  # rows with a training label
    labelled_targets: torch.Tensor  # standardised targets, in `labelled` order
    views: ViewMaker  # weak/strong/canonical views, drawing from the semi-supervised generator
    generator: torch.Generator  # the semi-supervised phase's (for draws such as exemplars)
    teacher: MixerHead  # the EMA of the student
    reference: ReferenceNetwork | None  # trained in the reference phase (None if no source needs it)


class Source(Protocol):
    name: str  # in diagnostics (``<name>_spearman``) and the memory's slots
    needs_reference_network: bool  # whether the run trains the reference network (a burn-in phase)

    def estimate(self, context: Context) -> Estimate: ...


class Refiner(Protocol):
    name: str  # in diagnostics (``<name>_spearman``)

    def refine(self, context: Context, values: np.ndarray, confidence: np.ndarray) -> np.ndarray: ...


def confidence_of(variance: torch.Tensor) -> torch.Tensor:
    return 1.0 / (variance + 1e-6)


class TeacherSource:
    """The EMA teacher on weak views with MC dropout: the mean of ``mc_samples`` passes; confidence
    1 / (variance over the passes + the head's predicted variance)."""

    name = "teacher"
    needs_reference_network = False

    def __init__(self, mc_samples: int):
        self.mc_samples = mc_samples

    @torch.no_grad()
    def estimate(self, context: Context) -> Estimate:
        passes = [predict_in_batches(context.teacher, context.unlabelled, context.views.weak,
                                     dropout=self.mc_samples > 1) for _ in range(self.mc_samples)]
        values = torch.stack([value for value, _ in passes]).double()
        predicted_variance = torch.stack([torch.exp(log_variance) for _, log_variance in passes]).double().mean(0)
        spread = values.var(0, unbiased=True) if len(passes) > 1 else torch.zeros(values.shape[1], dtype=torch.float64)
        return values.mean(0), confidence_of(spread + predicted_variance)


class RidgeTeacherSource:
    """``semi.teacher = "ridge"``: the teacher's pseudo-labels from ridge regression on the
    labelled videos' time-segment means (the ``ridge`` method's features and penalty, the run's
    ``ridge`` section), fitted on the labelled videos of the context (a gate fold's teacher on its
    fold). One linear fit has no per-video spread, so every video is equally confident, and its
    values do not change between refreshes (the labelled videos do not). Why: with few labels a
    token-mixing head does not find the time structure that a segment mean hands a linear model
    (on the dives `ridge` beats `supervised` by 0.1-0.2 at 10 % labels), so its pseudo-labels start
    below what the closed form predicts."""

    name = "teacher"
    needs_reference_network = False

    def __init__(self, ridge):
        self.ridge = ridge
        self._features: tuple[int, np.ndarray] | None = None  # (id of the data, its ridge features)

    def features(self, data: TrainingData) -> np.ndarray:
        from train.data import ridge_features

        if self._features is None or self._features[0] != id(data):
            self._features = (id(data), ridge_features(data.tokens[:, 0], self.ridge, data.feature_mean,
                                                        data.feature_std))
        return self._features[1]

    def fit(self, data: TrainingData, labelled: torch.Tensor, labelled_targets: torch.Tensor
            ) -> tuple[np.ndarray, np.ndarray, float]:
        """The ridge on ``labelled`` (rows of ``data``) at ``labelled_targets`` (standardised):
        every video's ridge features, the weights and the bias. Also what trs's test-time share
        of the ridge predicts with (``semi.ridge_test_share``)."""
        from train.methods.ridge import fit_ridge

        features = self.features(data)
        weights, bias, _, _ = fit_ridge(features[labelled.numpy()], labelled_targets.double().numpy(), self.ridge)
        return features, weights, bias

    def estimate(self, context: Context) -> Estimate:
        features, weights, bias = self.fit(context.data, context.labelled, context.labelled_targets)
        values = torch.from_numpy(features[context.unlabelled.numpy()] @ weights + bias)
        return values, torch.ones_like(values)


class BlendedTeacherSource:
    """``semi.teacher_ridge_share``: the EMA teacher's pseudo-labels moved towards the ridge's,
    ``(1 - share) * EMA + share * ridge`` per video, with the EMA teacher's confidences (the ridge
    has no per-video spread). The ridge is refitted on the context's labelled videos (a gate
    fold's teacher on its fold), as :class:`RidgeTeacherSource` does."""

    name = "teacher"
    needs_reference_network = False

    def __init__(self, ema: TeacherSource, ridge: RidgeTeacherSource, share: float):
        self.ema, self.ridge, self.share = ema, ridge, share

    def estimate(self, context: Context) -> Estimate:
        ema_values, confidence = self.ema.estimate(context)
        ridge_values, _ = self.ridge.estimate(context)
        return (1.0 - self.share) * ema_values + self.share * ridge_values, confidence


def exemplar_pools(exemplar_difficulty: np.ndarray | None, query_difficulty: np.ndarray | None,
                   exemplars: int, queries: int) -> list[torch.Tensor]:
    """For each of ``queries`` videos, the positions among the ``exemplars`` labelled ones it may be
    compared with: those of the same difficulty where difficulties are known (both arrays given)
    and one matches, else all of them."""
    everyone = torch.arange(exemplars)
    if exemplar_difficulty is None or query_difficulty is None:
        return [everyone] * queries
    by_difficulty = {float(value): torch.from_numpy(np.flatnonzero(exemplar_difficulty == value))
                     for value in np.unique(exemplar_difficulty)}
    return [by_difficulty.get(float(value), everyone) for value in query_difficulty]


def pools_for(data: TrainingData, labelled: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
    """:func:`exemplar_pools` of the videos ``rows`` among the ``labelled`` ones of ``data``."""
    known = data.difficulty is not None
    return exemplar_pools(data.difficulty[labelled.numpy()] if known else None,
                          data.difficulty[rows.numpy()] if known else None, len(labelled), len(rows))


@torch.no_grad()
def score_against_exemplars(reference: ReferenceNetwork, query_tokens: torch.Tensor, exemplar_tokens: torch.Tensor,
                            exemplar_targets: torch.Tensor, pairs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The reference network's score of each query video from its exemplars.

    ``pairs[i]`` are the exemplar positions query ``i`` is compared with; each comparison gives
    exemplar target + relative score. Returns float64 per query: the mean over its exemplars, the
    spread (variance) over them, and the mean predicted variance."""
    reference.eval()
    # Embed each video once; pairs then only run the cross-attention and the MLP.
    embedded_queries, embedded_exemplars = reference.embed(query_tokens), reference.embed(exemplar_tokens)
    query_rows = torch.cat([torch.full((len(chosen),), row, dtype=torch.long) for row, chosen in enumerate(pairs)])
    exemplar_positions = torch.cat(pairs)
    deltas, log_variances = [], []
    chunk = 4 * INFERENCE_BATCH
    for start in range(0, len(query_rows), chunk):
        rows, positions = query_rows[start:start + chunk], exemplar_positions[start:start + chunk]
        delta, log_variance = reference.forward_embedded(
            reference.select(embedded_queries, rows), reference.select(embedded_exemplars, positions))
        deltas.append(delta)
        log_variances.append(log_variance)
    estimates = (exemplar_targets[exemplar_positions] + torch.cat(deltas)).double()
    predicted_variance = torch.exp(torch.cat(log_variances)).double()
    videos = len(pairs)
    counts = torch.bincount(query_rows, minlength=videos).double()
    mean = torch.zeros(videos, dtype=torch.float64).index_add_(0, query_rows, estimates) / counts
    spread = torch.zeros(videos, dtype=torch.float64).index_add_(0, query_rows, (estimates - mean[query_rows]) ** 2)
    spread = spread / counts.clamp_min(2) * (counts > 1)
    aleatoric = torch.zeros(videos, dtype=torch.float64).index_add_(0, query_rows, predicted_variance) / counts
    return mean, spread, aleatoric


class ReferenceSource:
    """The reference network: each unlabelled video against up to ``exemplars`` labelled exemplars
    (of the same difficulty where known): pseudo-score = exemplar target + relative score, averaged;
    confidence 1 / (spread over the exemplars + mean predicted variance)."""

    name = "reference"
    needs_reference_network = True

    def __init__(self, exemplars: int):
        self.exemplars = exemplars
        self._pools: list[torch.Tensor] | None = None

    @torch.no_grad()
    def estimate(self, context: Context) -> Estimate:
        if self._pools is None:
            self._pools = pools_for(context.data, context.labelled, context.unlabelled)
        chosen = [pool[torch.randperm(len(pool), generator=context.generator)[:self.exemplars]]
                  if len(pool) > self.exemplars else pool for pool in self._pools]
        mean, spread, aleatoric = score_against_exemplars(
            context.reference, context.views.canonical(context.unlabelled), context.views.canonical(context.labelled),
            context.labelled_targets, chosen)
        return mean, confidence_of(spread + aleatoric)


class ConfidenceMemory:
    """Per video and source, the most confident output so far (the paper's M^T, M^R).

    Stored confidences decay by ``decay`` at every refresh, so that a better later output can
    replace an early lucky one. ``slots`` (``<source>_value``, ``<source>_confidence``, float64 per
    video; confidence 0 = empty) is part of the run's state.
    """

    def __init__(self, names, count: int, decay: float):
        self.decay = decay
        self.slots = {f"{name}_{part}": torch.zeros(count, dtype=torch.float64)
                      for name in names for part in ("value", "confidence")}

    def keep_best(self, name: str, rows: torch.Tensor, value: torch.Tensor, confidence: torch.Tensor) -> Estimate:
        stored_value, stored_confidence = self.slots[f"{name}_value"], self.slots[f"{name}_confidence"]
        stored_confidence[rows] *= self.decay
        better = confidence > stored_confidence[rows]
        stored_value[rows[better]] = value[better]
        stored_confidence[rows[better]] = confidence[better]
        return stored_value[rows].clone(), stored_confidence[rows].clone()


class Remembered:
    """``source`` through a :class:`ConfidenceMemory`: what it says now, or what it said more confidently before."""

    def __init__(self, source: Source, memory: ConfidenceMemory):
        self.source, self.memory = source, memory
        self.name, self.needs_reference_network = source.name, source.needs_reference_network

    def estimate(self, context: Context) -> Estimate:
        return self.memory.keep_best(self.name, context.unlabelled, *self.source.estimate(context))


def fuse_by_confidence(estimates: list[Estimate]) -> Estimate:
    """The precision-weighted mean of the sources; its confidence is the sum of theirs."""
    if len(estimates) == 1:
        return estimates[0]
    (value, confidence), rest = estimates[0], estimates[1:]
    weighted, total = confidence * value, confidence
    for value, confidence in rest:
        weighted, total = weighted + confidence * value, total + confidence
    return weighted / total, total


def fuse_balanced(estimates: list[Estimate]) -> Estimate:
    """:func:`fuse_by_confidence` after dividing each source's confidences by their mean
    (``semi.fusion = "balanced"``): every source weighs the same on average."""
    return fuse_by_confidence([(value, confidence / confidence.mean().clamp_min(1e-12))
                               for value, confidence in estimates])


def fuse_by_mean(estimates: list[Estimate]) -> Estimate:
    """The plain mean of the sources, every video equally confident (the ``use_confidence`` ablation)."""
    total = estimates[0][0]
    for value, _ in estimates[1:]:
        total = total + value
    fused = total if len(estimates) == 1 else total / len(estimates)
    return fused, torch.ones_like(fused)


class GraphRefiner:
    """Refinement on a k-nearest-neighbour graph of all training videos (label-free features;
    labelled videos anchored at their labels): see :mod:`train.graph`. The graph is built once."""

    name = "refined"

    def __init__(self, neighbours: int, strength: float, standardised: bool, features: str):
        self.neighbours, self.strength = neighbours, strength
        self.standardised, self.features = standardised, features
        self.laplacian: np.ndarray | None = None

    def graph(self, data: TrainingData) -> np.ndarray:
        """The Laplacian over the nodes ``data.labelled`` then ``data.unlabelled`` (built once)."""
        if self.laplacian is None:
            nodes = np.concatenate([data.labelled, data.unlabelled])
            tokens = data.tokens[nodes, 0].astype(np.float64)  # canonical view
            if not self.standardised:
                tokens = tokens * data.feature_std + data.feature_mean
            if self.features == "tokens":
                similarity = token_similarity(tokens)
            else:
                similarity = pooled_similarity(tokens.mean(axis=1))
            self.laplacian = knn_laplacian_from_similarity(similarity, self.neighbours)
        return self.laplacian

    def refine(self, context: Context, values: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        anchors = context.labelled_targets.double().numpy()
        node_values = np.concatenate([anchors, values])
        node_confidence = np.concatenate([np.full(len(anchors), LABELLED_ANCHOR), confidence])
        return refine_on_graph(self.graph(context.data), node_values, node_confidence, self.strength)[len(anchors):]


class SpreadRefiner:
    """The pseudo-labels given the labelled targets' spread (``semi.pseudo_spread``), keeping their
    order: ``"std"`` matches mean and standard deviation, ``"quantiles"`` the whole distribution
    (the labelled targets' quantile at each pseudo-label's mid-rank)."""

    name = "spread"

    def __init__(self, mode: str):
        self.mode = mode

    def refine(self, context: Context, values: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        targets = context.labelled_targets.double().numpy()
        if len(values) < 2 or len(targets) < 2:
            return values
        if self.mode == "std":
            spread = values.std()
            if spread <= 1e-12:  # all alike: nothing to stretch
                return values
            return targets.mean() + (values - values.mean()) * (targets.std() / spread)
        share = (rankdata(values) - 0.5) / len(values)
        return np.quantile(targets, share)


@dataclass
class PseudoLabelling:
    """The parts of a TRS refresh, in the order they apply."""

    sources: list[Source]
    fuse: Callable[[list[Estimate]], Estimate]
    refiners: list[Refiner]
    weigh: Callable[[np.ndarray], np.ndarray]  # relative confidences -> per-video loss weights
    memory: ConfidenceMemory  # the sources' memories (part of the state even when unused)

    graph: GraphRefiner  # the graph of the run (its refiner when refinement is on), built on first use

    @property
    def needs_reference_network(self) -> bool:
        return any(source.needs_reference_network for source in self.sources)

    def graph_laplacian(self, data: TrainingData) -> np.ndarray:
        return self.graph.graph(data)


# State format 1 holds the memories of these sources whether or not the configuration uses them.
_MEMORY_SLOTS = ("teacher", "reference")


def resolved_teacher(config: TrainConfig, teacher: str | None = None) -> str:
    """The teacher kind a source is built with: ``teacher`` (the gate's resolution of
    ``semi.teacher = "auto"``) when given, else the configured one ("auto" unresolved: "ema")."""
    kind = teacher or config.semi.teacher
    return "ema" if kind == "auto" else kind


def build_sources(config: TrainConfig, names, teacher: str | None = None) -> list[Source]:
    """Fresh sources (no memory) named ``names`` ("teacher", "reference"), in that order;
    ``teacher``: the teacher's kind when the gate resolved it (:func:`resolved_teacher`)."""
    semi = config.semi
    if resolved_teacher(config, teacher) == "ridge":
        teacher = lambda: RidgeTeacherSource(config.ridge)  # noqa: E731
    elif semi.teacher_ridge_share > 0:
        teacher = lambda: BlendedTeacherSource(TeacherSource(semi.mc_samples), RidgeTeacherSource(config.ridge),  # noqa: E731
                                               semi.teacher_ridge_share)
    else:
        teacher = lambda: TeacherSource(semi.mc_samples)  # noqa: E731
    makers = {"teacher": teacher,
              "reference": lambda: ReferenceSource(config.reference.exemplars)}
    return [makers[name]() for name in names]


def build_pseudo_labelling(config: TrainConfig, count: int, option: GateOption | None = None,
                           graph: GraphRefiner | None = None, teacher: str | None = None) -> PseudoLabelling:
    """TRS's sources, fusion, refiners and weighting from ``config.semi`` (``count``: videos).

    ``option``: the gate's choice (:mod:`train.methods.gate`), which then says which sources feed
    the pseudo-labels and the graph strength; ``None``: the configuration's own
    (:func:`~train.methods.gate.default_option`). ``graph``: a refiner whose graph to reuse.
    ``teacher``: the teacher's kind as the gate resolved it (``semi.teacher = "auto"``)."""
    semi = config.semi
    option = option or default_option(config)
    sources = build_sources(config, option.sources, teacher)
    memory = ConfidenceMemory(dict.fromkeys([*_MEMORY_SLOTS, *(source.name for source in sources)]), count,
                              semi.memory_decay)
    if semi.use_memory:
        sources = [Remembered(source, memory) for source in sources]

    refiner = GraphRefiner(semi.graph_neighbours, option.graph_strength, semi.graph_standardised, semi.graph_features)
    if graph is not None:
        refiner.laplacian = graph.laplacian
    refiners: list[Refiner] = [refiner] if option.graph_strength > 0 else []
    if semi.pseudo_spread != "as_is":
        refiners.append(SpreadRefiner(semi.pseudo_spread))

    def clipped(relative: np.ndarray) -> np.ndarray:  # per-video weights: confidence / mean, clipped
        return np.clip(relative, 0.0, semi.max_confidence_weight)

    by_confidence = fuse_balanced if semi.fusion == "balanced" else fuse_by_confidence
    fuse, weigh = (by_confidence, clipped) if semi.use_confidence else (fuse_by_mean, np.ones_like)
    return PseudoLabelling(sources, fuse, refiners, weigh, memory, refiner)
