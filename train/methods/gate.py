"""``trs``'s label-only gate: which pseudo-labels to trust, decided by cross-fitting on the labelled videos.

Right after the burn-in (the student, and the reference network when the configuration uses it)
and before the semi-supervised phase, :func:`run_gate`:

1. splits the *labelled* videos into ``semi.gate_folds`` folds (its own seed stream);
2. per fold trains a fold student with the burn-in recipe on the other folds (``semi.gate_epochs``
   labelled epochs, at most ``optim.epochs``; 0 = all of them) and, when an option uses the
   reference network, a fold reference the same way (``semi.gate_reference_epochs``, at most
   ``reference.epochs``);
3. labels the held-out fold and every unlabelled video with the run's own sources (the fold
   student as the teacher at the phase's start, the fold reference against exemplars of the
   training folds), fuses them as the run does, and refines them on the run's graph with only
   the training folds anchored;
4. scores each :class:`GateOption` by the Spearman of its pooled out-of-fold values against the
   held-out labels.

The *default* option (the configuration as given) is kept unless another beats it by more than
``1 / sqrt(n_labelled)`` (a plain argmax chases fold noise: FINDINGS, cross-fitting). Validation and
test videos are never looked at; the gate draws from its own generators and restores the global
torch RNG, so a gate that keeps the default leaves the run exactly as with ``semi.gate=false``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from aqa.metrics import spearman
from train.graph import LABELLED_ANCHOR, refine_on_graph
from train.models import MixerHead, ReferenceNetwork, regression_loss
from train.views import ViewMaker, epoch_batches

GATE_STREAM = 4  # the gate's seed stream (train.methods.supervised.stream_seed)


@dataclass(frozen=True)
class GateOption:
    """Which sources feed the pseudo-labels and how strongly the graph refines them."""

    sources: tuple[str, ...]  # ("teacher",) or ("teacher", "reference")
    graph_strength: float  # 0: no graph refinement

    @property
    def name(self) -> str:
        return f"{'+'.join(self.sources)}, graph {self.graph_strength:g}"

    def to_state(self) -> dict:
        return {"sources": list(self.sources), "graph_strength": float(self.graph_strength)}


def default_option(config) -> GateOption:
    """What the configuration asks for (the option the gate keeps unless another clearly wins)."""
    semi = config.semi
    sources = ("teacher", "reference") if semi.use_reference else ("teacher",)
    strength = float(semi.graph_strength) if semi.use_graph else 0.0
    return GateOption(sources, strength)


def gate_options(config) -> list[GateOption]:
    """{configured sources, teacher only} x {configured graph strength, no graph}, default first."""
    default = default_option(config)
    options = [default]
    for sources in dict.fromkeys([default.sources, ("teacher",)]):
        for strength in dict.fromkeys([default.graph_strength, 0.0]):
            option = GateOption(sources, strength)
            if option not in options:
                options.append(option)
    return options


def fold_assignment(count: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each labelled position: a seeded permutation dealt round-robin (sizes differ by at most 1)."""
    order = np.random.default_rng(seed).permutation(count)
    fold_of = np.empty(count, dtype=np.int64)
    fold_of[order] = np.arange(count) % folds
    return fold_of


def margin_choice(scores: dict[str, float | None], default: str, margin: float) -> str:
    """``default`` unless the best-scoring option beats it by more than ``margin`` (None scores lose)."""
    value = {name: (-math.inf if score is None else score) for name, score in scores.items()}
    best = max(value, key=lambda name: (value[name], name == default))  # ties keep the default
    return best if value[best] - value[default] > margin else default


def _train_fold_student(method, positions: torch.Tensor, epochs: int, seed: int) -> MixerHead:
    """The burn-in recipe (:meth:`SupervisedMethod._supervised_epoch`) on the labelled ``positions`` only."""
    config = method.config
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    views = ViewMaker(method.tokens, config.views, generator)
    student = MixerHead(method.data.num_tokens, method.data.feature_dim, config.head)
    optimiser = torch.optim.AdamW(student.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    rows, targets = method.labelled[positions], method.labelled_targets[positions]
    student.train()
    for _ in range(epochs):
        for batch in epoch_batches(torch.arange(len(positions)), config.optim.batch_size,
                                   config.optim.min_steps_per_epoch, generator):
            value, log_variance = student(views.weak(rows[batch]))
            squared, nll = regression_loss(value, log_variance, targets[batch])
            method._step(squared + nll, student, optimiser)
    student.eval()
    return student


def _train_fold_reference(method, positions: torch.Tensor, epochs: int, seed: int) -> ReferenceNetwork:
    """The reference network's burn-in (:meth:`TRSMethod._reference_epoch`) on the labelled ``positions`` only."""
    config = method.config
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = ReferenceNetwork(method.data.feature_dim, config.reference)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    rows, targets = method.labelled[positions], method.labelled_targets[positions]
    for _ in range(epochs):
        method._reference_steps(network, optimiser, rows, targets, generator)
    network.eval()
    return network


def run_gate(method) -> dict:
    """Cross-fit the options on the labelled videos of ``method`` (a TRSMethod after its burn-in).

    Returns the outcome (plain data, part of the run's state): per option its pooled out-of-fold
    Spearman and per-fold Spearman, the margin, the default and the chosen option. (No wall time:
    a resumed run's diagnostics equal an uninterrupted run's; the gate unit's history record has it.)"""
    from train.methods.pseudo_labels import Context, build_sources
    from train.methods.supervised import stream_seed

    config, semi = method.config, method.config.semi
    count = len(method.labelled)
    options = gate_options(config)
    default = options[0]
    margin = 1.0 / math.sqrt(count)
    outcome = {"folds": 0, "n_labelled": count, "margin": margin, "default": default.name,
               "options": {option.name: option.to_state() for option in options}}
    folds = min(semi.gate_folds, count // 2)  # at least two labelled videos per fold
    if folds < 2 or len(options) == 1:
        return {**outcome, "chosen": default.name, "estimates": {}, "fold_estimates": {},
                "reason": "fewer than 4 labelled videos" if folds < 2 else "only one option"}
    seed = stream_seed(config.seed, GATE_STREAM)
    fold_of = fold_assignment(count, folds, seed)
    uses_reference = any("reference" in option.sources for option in options)
    # At most the burn-in's epochs (fewer by default, for cost: train.config.SemiConfig).
    student_epochs = min(semi.gate_epochs or config.optim.epochs, config.optim.epochs)
    reference_epochs = min(semi.gate_reference_epochs or config.reference.epochs, config.reference.epochs)
    laplacian = method.labelling.graph_laplacian(method.data) if any(o.graph_strength > 0 for o in options) else None
    labelled_nodes = count  # graph nodes: the labelled videos (data.labelled order), then the unlabelled
    truth = method.labelled_targets.double().numpy()
    out_of_fold = {option.name: np.zeros(count) for option in options}
    per_fold: dict[str, list] = {option.name: [] for option in options}
    with torch.random.fork_rng(devices=[]):
        for fold in range(folds):
            fold_seed = stream_seed(seed, fold + 1)
            train = np.flatnonzero(fold_of != fold)
            held = np.flatnonzero(fold_of == fold)
            train_positions = torch.from_numpy(train).long()
            student = _train_fold_student(method, train_positions, student_epochs, fold_seed)
            reference = (_train_fold_reference(method, train_positions, reference_epochs, stream_seed(fold_seed, 2))
                         if uses_reference else None)
            generator = torch.Generator().manual_seed(stream_seed(fold_seed, 3))
            queries = torch.cat([method.labelled[torch.from_numpy(held)], method.unlabelled])
            context = Context(data=method.data, unlabelled=queries, labelled=method.labelled[train_positions],
                              labelled_targets=method.labelled_targets[train_positions],
                              views=ViewMaker(method.tokens, config.views, generator), generator=generator,
                              teacher=student, reference=reference)
            sources = build_sources(config, ("teacher", "reference") if uses_reference else ("teacher",))
            estimates = {source.name: source.estimate(context) for source in sources}
            query_nodes = np.concatenate([held, labelled_nodes + np.arange(len(method.unlabelled))])
            for option in options:
                fused, confidence = method.labelling.fuse([estimates[name] for name in option.sources])
                values = fused.numpy()
                if option.graph_strength > 0:
                    node_values = np.zeros(len(laplacian))
                    node_confidence = np.full(len(laplacian), LABELLED_ANCHOR)
                    node_values[train] = truth[train]
                    node_values[query_nodes] = values
                    node_confidence[query_nodes] = (confidence / confidence.mean()).numpy()
                    refined = refine_on_graph(laplacian, node_values, node_confidence, option.graph_strength)
                    values = refined[query_nodes]
                out_of_fold[option.name][held] = values[:len(held)]
                per_fold[option.name].append(spearman(truth[held], values[:len(held)]))
    estimates = {name: spearman(truth, values) for name, values in out_of_fold.items()}
    chosen = margin_choice(estimates, default.name, margin)
    return {**outcome, "folds": folds, "student_epochs": student_epochs,
            "reference_epochs": reference_epochs if uses_reference else 0,
            "estimates": estimates, "fold_estimates": per_fold, "chosen": chosen}


def chosen_option(outcome: dict) -> GateOption:
    entry = outcome["options"][outcome["chosen"]]
    return GateOption(tuple(entry["sources"]), float(entry["graph_strength"]))
