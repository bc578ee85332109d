"""``trs``'s graph guard: does a kNN graph of the training videos help *at all* on these features?

The gate (:mod:`train.methods.gate`) compares the options with and without the graph through
fold students, whose out-of-fold estimates are too noisy at a few dozen labels to tell a graph
that hurts (the synthetic dives) from one that helps (Fis-V); research log, sessions 13-19.
The guard asks the same question of a model cheap enough to cross-fit many times, a ridge on the
videos' 3-segment means (``ridge``'s features), with and without a penalty for disagreeing with
its graph neighbours (Laplacian-regularised ridge, LapRLS, Belkin, Niyogi and Sindhwani 2006)::

    labelled + unlabelled training videos --> 3-segment means --> centred Gram K
                                         \\--> 5-NN cosine graph --> Laplacian L / k
    per repeat (10), per fold (5) of the labelled videos:
        (J K + alpha I + gamma' L K) a = J (y - mean y)      gamma' = gamma * n_train / n_nodes
        out-of-fold values = K[held] a + mean y               gamma = 0 and gamma = 0.3
    signal = mean over repeats of Spearman(with graph) - Spearman(without)

(J keeps the training fold's rows; the held-out labelled videos join the unlabelled ones as
graph nodes, as in the gate.) A signal below ``-semi.graph_guard_margin`` means that even a
mild graph penalty loses out of fold: the gate then chooses among its options without the graph.
The definition (γ 0.3, k 5, α 100, 5 folds, 3 segments, margin 0.1) was fixed in session 19 on
validation seeds 10-19 and met its pre-registered rule on fresh seeds 20-29 (it dropped the graph
in 18 of 20 dive splits and in none of 40 Fis-V splits; ``bench/graph_guard_probe.py``). Only
labelled and unlabelled training videos are read; cost about 1 s on Fis-V-sized data.
"""

from __future__ import annotations

import numpy as np

from aqa.metrics import spearman
from train.graph import knn_laplacian_from_similarity

GUARD_STREAM = 19  # the guard's seed stream: numpy generator seeded with (run seed, 19)
STRENGTH = 0.3  # gamma: a mild graph penalty (the run's own graph strength is far stronger)
NEIGHBOURS = 5
FOLDS = 5
ALPHA = 100.0  # ridge's default penalty
SEGMENTS = 3  # ridge's default time segments


def guard_features(data) -> np.ndarray:
    """Float64 ``[videos, SEGMENTS * dim]``: ridge's features (3-segment means of the canonical
    standardised tokens) of every video of ``data`` (a TrainingData)."""
    from train.data import segment_means

    return segment_means(data.tokens[:, 0], SEGMENTS).astype(np.float64)


def knn_laplacian(features: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """The symmetrised k-nearest-neighbour Laplacian (:mod:`train.graph`) by cosine similarity of
    the features as they are (not centred, unlike trs's own graph), divided by k."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return knn_laplacian_from_similarity(unit @ unit.T, neighbours) / neighbours


def graph_guard(data, seed: int, repeats: int, margin: float) -> dict:
    """The guard's record for a run on ``data`` (a TrainingData; only its labelled and unlabelled
    videos are read): the mean out-of-fold Spearman with and without the graph, the signal, and
    whether the graph is dropped (``signal < -margin``). Not computed (``signal`` None, graph
    kept) with fewer than ``2 * FOLDS`` labelled videos or no unlabelled ones."""
    labelled, unlabelled = np.asarray(data.labelled), np.asarray(data.unlabelled)
    count = len(labelled)
    record = {"strength": STRENGTH, "neighbours": NEIGHBOURS, "folds": FOLDS, "alpha": ALPHA,
              "segments": SEGMENTS, "repeats": int(repeats), "margin": float(margin), "n_labelled": int(count),
              "without_graph": None, "with_graph": None, "signal": None, "drops_graph": False}
    if count < 2 * FOLDS or len(unlabelled) == 0:
        reason = "no unlabelled videos" if len(unlabelled) == 0 else f"fewer than {2 * FOLDS} labelled videos"
        return {**record, "reason": reason}
    features = guard_features(data)
    nodes = np.concatenate([labelled, unlabelled])  # node i < count: labelled position i
    centred = features[nodes] - features[labelled].mean(axis=0)
    gram = _matmul(centred, centred.T)
    solver = _FoldSolver(gram, _matmul(knn_laplacian(features[nodes]), gram))
    targets = data.training_target(labelled)
    rng = np.random.default_rng([int(seed), GUARD_STREAM])
    estimates: dict[float, list[float]] = {0.0: [], STRENGTH: []}
    for _ in range(repeats):
        fold_of = rng.permutation(count) % FOLDS
        out_of_fold = {strength: np.zeros(count) for strength in estimates}
        for fold in range(FOLDS):
            train, held = np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)
            for strength in estimates:
                out_of_fold[strength][held] = solver.held_out_values(train, held, targets[train], strength)
        for strength in estimates:
            estimates[strength].append(spearman(targets, out_of_fold[strength]) or 0.0)
    without, with_graph = float(np.mean(estimates[0.0])), float(np.mean(estimates[STRENGTH]))
    signal = with_graph - without
    return {**record, "without_graph": without, "with_graph": with_graph, "signal": signal,
            "drops_graph": bool(signal < -margin)}


def _matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right`` in float64 on the run's torch threads."""
    import torch

    return (torch.from_numpy(np.ascontiguousarray(left)) @ torch.from_numpy(np.ascontiguousarray(right))).numpy()


class _FoldSolver:
    """Out-of-fold values of the Laplacian-regularised ridge (the module docstring's system) for
    many folds over the same nodes, fast.

    With the graph, the system is B + J K with B = alpha I + gamma' L K the same for every fold of
    one training size (gamma' scales with it) and J K of rank m (the training fold's rows), so by
    Woodbury the dual is a = W S^-1 (y - mean y), W = B^-1[:, train], S = I + K[train] W: one
    n x n inverse per training size instead of an n x n solve per fold (0.1 s instead of 3 s at
    MTL-AQA size). Without the graph the unlabelled rows read alpha a_u = 0, so only the training
    block is solved (plain kernel ridge). torch's solvers: numpy's BLAS may start more threads than
    the run has."""

    def __init__(self, gram: np.ndarray, laplacian_gram: np.ndarray):
        import torch

        self.gram = torch.from_numpy(gram)
        self.laplacian_gram = torch.from_numpy(laplacian_gram)
        self._inverses: dict[int, object] = {}

    def _graph_inverse(self, size: int):
        import torch

        if size not in self._inverses:
            count = len(self.gram)
            system = STRENGTH * (size / count) * self.laplacian_gram
            system.diagonal().add_(ALPHA)
            self._inverses[size] = torch.linalg.inv(system)
        return self._inverses[size]

    def held_out_values(self, train: np.ndarray, held: np.ndarray, targets: np.ndarray, strength: float) -> np.ndarray:
        import torch

        mean = targets.mean()
        centred = torch.from_numpy(targets - mean)
        train_index, held_index = torch.from_numpy(train), torch.from_numpy(held)
        if not strength:
            system = self.gram[train_index][:, train_index] + ALPHA * torch.eye(len(train), dtype=torch.float64)
            dual = torch.linalg.solve(system, centred)
            return (self.gram[held_index][:, train_index] @ dual).numpy() + mean
        if strength != STRENGTH:
            raise ValueError(f"the fast path is built for strength {STRENGTH}, got {strength}")
        columns = self._graph_inverse(len(train))[:, train_index]
        inner = self.gram[train_index] @ columns
        inner.diagonal().add_(1.0)
        dual = columns @ torch.linalg.solve(inner, centred)
        return (self.gram[held_index] @ dual).numpy() + mean


def describe_guard(record: dict) -> str:
    """The guard's finding in a few words for the run's log."""
    if record["signal"] is None:
        return f"graph guard not computed ({record['reason']})"
    verdict = "dropped the graph" if record["drops_graph"] else "kept the graph"
    return (f"graph guard {verdict}: out of fold {record['with_graph']:.3f} with a mild graph vs "
            f"{record['without_graph']:.3f} without (signal {record['signal']:+.3f}, margin {record['margin']:g})")
